"""Several runs' denoisers evaluated together: one UNet forward per step for the rows of every run.

A batch job (`avert batch`) holds many requests of the same model, size and sampler; each keeps its own
`Denoiser` (its branches, guidance, windows and memory), and `Together` stacks their inputs into one UNet batch
per step. Runs whose hidden states have different token counts (a prompt past 75 tokens) are evaluated in one
forward per count, never padded to each other: padding adds keys to cross-attention and would change the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from avert.guidance.denoiser import Denoiser, Forward
from avert.guidance.strategy import StepContext


@dataclass(frozen=True)
class Together:
    """`members[k]` denoises rows `rows[k]` of the batch (in order); each member's rows are its run's images."""

    members: tuple[Denoiser, ...]
    rows: tuple[int, ...]
    _cache: dict = field(default_factory=dict, repr=False)  # stacked inputs per combination of members' tensors

    def __post_init__(self):
        if len(self.members) != len(self.rows) or not self.members:
            raise ValueError("Together needs one row count per member, and at least one member")
        if any(m.nag is not None or m.maps is not None or m.perturb is not None for m in self.members):
            raise ValueError("NAG, maps and perturbed branches act on one run's UNet call; such runs are evaluated "
                             "alone")

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        parts = x.split(self.rows)
        forwards = [m.prepare(p, ctx) for m, p in zip(self.members, parts)]
        outputs: list[torch.Tensor | None] = [None] * len(forwards)
        for group in _same_shape(forwards):
            hidden, extra = self._stacked([forwards[k] for k in group])
            out = self.members[group[0]].evaluate(torch.cat([forwards[k].model_in for k in group]), timestep, hidden,
                                                  extra, x.device)
            for k, piece in zip(group, out.split([forwards[k].model_in.shape[0] for k in group])):
                outputs[k] = piece
        return torch.cat([m.finish(f, o, p, ctx) for m, f, o, p in zip(self.members, forwards, outputs, parts)])

    def _stacked(self, forwards: list[Forward]) -> tuple[torch.Tensor, dict]:
        """The members' hidden states (and SDXL's added conditioning) stacked, once per combination: each member
        hands out the same tensors for as long as its branches and schedule entries stay (`Denoiser.hidden_states`),
        so their ids are stable keys."""
        key = tuple((id(f.hidden), *(id(v) for a in f.extra.values() for v in a.values())) for f in forwards)
        if key not in self._cache:
            self._cache[key] = (torch.cat([f.hidden for f in forwards]), _joined([f.extra for f in forwards]))
        return self._cache[key]


def _same_shape(forwards: list[Forward]) -> list[list[int]]:
    """Members whose hidden states have the same tokens and width, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for k, forward in enumerate(forwards):
        groups.setdefault(tuple(forward.hidden.shape[1:]), []).append(k)
    return list(groups.values())


def _joined(extras: list[dict]) -> dict:
    """SDXL's added conditioning of several members, row blocks stacked as their inputs are."""
    if not extras[0]:
        return {}
    added = [e["added_cond_kwargs"] for e in extras]
    return {"added_cond_kwargs": {key: torch.cat([a[key] for a in added]) for key in added[0]}}
