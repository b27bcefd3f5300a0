"""Which model to use when the user names none."""

from __future__ import annotations

import os
from pathlib import Path

from avert.errors import ModelLoadError

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "embedded" / "model"


def resolve_model_path(given: str | os.PathLike | None) -> Path:
    """The path given, else $AVERT_MODEL, else the embedded default model shipped with avert."""
    if given:
        return Path(given).expanduser()
    if os.environ.get("AVERT_MODEL"):
        return Path(os.environ["AVERT_MODEL"]).expanduser()
    if (EMBEDDED_MODEL / "model_index.json").exists():
        return EMBEDDED_MODEL
    raise ModelLoadError(
        "model: none given and no embedded default model is installed in this version; "
        "pass --model PATH (a diffusers folder or an SD .safetensors file) or set AVERT_MODEL"
    )
