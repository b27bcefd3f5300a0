"""One declared schema per generation parameter.

Each `Param` states its default, its allowed range and its help text once; the CLI flags, the request
validation (and later the HTTP API) are all derived from this table, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from avert.sampling.samplers import SAMPLER_NAMES

SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Limits:
    """Bounds that a deployment may tighten or widen (image size, batch, prompt length)."""

    min_size: int = 64
    max_size: int = 2048
    max_batch_size: int = 16
    max_steps: int = 150
    max_cfg_scale: float = 30.0
    max_prompt_chars: int = 8192


@dataclass(frozen=True)
class Param:
    """A request field: type, default, bounds (taken from `Limits` where they are configurable), help."""

    name: str
    type: type
    default: object
    help: str
    flag: str
    short: str | None = None
    low: Callable[[Limits], float] | None = None
    high: Callable[[Limits], float] | None = None
    choices: tuple[str, ...] = field(default=())
    multiple_of: int | None = None
    allow: tuple[object, ...] = field(default=())  # special values allowed outside the range (seed -1)

    def describe_allowed(self, limits: Limits) -> str:
        """Human text for what this field accepts, used in every error about it."""
        if self.choices:
            return "must be one of: " + ", ".join(self.choices)
        parts = []
        if self.low is not None and self.high is not None:
            parts.append(f"from {_num(self.low(limits))} to {_num(self.high(limits))}")
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        if self.type is str and self.high is not None:
            parts = [f"at most {self.high(limits)} characters"]
        text = {int: "an integer", float: "a number"}.get(self.type, "text")
        text += (" " + ", ".join(parts)) if parts else ""
        if self.allow:
            text += " (or " + ", ".join(str(a) for a in self.allow) + ")"
        return "must be " + text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _size_param(name: str, short: str) -> Param:
    return Param(
        name, int, None, f"image {name} in pixels, a multiple of 8 (default: the model's native size)",
        f"--{name}", short, low=lambda l: l.min_size, high=lambda l: l.max_size, multiple_of=8,
    )


PARAMS: tuple[Param, ...] = (
    Param("prompt", str, "", "what the image should show", "prompt", high=lambda l: l.max_prompt_chars),
    Param("negative_prompt", str, "", "what the image must steer away from", "--negative-prompt", "-n",
          high=lambda l: l.max_prompt_chars),
    Param("seed", int, -1, "seed of image 1 (image i uses seed + i - 1); -1 draws a random seed", "--seed",
          low=lambda l: 0, high=lambda l: SEED_MAX, allow=(-1,)),
    Param("steps", int, 20, "number of sampling steps", "--steps", low=lambda l: 1, high=lambda l: l.max_steps),
    Param("cfg_scale", float, 7.0, "classifier-free guidance scale: how strongly the prompt, and away from the "
          "negative, the image is pulled", "--cfg-scale", low=lambda l: 0.0, high=lambda l: l.max_cfg_scale),
    _size_param("width", "-W"),
    _size_param("height", "-H"),
    Param("sampler", str, "Euler a", "sampler, by its AUTOMATIC1111 name", "--sampler", choices=SAMPLER_NAMES),
    Param("batch_size", int, 1, "number of images, seeds seed .. seed + n - 1", "--batch-size", "-b",
          low=lambda l: 1, high=lambda l: l.max_batch_size),
)

PARAMS_BY_NAME = {p.name: p for p in PARAMS}
