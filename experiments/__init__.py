"""experiments: the toy tasks where depth must do work, the corpus builder, the spec schema,
the three stages (smoke, ablation, full), the gate's decision rule, run directories and plots.

    tasks/        khop, s5, listops (depth) and summod, copy (controls): fresh data per step, fixed test sets
    spec.py       parse_spec / extract_toml_block: TOML spec -> effective settings, or errors with lines
    gate.py       decide_ablation / decide_full: the written statistical rule (scipy.stats)
    train.py      one toy-task run and its depth curve;  lm.py: one language-modelling run (full stage)
    stage.py      `python -m experiments.stage STAGE --spec --run-dir`: the queue's entry point, and
                  stage_argv(), the one builder of that command line
    context.py    Ctx: what a running stage holds (settings, run, seeds, stop flag, progress)
    stages_impl.py  what smoke, ablation, replication and full do
    control_arm.py  the ablation's control arm from another commit (a code idea's `[code] control = "base"`)
    runs.py       a run directory: the writer (Run) and its readers (read_result, read_progress,
                  last_metrics, error_reason, plot_files);  plots.py: the figures
    noise.py      `python -m experiments.noise`: the control's seed-to-seed spread (the noise floor)
    corpus.py     `refinery corpus build`;  calibrate.py: the gate's measured error rates

Imports `config` and `refiner_model`. Stages run as child processes of the queue.
"""
