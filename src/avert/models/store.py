"""A small cache of loaded models, so repeated generations (compare, server) load each model once."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from avert.models.components import Components
from avert.models.loader import load_model

_CACHE: "OrderedDict[tuple, Components]" = OrderedDict()
MAX_MODELS = 2


def get_model(
    path: Path, *, allow_pickle: bool = False, config_dir: Path | None = None, prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
) -> Components:
    """Load `path` (or return it from the cache, keyed by resolved path and modification time)."""
    path = Path(path).expanduser()
    stat_key = path.stat().st_mtime_ns if path.exists() else None
    key = (str(path.resolve()), stat_key, allow_pickle, str(config_dir), prediction_type, zero_terminal_snr)
    if key not in _CACHE:
        _CACHE[key] = load_model(path, allow_pickle=allow_pickle, config_dir=config_dir,
                                 prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr)
        while len(_CACHE) > MAX_MODELS:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]
