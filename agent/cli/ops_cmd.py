"""`refinery service install` and `refinery archive run|verify|bench`: operating the box.

    refinery service install [--user] [--print]   write the systemd unit for this checkout
    refinery archive run [--dry-run] [--keep P]    move finished runs older than archive_after_days
    refinery archive verify [--live]               re-hash every archived run against its manifest
    refinery archive bench [--mb N]                the copy-and-verify rate of this machine
"""

from __future__ import annotations

import time
from pathlib import Path

import config


def register(sub) -> None:
    svc = sub.add_parser("service", help="the systemd unit: `service install [--user] [--print]`")
    svc_sub = svc.add_subparsers(dest="service_cmd", metavar="ACTION", required=True)
    p = svc_sub.add_parser("install", help="write refinery.service with this checkout's paths; print the next "
                           "commands (daemon-reload, enable --now, the token credential)")
    p.add_argument("--user", action="store_true", help="a `systemctl --user` unit in ~/.config/systemd/user "
                   "(default: a system unit in /etc/systemd/system, needs root)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the unit, write nothing")
    p.add_argument("--run-as", default=None, help="system unit's User= (default: the sudo caller or the "
                   "checkout's owner)")
    p.add_argument("--unit-dir", default=None, help="write the unit here instead (packaging, tests)")
    p.set_defaults(func=_service_install)

    arc = sub.add_parser("archive", help="storage tiers: `archive run|verify|bench` (REFINERY_ARCHIVE_DIR)")
    arc_sub = arc.add_subparsers(dest="archive_cmd", metavar="ACTION", required=True)
    p = arc_sub.add_parser("run", help="archive finished runs older than archive_after_days "
                           "(REFINERY_ARCHIVE_AFTER_DAYS) to archive_dir (REFINERY_ARCHIVE_DIR), verified")
    p.add_argument("--dry-run", action="store_true", help="list what would move, move nothing")
    p.add_argument("--keep", action="append", default=[], metavar="PATH",
                   help="also keep this run dir or file live (champions in docs/registry/ are kept anyway)")
    p.add_argument("--runs-dir", default=None, help="the hot tier (default: the checkout's runs/)")
    p.set_defaults(func=_archive_run)
    p = arc_sub.add_parser("verify", help="re-check every archived run's sha256 manifest; exit 1 on a mismatch")
    p.add_argument("--live", action="store_true", help="also check champion files kept live in runs/")
    p.add_argument("--runs-dir", default=None, help="the hot tier (default: the checkout's runs/)")
    p.set_defaults(func=_archive_verify)
    p = arc_sub.add_parser("bench", help="measure the copy-and-verify rate (MB/s) on the archive's disk")
    p.add_argument("--mb", type=int, default=256, help="synthetic run size in MB")
    p.add_argument("--dir", default=None, help="work directory (default: archive_dir, else runs/)")
    p.set_defaults(func=_archive_bench)


def _service_install(args) -> int:
    from agent.ops.service import install

    install(args.user, print_only=args.print_only, unit_dir=args.unit_dir, run_as=args.run_as)
    return 0


def _settings_with_archive() -> config.Settings:
    from agent.ops.archive import ArchiveError

    settings = config.load()
    if not settings.daemon.archive_dir:
        raise ArchiveError("archive_dir is not set: export REFINERY_ARCHIVE_DIR=/path/to/cold/storage")
    return settings


def _runs_dir(args, settings: config.Settings) -> Path:
    return Path(args.runs_dir) if args.runs_dir else settings.runs_path


def _archive_run(args) -> int:
    from agent.ops.archive import archive_runs, champion_paths, due_runs

    settings = _settings_with_archive()
    runs_dir = _runs_dir(args, settings)
    keep = champion_paths(config.ROOT, settings, runs_dir) | {Path(k).absolute() for k in args.keep}
    if args.dry_run:
        due = due_runs(runs_dir, settings.daemon.archive_after_days)
        for d in due:
            print(f"would archive {d.name} -> {config.ROOT / settings.daemon.archive_dir / d.name}")
        print(f"{len(due)} run(s) due (older than {settings.daemon.archive_after_days:g} days)")
        return 0
    t0 = time.perf_counter()
    done = archive_runs(settings, runs_dir, keep)
    total = sum(r.bytes for r in done)
    for r in done:
        kept = "" if not r.kept else f", kept live: {', '.join(r.kept)}"
        print(f"archived {r.name}: {r.files} files, {r.bytes / 1e6:.1f} MB, {r.mb_per_s:.0f} MB/s{kept}")
    dt = time.perf_counter() - t0
    print(f"{len(done)} run(s), {total / 1e6:.1f} MB in {dt:.1f} s -> {settings.daemon.archive_dir}")
    return 0


def _archive_verify(args) -> int:
    from agent.ops.archive import verify

    settings = _settings_with_archive()
    checks = verify(config.ROOT / settings.daemon.archive_dir, _runs_dir(args, settings) if args.live else None)
    bad = [c for c in checks if not c.ok]
    for c in checks:
        print(f"{'ok ' if c.ok else 'BAD'} {c.name}: {c.files} files, {c.bytes / 1e6:.1f} MB"
              + ("" if c.ok else f" — {c.problems()}"))
    print(f"{len(checks)} checked, {len(bad)} bad")
    return 1 if bad else 0


def _archive_bench(args) -> int:
    import tempfile

    from agent.ops.archive import bench

    settings = config.load()
    base = Path(args.dir or settings.daemon.archive_dir or settings.runs_path)
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archive-bench-", dir=base) as tmp:
        figures = bench(tmp, args.mb)
    for k, v in figures.items():
        print(f"{k:>22}: {v}")
    return 0

