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

from config import CORPUS_MAX_BYTES, CORPUS_VAL_FRAC, ROOT, RefineryError

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".toml", ".cfg", ".ini", ".json", ".html", ".c", ".h")
CORPUS_DIR = ROOT / "runs" / "corpus"


class CorpusError(RefineryError):
    """The corpus is missing, empty or does not match its manifest.

    Fix: run `refinery corpus build PATH...` (or `refinery corpus build --stdlib` for the offline demo
    corpus) and check that the paths hold text files.
    """


def collect(paths: list[str | Path]) -> list[tuple[Path, str]]:
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
    return out


def cap(sources: list[tuple[Path, str]], max_bytes: int) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """(kept, left out): the sources in order while their bytes fit in max_bytes (0: no cap)."""
    if not max_bytes:
        return sources, []
    kept, left, total = [], [], 0
    for f, name in sources:
        size = f.stat().st_size
        if total + size > max_bytes:
            left.append((f, name))
            continue
        kept.append((f, name))
        total += size
    return kept, left


def stdlib_sources(max_bytes: int = CORPUS_MAX_BYTES) -> list[tuple[Path, str]]:
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


def build(sources: list[tuple[Path, str]], out_dir: Path | str = CORPUS_DIR, val_frac: float = CORPUS_VAL_FRAC,
          progress=None) -> dict:
    """Tokenize `sources` into out_dir/{train,val}.bin + manifest.json; returns the manifest. Empty files are
    left out; a single document gives its last val_frac of tokens to val."""
    from refiner_model.tokenizer import EOT, get_encoding

    if not sources:
        raise CorpusError("no text files found in the paths given")
    if not 0.0 < val_frac < 1.0:
        raise CorpusError(f"val_frac = {val_frac} must lie between 0 and 1 (e.g. {CORPUS_VAL_FRAC})")
    enc = get_encoding()
    out_dir = Path(out_dir)
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    manifest_sources, empty = [], []
    for i, (path, name) in enumerate(sources):
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            empty.append(name)
            continue
        ids = enc.encode_ordinary(text) + [EOT]
        split = "val" if _to_val(name, val_frac) else "train"
        splits[split].append(np.asarray(ids, dtype=np.uint16))
        manifest_sources.append({"name": name, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
                                 "tokens": len(ids), "split": split})
        if progress:
            progress(i + 1, len(sources))
    if not manifest_sources:
        raise CorpusError(f"no text to build from: {len(empty)} empty file(s) ({', '.join(empty[:3])})")
    if len(manifest_sources) == 1:  # one document: its tail is the validation text
        (ids,) = splits["train"] + splits["val"]
        cut = int(len(ids) * (1.0 - val_frac))
        if cut < 1 or cut >= len(ids):
            raise CorpusError(f"{manifest_sources[0]['name']} holds {len(ids)} tokens, too few to hold out "
                              f"{val_frac:g} of them for val: give more text")
        splits = {"train": [ids[:cut]], "val": [ids[cut:]]}
        manifest_sources[0]["split"] = f"train, last {len(ids) - cut} tokens val"
    elif not splits["val"]:  # a tiny corpus: move the last document so val is never empty
        splits["val"].append(splits["train"].pop())
        manifest_sources[-1]["split"] = "val"
    elif not splits["train"]:
        splits["train"].append(splits["val"].pop(0))
        manifest_sources[0]["split"] = "train"
    out_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused build leaves no empty directory
    counts = {}
    for split, arrs in splits.items():
        data = np.concatenate(arrs)
        _write_atomic(out_dir / f"{split}.bin", data.tobytes())
        counts[split] = int(len(data))
    manifest = {
        "tokenizer": "r50k_base", "dtype": "uint16", "eot": EOT, "val_frac": val_frac,
        "tokens": counts, "documents": len(manifest_sources), "empty_files_left_out": empty,
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
