"""`refinery smoke|ablate|train SPEC.toml` (one stage in the foreground, with a progress bar) and
`refinery corpus build PATH...` (tokenize text into runs/corpus/{train,val}.bin).

The foreground stages run the same code as the queue's child process (experiments.stage.execute) into
a fresh run directory under runs/, so a foreground result reads exactly like a queued one.
"""

from __future__ import annotations

from pathlib import Path

import config

STAGE_OF = {"smoke": "smoke", "ablate": "ablation", "train": "full"}


def register(sub) -> None:
    for cmd, help_ in (("smoke", "smoke-test a spec: overfit, no NaN, healthy gate, eval sweep (≤ 60 s on CPU)"),
                       ("ablate", "ablation: the spec's arch vs the reasoner on the toy tasks, decided by the gate"),
                       ("train", "full stage: language modelling on runs/corpus, candidate vs control")):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("spec", nargs="?", help="SPEC.toml (default: the configured defaults)")
        p.add_argument("--run-dir", help="where to write the run (default: REFINERY_RUNS_DIR/<time>-i0-<stage>-fg)")
        p.add_argument("--seed-base", type=int, help="first seed (default: train.seed)")
        if cmd == "ablate":
            p.add_argument("--replicate", action="store_true", help="the replication: the same rule on fresh seeds")
        p.set_defaults(func=_run_stage, stage_cmd=cmd)
    c = sub.add_parser("corpus", help="the language-modelling corpus")
    csub = c.add_subparsers(dest="corpus_cmd", metavar="ACTION", required=True)
    b = csub.add_parser("build", help="tokenize PATH... (files or directories) into runs/corpus/{train,val}.bin")
    b.add_argument("paths", nargs="*", help="text files or directories (recursed, sorted)")
    b.add_argument("--stdlib", action="store_true", help="add Python's standard-library sources (offline demo)")
    b.add_argument("--out", default=None, help="output directory (default: REFINERY_CORPUS_DIR, runs/corpus)")
    b.add_argument("--val-frac", type=_fraction, default=config.CORPUS_VAL_FRAC,
                   help="fraction of documents held out for validation (one document: of its tokens)")
    b.add_argument("--max-bytes", type=_nonneg_int, default=config.CORPUS_MAX_BYTES,
                   help="cap on the text read (0 = no cap)")
    b.set_defaults(func=_corpus_build)


def _run_stage(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from experiments.runs import run_dir_name
    from experiments.spec import spec_from_file
    from experiments.stage import execute

    console = Console(stderr=True)
    res = spec_from_file(args.spec, base=config.load())
    stage = STAGE_OF[args.stage_cmd]
    if getattr(args, "replicate", False):
        stage = "replication"
    run_dir = Path(args.run_dir) if args.run_dir else res.settings.runs_path / run_dir_name(stage)  # REFINERY_RUNS_DIR
    console.print(f"[bold]{stage}[/] of {args.spec or 'the defaults'} → {run_dir}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        tid = bar.add_task(stage, total=1)

        def progress(done, total, what):
            bar.update(tid, completed=done, total=total, description=f"{stage} {what}"[:60])

        code, result = execute(stage, res.settings, res.spec, run_dir, prereg=res.prereg, seed_base=args.seed_base,
                               progress=progress, install_signals=True)
    if code == 75:
        console.print(f"stopped; resume with the same command and --run-dir {run_dir}")
        return 75
    color = {"PASS": "green", "FAIL": "red", "EXTEND": "yellow"}.get(result["verdict"], "magenta")
    console.print(f"[bold {color}]{result['verdict']}[/] {result.get('reason', '')}")
    console.print(f"result: {run_dir / 'result.json'}  ({result.get('wall_s', 0):.1f} s)")
    return 0 if result["verdict"] == "PASS" else 1


def _corpus_build(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from experiments import corpus

    sources, left = corpus.cap(corpus.collect(args.paths), args.max_bytes) if args.paths else ([], [])
    if args.stdlib:
        sources += corpus.stdlib_sources(args.max_bytes or config.CORPUS_MAX_BYTES)
    if not sources:
        raise corpus.CorpusError(f"every file is over the --max-bytes cap of {args.max_bytes:,} bytes: raise it, or "
                                 "--max-bytes 0 for no cap" if left else "nothing to build: give PATH... or --stdlib")
    out = Path(args.out or config.load().stages.corpus_dir)  # REFINERY_CORPUS_DIR: where `train` reads it
    out = out if out.is_absolute() else config.ROOT / out
    with Progress(console=Console(stderr=True)) as bar:
        tid = bar.add_task("tokenizing", total=len(sources))
        man = corpus.build(sources, out, val_frac=args.val_frac,
                           progress=lambda i, n: bar.update(tid, completed=i, total=n))
    print(f"corpus: {man['documents']} documents, {man['tokens']['train']:,} train + {man['tokens']['val']:,} val "
          f"tokens → {out}")
    if man["empty_files_left_out"]:
        print(f"corpus: {len(man['empty_files_left_out'])} empty file(s) left out")
    if left:
        print(f"corpus: {len(left)} file(s) left out over the --max-bytes cap of {args.max_bytes:,} bytes "
              f"(first: {left[0][1]}); --max-bytes 0 reads them all")
    return 0


def _fraction(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1 (e.g. {config.CORPUS_VAL_FRAC})")
    return v


def _nonneg_int(text: str) -> int:
    import argparse

    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count of 0 or more (0 = no cap)")
    return v
