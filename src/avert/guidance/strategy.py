"""Guidance strategies: which predictions a step needs, and how to combine them.

Following SGM's guiders, "what to evaluate" (`branches`) is kept apart from "how to combine"
(`combine`); progress through the run is passed in explicitly (`StepContext`), never held as state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import torch

from avert.guidance.cfg import cfg

POSITIVE = "positive"
NEGATIVE = "negative"


@dataclass(frozen=True)
class StepContext:
    """Where a model evaluation sits in the run: evaluation `index` of `total`, at `timestep`."""

    index: int
    total: int
    timestep: float

    @property
    def fraction(self) -> float:
        """Progress through the run in [0, 1): 0 at the first evaluation."""
        return self.index / self.total


class Guidance(Protocol):
    def branches(self, ctx: StepContext) -> tuple[str, ...]: ...

    def combine(self, predictions: Mapping[str, torch.Tensor], ctx: StepContext) -> torch.Tensor: ...


@dataclass(frozen=True)
class CFGGuidance:
    """Plain classifier-free guidance with the negative prompt as the unconditional branch.

    The negative's forward is skipped when it cannot matter: at scale exactly 1 (e = e_c).
    Branch order [negative, positive] is diffusers' batch order, so the batched forward matches it.
    """

    scale: float

    def branches(self, ctx: StepContext) -> tuple[str, ...]:
        return (POSITIVE,) if self.scale == 1.0 else (NEGATIVE, POSITIVE)

    def combine(self, predictions: Mapping[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        if NEGATIVE not in predictions:
            return predictions[POSITIVE]
        return cfg(predictions[POSITIVE], predictions[NEGATIVE], self.scale)
