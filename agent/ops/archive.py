"""Storage tiers: finished runs move from runs/ (hot) to the archive (cold), checksummed.

A run directory (runs/<YYYYMMDD-HHMMSS>-i<issue>-<stage>-<job>/) is *finished* when its
result.json exists (the stage writes it last). Once that file is older than
archive_after_days, archive_run() moves the run to archive_dir (REFINERY_ARCHIVE_DIR):

  1. copy every file into archive_dir/.<run>.partial/, hashing the source as it is read;
     each copy is fsync'ed and dropped from the page cache, so step 3 reads the disk
  2. write manifest.json (sha256 and size per file) and SHA256SUMS (`sha256sum -c` format)
  3. re-read the copy and check it against the manifest; any difference: ArchiveError, the
     partial copy is deleted and the live run is untouched
  4. rename .<run>.partial -> <run> (atomic), fsync the archive directory
  5. write runs/<run>/ARCHIVED.json (where the copy is, its manifest hash), then delete the live
     files, except the paths in `keep` (champion weights stay on both tiers)

A kill at any point loses nothing: before 4 the live copy is whole and the next pass starts the
copy again; after 5 begins the marker says where the verified copy is and the next pass finishes
the pruning. `verify(archive_dir)` re-hashes every archived run (and, given runs_dir, the live
copies kept beside them). `require_free_disk(path, need)` is the disk check a stage runs before
it starts; it raises DiskSpaceError with the numbers.

    python -m agent.ops.archive bench [--mb 256]     # the copy-and-verify rate on this machine
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import config
from config import RefineryError

RUN_DIR_RE = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9_.-]+$")  # runs/<YYYYMMDD-HHMMSS>-i<issue>-<stage>-<job>
MANIFEST, SUMS, MARKER, RESULT = "manifest.json", "SHA256SUMS", "ARCHIVED.json", "result.json"
CHUNK = 4 << 20  # bytes per read: large enough that hashing, not syscalls, sets the pace
HEADROOM = 64 << 20  # bytes left free on the archive disk beyond the copy itself

Progress = Callable[[str, int, int], None]  # (relative path just copied, bytes done, bytes total)


class DiskSpaceError(RefineryError):
    """Not enough free disk for what is about to be written.

    Fix: free space on the named filesystem (archive finished runs with `refinery archive run`,
    delete old checkpoints or runs/cache), or lower the need (min_free_disk_gb, a smaller run).
    """


class ArchiveError(RefineryError):
    """A run could not be archived, or an archived copy does not match its manifest.

    Fix: the live copy in runs/ is kept whenever this is raised during archiving; check the
    archive disk (space, permissions, errors in dmesg) and run `refinery archive run` again.
    A copy that fails `refinery archive verify` should be re-archived from a live copy or a backup.
    """


# --------------------------------------------------------------------------- free disk
def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for an unprivileged writer) on the filesystem holding path or its nearest parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def require_free_disk(path: str | os.PathLike, need_bytes: int, what: str = "") -> int:
    """Return the free bytes at path; raise DiskSpaceError when fewer than need_bytes are free."""
    free = free_bytes(path)
    if free < need_bytes:
        purpose = f" for {what}" if what else ""
        raise DiskSpaceError(f"{path}: {free / 1e9:.2f} GB free, {need_bytes / 1e9:.2f} GB needed{purpose} "
                             f"(short by {(need_bytes - free) / 1e9:.2f} GB)")
    return free


def require_stage_disk(settings: config.Settings, runs_dir: str | os.PathLike, extra_bytes: int = 0) -> int:
    """The check a stage runs before it starts: min_free_disk_gb (plus extra_bytes) free on runs/."""
    need = int(settings.hardware.min_free_disk_gb * 1e9) + extra_bytes
    return require_free_disk(runs_dir, need, "a stage (min_free_disk_gb)")


# --------------------------------------------------------------------------- hashing and copying
def _drop_cache(fd: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in CHUNK pieces."""
    h, size, buf = hashlib.sha256(), 0, bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def _copy_hashing(src: Path, dst: Path, fsync: bool) -> tuple[str, int]:
    """Copy src to dst (which must not exist), hashing src's bytes on the way; keeps mtime and mode."""
    h, size, buf = hashlib.sha256(), 0, bytearray(CHUNK)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fi, open(dst, "xb", buffering=0) as fo:
        while n := fi.readinto(buf):
            h.update(view[:n])
            fo.write(view[:n])
            size += n
        if fsync:
            os.fsync(fo.fileno())
            _drop_cache(fo.fileno())  # so verification reads the disk, not the page cache
    shutil.copystat(src, dst)
    return h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str, fsync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _scan(root: Path) -> tuple[list[str], dict[str, str]]:
    """Relative paths of the regular files under root (sorted) and of its symlinks (-> target)."""
    files, links = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = d / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                links[rel] = os.readlink(p)
            elif p.is_file():
                files.append(rel)
            elif not p.is_dir():
                raise ArchiveError(f"{p}: not a regular file, directory or symlink; cannot archive it")
        dirnames[:] = [n for n in dirnames if not (d / n).is_symlink()]
    return sorted(files), links


# --------------------------------------------------------------------------- checking
@dataclass
class RunCheck:
    """The result of checking one archived run against its manifest."""
    name: str
    path: str
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra or self.error)

    def problems(self) -> str:
        parts = [self.error] if self.error else []
        for label, items in (("missing", self.missing), ("changed", self.changed), ("extra", self.extra)):
            if items:
                parts.append(f"{label}: {', '.join(items[:5])}" + (f" (+{len(items) - 5} more)" if len(items) > 5
                                                                    else ""))
        return "; ".join(parts)


def load_manifest(run_dir: Path) -> dict:
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
        assert isinstance(manifest.get("files"), dict)
        return manifest
    except (OSError, ValueError, AssertionError) as e:
        raise ArchiveError(f"{run_dir / MANIFEST}: unreadable manifest ({e})") from e


def check_run(archived: Path, only: Iterable[str] | None = None, base: Path | None = None) -> RunCheck:
    """Re-hash the files of an archived run (or, with base, of the live copy at base) against its manifest.
    `only` limits the check to those relative paths (the kept champion files of a live copy)."""
    archived = Path(archived)
    target = Path(base) if base is not None else archived
    rc = RunCheck(archived.name.lstrip(".").removesuffix(".partial"), str(target))
    try:
        manifest = load_manifest(archived)
    except ArchiveError as e:
        rc.error = str(e)
        return rc
    entries: dict[str, list] = manifest["files"]
    wanted = set(entries) if only is None else set(only) & set(entries)
    for rel in sorted(wanted):
        sha, size = entries[rel]
        p = target / rel
        if not p.is_file():
            rc.missing.append(rel)
            continue
        got_sha, got_size = hash_file(p)
        rc.files += 1
        rc.bytes += got_size
        if (got_sha, got_size) != (sha, size):
            rc.changed.append(rel)
    if only is None:
        for rel, dest in manifest.get("links", {}).items():
            p = target / rel
            if not p.is_symlink():
                rc.missing.append(rel)
            elif os.readlink(p) != dest:
                rc.changed.append(rel)
        files, links = _scan(target)
        known = set(entries) | set(manifest.get("links", {})) | {MANIFEST, SUMS}
        rc.extra = sorted((set(files) | set(links)) - known)
    return rc


def verify(archive_dir: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> list[RunCheck]:
    """Check every archived run in archive_dir against its manifest; with runs_dir, also the files
    kept live beside an archived run (champion weights) against the same manifest."""
    archive_dir = Path(archive_dir)
    if not archive_dir.is_dir():
        raise ArchiveError(f"{archive_dir}: no such archive directory (set REFINERY_ARCHIVE_DIR)")
    out = []
    for d in sorted(archive_dir.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).exists():
            out.append(check_run(d))
    if runs_dir is not None:
        for live in sorted(Path(runs_dir).iterdir()):
            marker = _read_marker(live) if live.is_dir() else None
            if marker and marker.get("kept"):
                kept = [f for f in _scan(live)[0] if f != MARKER]
                rc = check_run(archive_dir / live.name, only=kept, base=live)
                rc.name = f"{live.name} (live copy)"
                out.append(rc)
    return out


# --------------------------------------------------------------------------- archiving
@dataclass
class ArchivedRun:
    name: str
    dest: str
    files: int
    bytes: int
    seconds: float
    kept: list[str]
    copied: bool  # False when a verified copy was already there (a resumed pass)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def _read_marker(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _kept_rel(run_dir: Path, keep: Iterable[str | os.PathLike]) -> list[str] | None:
    """The parts of run_dir to keep live: None = all of it, [] = none, else relative paths (files or dirs)."""
    out = []
    for k in keep:
        k = Path(k).absolute()
        if k == run_dir:
            return None
        if run_dir in k.parents:
            out.append(k.relative_to(run_dir).as_posix())
    return sorted(out)


def _is_kept(rel: str, kept: list[str] | None) -> bool:
    return kept is None or any(rel == k or rel.startswith(k + "/") for k in kept)


def _prune(run_dir: Path, kept: list[str] | None) -> None:
    """Delete the live files not kept (the marker stays), then the directories left empty."""
    files, links = _scan(run_dir)
    for rel in files + list(links):
        if rel != MARKER and not _is_kept(rel, kept):
            (run_dir / rel).unlink()
    for dirpath, _dirs, _files in sorted(os.walk(run_dir, topdown=False), key=lambda t: -len(t[0])):
        if Path(dirpath) != run_dir and not os.listdir(dirpath):
            os.rmdir(dirpath)


def archive_run(run_dir: str | os.PathLike, archive_dir: str | os.PathLike, keep: Iterable = (),
                fsync: bool = True, progress: Progress | None = None) -> ArchivedRun:
    """Copy, verify, then prune one run (the steps in the module docstring). Idempotent and resumable."""
    t0 = time.perf_counter()
    run_dir, archive_dir = Path(run_dir).absolute(), Path(archive_dir).absolute()
    name = run_dir.name
    dest = archive_dir / name
    kept = _kept_rel(run_dir, keep)
    marker = _read_marker(run_dir)
    copied = False
    if marker is None:
        files, links = _scan(run_dir)
        if MARKER in files:
            raise ArchiveError(f"{run_dir / MARKER}: unreadable marker; check it against {dest} by hand")
        total = sum((run_dir / f).stat().st_size for f in files)
        if dest.exists():  # a pass was killed between the rename and the marker: the copy must match
            live = {f: list(hash_file(run_dir / f)) for f in files}
            rc = check_run(dest)
            if not rc.ok or load_manifest(dest)["files"] != live:
                raise ArchiveError(f"{dest} exists and differs from the live run ({rc.problems() or 'other files'}); "
                                   "move one aside and archive again")
        else:
            archive_dir.mkdir(parents=True, exist_ok=True)
            require_free_disk(archive_dir, total + HEADROOM, f"archiving {name}")
            _copy_run(run_dir, archive_dir, files, links, total, fsync, progress)
            copied = True
        n_files, n_bytes = len(files), total
        marker = {"archived_to": str(dest), "archived_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "manifest_sha256": hash_file(dest / MANIFEST)[0], "files": n_files, "bytes": n_bytes,
                  "kept": kept if kept is not None else ["."], "state": "pruning"}
        _write_atomic(run_dir / MARKER, json.dumps(marker, indent=1) + "\n", fsync)
    else:  # resume an interrupted prune: the copy must still verify before anything more is deleted
        rc = check_run(dest)
        if not rc.ok:
            raise ArchiveError(f"{dest}: archived copy fails verification ({rc.problems()}); not pruning {run_dir}")
        n_files, n_bytes = marker.get("files", 0), marker.get("bytes", 0)
    if marker.get("state") != "done":
        _prune(run_dir, kept)
        marker["state"] = "done"
        _write_atomic(run_dir / MARKER, json.dumps(marker, indent=1) + "\n", fsync)
    return ArchivedRun(name, str(dest), n_files, n_bytes, time.perf_counter() - t0,
                       ["."] if kept is None else kept, copied)


def _copy_run(run_dir: Path, archive_dir: Path, files: list[str], links: dict[str, str], total: int,
              fsync: bool, progress: Progress | None) -> None:
    name = run_dir.name
    staging = archive_dir / f".{name}.partial"
    if staging.exists():  # left by a killed pass (archive passes hold the archive lock)
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        entries, done = {}, 0
        for rel in files:
            src, dst = run_dir / rel, staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            before = src.stat()
            sha, size = _copy_hashing(src, dst, fsync)
            after = src.stat()
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or size != after.st_size:
                raise ArchiveError(f"{src} changed while it was copied; is the run really finished?")
            entries[rel] = [sha, size]
            done += size
            if progress:
                progress(rel, done, total)
        for rel, target in links.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, staging / rel)
        manifest = {"version": 1, "run": name, "source": str(run_dir), "bytes": total,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": entries, "links": links}
        _write_atomic(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n", fsync)
        _write_atomic(staging / SUMS, "".join(f"{sha}  {rel}\n" for rel, (sha, _) in entries.items()), fsync)
        rc = check_run(staging)
        if not rc.ok:
            raise ArchiveError(f"copy of {name} failed verification: {rc.problems()}")
        if fsync:
            for dirpath, _d, _f in os.walk(staging):
                _fsync_dir(Path(dirpath))
        os.rename(staging, archive_dir / name)
        if fsync:
            _fsync_dir(archive_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def due_runs(runs_dir: str | os.PathLike, after_days: float, now: float | None = None) -> list[Path]:
    """Finished run directories whose result.json is older than after_days, plus any whose pruning
    was interrupted (marker present, state not done)."""
    now = time.time() if now is None else now
    cutoff = now - after_days * 86400.0
    out = []
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return out
    for d in sorted(runs_dir.iterdir()):
        if not d.is_dir() or d.is_symlink() or not RUN_DIR_RE.match(d.name):
            continue
        marker = _read_marker(d)
        if marker is not None:
            if marker.get("state") != "done":
                out.append(d)
        elif (d / RESULT).is_file() and (d / RESULT).stat().st_mtime <= cutoff:
            out.append(d)
    return out


_REGISTRY_RUN = r"(?:(?:^|[\s(`'\"/])runs|{runs})/(\d{{8}}-\d{{6}}-[A-Za-z0-9_.-]+)((?:/[A-Za-z0-9_.-]+)*)"


def champion_paths(root: str | os.PathLike = config.ROOT, settings: config.Settings | None = None,
                   runs_dir: str | os.PathLike | None = None) -> set[Path]:
    """Paths under the runs directory named in the model cards (docs_dir/registry/*.md): kept live when archived.
    settings: where the cards (docs_dir) and the runs (runs_dir, or runs_dir given) are; none: root/docs, root/runs."""
    root = Path(root)
    docs = Path(settings.daemon.docs_dir if settings else "docs")
    runs = Path(runs_dir or (settings.queue.runs_dir if settings else "runs"))
    docs, runs = (p if p.is_absolute() else root / p for p in (docs, runs))
    pattern = re.compile(_REGISTRY_RUN.format(runs=re.escape(str(runs.absolute()))))
    out = set()
    for card in sorted((docs / "registry").glob("*.md")):
        for m in pattern.finditer(card.read_text(errors="replace")):
            out.add(runs / m.group(1) / m.group(2).strip("/"))
    return out


def archive_runs(settings: config.Settings, runs_dir: str | os.PathLike | None = None, keep: Iterable = (),
                 now: float | None = None, progress: Progress | None = None) -> list[ArchivedRun]:
    """One archiving pass (the daemon calls it now and then): every due run, under the archive lock.
    keep: champion paths (whole run dirs or files inside them) to keep live as well."""
    if not settings.daemon.archive_dir:
        return []
    from filelock import FileLock, Timeout

    runs_dir = Path(runs_dir or settings.runs_path)
    archive_dir = config.ROOT / settings.daemon.archive_dir  # an absolute archive_dir stays as it is
    archive_dir.mkdir(parents=True, exist_ok=True)
    keep = [Path(k).absolute() for k in keep]
    try:
        with FileLock(str(archive_dir / ".archive.lock"), timeout=0):
            return [archive_run(d, archive_dir, keep, progress=progress)
                    for d in due_runs(runs_dir, settings.daemon.archive_after_days, now)]
    except Timeout as e:
        raise ArchiveError(f"{archive_dir}: another archive pass holds {e.lock_file}; try again when it ends") from e


# --------------------------------------------------------------------------- benchmark
def bench(work_dir: str | os.PathLike, total_mb: int = 256, n_files: int = 8, fsync: bool = True) -> dict:
    """Archive a synthetic run of total_mb (random bytes, not in the page cache) and time it."""
    work = Path(work_dir)
    run = work / "runs" / "20000101-000000-i0-bench-0"
    (run / "ckpt").mkdir(parents=True)
    per = max(1, total_mb * (1 << 20) // n_files)
    block = os.urandom(min(per, CHUNK))
    for i in range(n_files):
        p = run / ("ckpt" if i % 2 else ".") / f"part{i}.bin"
        with open(p, "wb") as f:
            left = per
            while left > 0:
                f.write(block[:left])
                left -= len(block)
            f.flush()
            os.fsync(f.fileno())
            _drop_cache(f.fileno())
    (run / RESULT).write_text('{"verdict": "PASS"}\n')
    res = archive_run(run, work / "archive", fsync=fsync)
    t0 = time.perf_counter()
    checks = verify(work / "archive")
    t_verify = time.perf_counter() - t0
    assert all(c.ok for c in checks), [c.problems() for c in checks]
    return {"bytes": res.bytes, "files": res.files, "fsync": fsync, "archive_s": round(res.seconds, 3),
            "copy_and_verify_mb_s": round(res.mb_per_s, 1),
            "reverify_mb_s": round(res.bytes / 1e6 / t_verify, 1) if t_verify > 0 else None,
            "filesystem": str(work)}
