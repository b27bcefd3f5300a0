"""The frozen request value that crosses every boundary (CLI, Python API, server) into the engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from avert.schema import PARAMS


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines the images, apart from the model and the runtime device.

    Fields and their defaults are declared once in `avert.schema.PARAMS`; `width`/`height` of None mean
    the model's native size; seed -1 means "draw a random seed" (the result reports the seed used).
    """

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    sampler: str = "Euler a"
    batch_size: int = 1

    def replace(self, **changes: Any) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRequest":
        """Build from a dict (e.g. a PNG's structured chunk); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _check_schema_matches() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}
    declared = {p.name: p.default for p in PARAMS}
    if fields != declared:
        raise RuntimeError(f"GenerationRequest fields {fields} disagree with schema.PARAMS {declared}")


_check_schema_matches()
