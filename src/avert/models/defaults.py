"""A model folder's own recommended settings: `avert.json` beside `model_index.json`.

    {"defaults": {"guidance": "gated"}}

Only settings a request may leave unset can have a model default, and so far that is the guidance method: a
request without `guidance` gets the model's, and one that names it gets what it names. A folder without the
file (every Stable Diffusion checkpoint) keeps A1111's plain CFG. `avert train` writes the file; the embedded
model recommends `gated` (why: docs/embedded-model.md, "The embedded model's default guidance").
"""

from __future__ import annotations

import json
from pathlib import Path

from avert.errors import ModelLoadError
from avert.schema import FALLBACK_GUIDANCE, GUIDANCE_METHODS

DEFAULTS_FILE = "avert.json"


def read_default_guidance(folder: Path) -> str:
    """The guidance method `folder/avert.json` recommends, or "cfg" without the file; a bad file is an error
    that names it, the field, the value and what is allowed."""
    path = Path(folder) / DEFAULTS_FILE
    if not path.is_file():
        return FALLBACK_GUIDANCE
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"model: {str(path)!r} is not readable JSON: {exc}") from None
    defaults = data.get("defaults") if isinstance(data, dict) else None
    if not isinstance(data, dict) or set(data) != {"defaults"} or not isinstance(defaults, dict):
        raise ModelLoadError(f"model: {str(path)!r} must be an object with one key, \"defaults\", an object of "
                             f"request defaults (allowed: guidance); got {data!r}")
    unknown = sorted(set(defaults) - {"guidance"})
    if unknown:
        raise ModelLoadError(f"model: {str(path)!r}: defaults.{unknown[0]} is not allowed; a model may set "
                             "only defaults.guidance")
    value = defaults.get("guidance", FALLBACK_GUIDANCE)
    if value not in GUIDANCE_METHODS:
        raise ModelLoadError(f"model: {str(path)!r}: defaults.guidance {value!r} is not allowed; must be one of: "
                             + ", ".join(GUIDANCE_METHODS))
    return value


def defaults_file_text(guidance: str) -> str:
    """The `avert.json` that recommends `guidance` (checked as `read_default_guidance` checks it)."""
    if guidance not in GUIDANCE_METHODS:
        raise ValueError(f"default guidance: {guidance!r} is not one of {', '.join(GUIDANCE_METHODS)}")
    return json.dumps({"defaults": {"guidance": guidance}}, indent=2) + "\n"
