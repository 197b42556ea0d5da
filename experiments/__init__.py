"""experiments: the toy tasks where depth must do work, the corpus builder, the spec schema,
the three stages (smoke, ablation, full), the gate's decision rule, run directories and plots.

Imports `config` and `refiner_model`. Stages run as child processes of the queue.
"""
