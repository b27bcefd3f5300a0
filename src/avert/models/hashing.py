"""A1111-style model hashes: the first 10 hex digits of the SHA-256 of the weights, cached by path and mtime."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")


def model_hash(path: Path) -> str:
    """A1111's "Model hash" of a file; for a diffusers folder, the SHA-256 over its weight files' SHA-256s."""
    if path.is_file():
        return _file_sha256(path)[:10]
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES):
        digest.update(bytes.fromhex(_file_sha256(f)))
    return digest.hexdigest()[:10]


def file_sha256(path: Path) -> str:
    """The full SHA-256 of a file (cached)."""
    return _file_sha256(path)


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = _load_cache()
    if key not in cache:
        cache[key] = _sha256(path)
        _save_cache(cache)
    return cache[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "avert" / "hashes.json"


def _load_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict[str, str]) -> None:
    try:
        _cache_path().parent.mkdir(parents=True, exist_ok=True)
        tmp = _cache_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(_cache_path())
    except OSError:
        pass  # a read-only home only costs re-hashing next time
