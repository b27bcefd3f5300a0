"""The denoiser: one batched UNet forward over exactly the branches a step needs, then guidance."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Mapping

import torch

from avert.guidance.strategy import Guidance, StepContext


@dataclass
class EvaluationCount:
    """How many UNet forwards ran and how many conditioned samples they carried (for benchmarks/tests)."""

    forwards: int = 0
    samples: int = 0


@dataclass(frozen=True)
class Denoiser:
    """Evaluates `unet` on the branches `guidance` asks for, in one batch, and combines them.

    `conditioning` maps a branch name to encoder hidden states of shape [batch, tokens, dim]; the
    latent batch x has the same batch size; each branch sees the same x.
    """

    unet: torch.nn.Module
    conditioning: Mapping[str, torch.Tensor]
    guidance: Guidance
    autocast_dtype: torch.dtype | None = None
    count: EvaluationCount = field(default_factory=EvaluationCount)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        names = self.guidance.branches(ctx)
        model_in = torch.cat([x] * len(names)) if len(names) > 1 else x
        hidden = torch.cat([self.conditioning[n] for n in names]) if len(names) > 1 else self.conditioning[names[0]]
        with self._autocast(x.device):
            out = self.unet(model_in, timestep, encoder_hidden_states=hidden, return_dict=False)[0]
        self.count.forwards += 1
        self.count.samples += out.shape[0]
        predictions = dict(zip(names, out.to(x.dtype).chunk(len(names))))
        return self.guidance.combine(predictions, ctx)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)
