"""experiments: the toy tasks where depth must do work, the corpus builder, the spec schema,
the three stages (smoke, ablation, full), the gate's decision rule, run directories and plots.

    tasks/        khop, s5, listops (depth) and summod, copy (controls): fresh data per step, fixed test sets
    spec.py       parse_spec / extract_toml_block: TOML spec -> effective settings, or errors with lines
    gate.py       decide_ablation / decide_full: the written statistical rule (scipy.stats)
    train.py      one toy-task run and its depth curve;  lm.py: one language-modelling run (full stage)
    stage.py      `python -m experiments.stage STAGE --spec --run-dir`: the queue's entry point
    stages_impl.py  what smoke, ablation, replication and full do;  runs.py, plots.py: run directories
    corpus.py     `refinery corpus build`;  calibrate.py: the gate's measured error rates

Imports `config` and `refiner_model`. Stages run as child processes of the queue.
"""
