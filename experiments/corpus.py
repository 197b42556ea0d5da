"""The language-modelling corpus: text files tokenized with r50k_base into uint16 memmaps.

    refinery corpus build PATH...          # files or directories (recursed, sorted)
    refinery corpus build --stdlib         # the offline demo corpus: Python's own standard library sources

writes runs/corpus/train.bin, val.bin (uint16, documents separated by <|endoftext|>) and manifest.json
(every source with its sha256, byte and token counts and split). Deterministic: the same inputs give
byte-identical files. A document goes to val when the sha256 of its relative path falls in the val
fraction, so adding a file never moves another across the split.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path

import numpy as np

from config import ROOT, RefineryError

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".toml", ".cfg", ".ini", ".json", ".html", ".c", ".h")
CORPUS_DIR = ROOT / "runs" / "corpus"


class CorpusError(RefineryError):
    """The corpus is missing, empty or does not match its manifest.

    Fix: run `refinery corpus build PATH...` (or `refinery corpus build --stdlib` for the offline demo
    corpus) and check that the paths hold text files.
    """


def collect(paths: list[str | Path], max_bytes: int = 0) -> list[tuple[Path, str]]:
    """(file, name) pairs in a deterministic order; name is the path relative to the argument given."""
    out: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append((p, p.name))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES
                           and "__pycache__" not in f.parts and not any(x.startswith(".") for x in f.parts))
            out.extend((f, f"{p.name}/{f.relative_to(p).as_posix()}") for f in files)
        else:
            raise CorpusError(f"{p}: no such file or directory")
    if max_bytes:
        kept, total = [], 0
        for f, name in out:
            size = f.stat().st_size
            if total + size > max_bytes:
                continue
            kept.append((f, name))
            total += size
        out = kept
    return out


def stdlib_sources(max_bytes: int = 4_000_000) -> list[tuple[Path, str]]:
    """Python's standard-library .py files, top level first (every machine with Python has them)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(f for f in lib.glob("*.py"))
    files += sorted(f for d in ("json", "email", "http", "asyncio", "unittest", "importlib", "logging", "xml")
                    for f in (lib / d).rglob("*.py") if "test" not in f.name)
    kept, total = [], 0
    for f in files:
        size = f.stat().st_size
        if total + size > max_bytes:
            break
        kept.append((f, f"stdlib/{f.relative_to(lib).as_posix()}"))
        total += size
    return kept


def _to_val(name: str, val_frac: float) -> bool:
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < val_frac


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build(sources: list[tuple[Path, str]], out_dir: Path | str = CORPUS_DIR, val_frac: float = 0.05,
          progress=None) -> dict:
    """Tokenize `sources` into out_dir/{train,val}.bin + manifest.json; returns the manifest."""
    from refiner_model.tokenizer import EOT, get_encoding

    if not sources:
        raise CorpusError("no text files found in the paths given")
    enc = get_encoding()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    manifest_sources = []
    for i, (path, name) in enumerate(sources):
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        ids = enc.encode_ordinary(text) + [EOT]
        split = "val" if _to_val(name, val_frac) else "train"
        splits[split].append(np.asarray(ids, dtype=np.uint16))
        manifest_sources.append({"name": name, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
                                 "tokens": len(ids), "split": split})
        if progress:
            progress(i + 1, len(sources))
    if not splits["val"]:  # a tiny corpus: move the last document so val is never empty
        moved = splits["train"].pop()
        splits["val"].append(moved)
        manifest_sources[-1]["split"] = "val"
    if not splits["train"]:
        raise CorpusError("the corpus needs at least two documents (one for train, one for val)")
    counts = {}
    for split, arrs in splits.items():
        data = np.concatenate(arrs)
        _write_atomic(out_dir / f"{split}.bin", data.tobytes())
        counts[split] = int(len(data))
    manifest = {
        "tokenizer": "r50k_base", "dtype": "uint16", "eot": EOT, "val_frac": val_frac,
        "tokens": counts, "documents": len(manifest_sources),
        "bin_sha256": {s: hashlib.sha256((out_dir / f"{s}.bin").read_bytes()).hexdigest() for s in counts},
        "sources": manifest_sources,
    }
    _write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=1).encode() + b"\n")
    return manifest


def load(split: str, corpus_dir: Path | str = CORPUS_DIR, verify: bool = False) -> np.memmap:
    """A split as a read-only uint16 memmap; verify=True re-checks its sha256 against the manifest."""
    d = Path(corpus_dir)
    path, man = d / f"{split}.bin", d / "manifest.json"
    if not path.is_file() or not man.is_file():
        raise CorpusError(f"{path} or its manifest is missing: build it with `refinery corpus build PATH...` "
                          "(or `--stdlib` for the offline demo corpus)")
    if verify:
        want = json.loads(man.read_text())["bin_sha256"][split]
        if hashlib.sha256(path.read_bytes()).hexdigest() != want:
            raise CorpusError(f"{path} does not match manifest.json (changed or truncated)")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    if len(data) < 2:
        raise CorpusError(f"{path} is empty")
    return data


def windows(data: np.ndarray, batch: int, seq: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """batch random windows: inputs [B, T] and next-token targets [B, T] (int64)."""
    if len(data) <= seq + 1:
        raise CorpusError(f"corpus split has {len(data)} tokens, fewer than seq_len + 2 = {seq + 2}")
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    x = np.stack([data[s:s + seq] for s in starts]).astype(np.int64)
    y = np.stack([data[s + 1:s + 1 + seq] for s in starts]).astype(np.int64)
    return x, y
