"""Where each negative acted: its part of the guided prediction, accumulated over the run (`avert compare --map`).

At a guided evaluation with prediction e (all negatives) and e_-g (the same evaluation, with the same branch
predictions and the same per-run memory, but without the terms of request negative g), negative g changes the
model's estimate of the clean sample by dD_g = b(sigma) (e - e_-g), b the output's coefficient in the denoised
estimate (`cfg.denoised`: -sigma for epsilon, -sigma / sqrt(1 + sigma^2) for v). A first-order step from sigma to
the next noise level sigma' moves the sample by (sigma - sigma') / sigma times the change of D (Euler's step,
x' = x + (sigma' - sigma) (x - D) / sigma), so the map of negative g is

    M_g[h, w] = sum over guided evaluations of (sigma - sigma') / sigma * |dD_g[:, h, w]|_2 (over channels),

in latent units, at latent resolution; sigma' is the next smaller noise level evaluated (0 after the last).
With one negative and plain CFG, e - e_-g = (w - 1)(e_0 - e_n): the map is where the negative's branch and the
empty prompt's disagree, scaled by the guidance; with several negatives it is each one's share under the rule
(`avert.guidance.compose`), gate and posterior included. It is a leave-one-out difference along the run with the
negative, not the difference of two runs (that is the pixel difference image beside it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import torch

from avert.guidance import cfg as f
from avert.guidance.strategy import Branch, Guidance, StepContext


def without(guidance: Guidance, group: int) -> Guidance:
    """The same guidance with every term of request negative `group` switched off (weight 0)."""
    groups = guidance.groups(tuple(range(len(guidance.negatives))))
    terms = tuple(dataclasses.replace(t, weight=0.0) if g == group else t for t, g in zip(guidance.negatives, groups))
    return dataclasses.replace(guidance, negatives=terms)


def changes(guidance: Guidance, predictions: Mapping[Branch, torch.Tensor], ctx: StepContext, x: torch.Tensor,
            memory: dict, guided: torch.Tensor) -> dict[int, torch.Tensor]:
    """{request negative g: e - e_-g} for every negative active at this evaluation. `memory` is the per-run
    memory as it was before this evaluation's combination (copied for each, so nothing here changes the run);
    `predictions` must hold the empty prompt's branch (`Guidance.branches(ctx, empty=True)`)."""
    active = guidance.active_negatives(ctx)
    return {g: guided - without(guidance, g).combine(predictions, ctx, x, dict(memory))
            for g in dict.fromkeys(guidance.groups(active))}


@dataclasses.dataclass
class NegativeMaps:
    """Accumulates `changes` over a run: call `add` at each guided evaluation, `maps` at the end."""

    prediction_type: str = "epsilon"
    _records: list = dataclasses.field(default_factory=list)  # (sigma, {group: |b * change| over channels})

    def add(self, ctx: StepContext, change: Mapping[int, torch.Tensor]) -> None:
        b = f.denoised(torch.zeros(()), torch.ones(()), ctx.sigma, self.prediction_type).item()
        self._records.append((ctx.sigma, {g: (b * c).float().norm(dim=1) for g, c in change.items()}))

    def maps(self, groups: int, batch: int, height: int, width: int) -> torch.Tensor:
        """[batch, groups, height, width] (latent size): M_g of every request negative g < `groups`, 0 where g
        never acted."""
        sigmas = sorted({s for s, _ in self._records}, reverse=True) + [0.0]
        following = dict(zip(sigmas, sigmas[1:]))
        total = torch.zeros(batch, groups, height, width)
        for sigma, per_group in self._records:
            weight = 1.0 if math.isinf(sigma) else (sigma - following[sigma]) / sigma if sigma > 0 else 0.0
            for g, change in per_group.items():
                total[:, g] += weight * change
        return total
