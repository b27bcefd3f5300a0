"""Seeds and initial noise, drawn exactly as diffusers draws them.

For one image with seed S, diffusers' `StableDiffusionPipeline` with
`generator=torch.Generator("cpu").manual_seed(S)` draws `torch.randn((1, C, h, w), generator=...)`; we
draw the same, one generator per image with seed S + i, so any image of a batch can be re-made alone.
"""

from __future__ import annotations

import secrets
from typing import Sequence

import torch

from avert.schema import SEED_MAX


def resolve_seed(seed: int) -> int:
    """The seed to use: `seed` itself, or a fresh random one for -1 (A1111's convention)."""
    return secrets.randbelow(SEED_MAX + 1) if seed == -1 else seed


def image_seeds(first: int, count: int) -> tuple[int, ...]:
    """Seeds of a batch: first, first + 1, ... (wrapping past 2^32 - 1 like A1111's uint32 seeds)."""
    return tuple((first + i) % (SEED_MAX + 1) for i in range(count))


def initial_noise(
    seeds: Sequence[int], shape: tuple[int, int, int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Unit-variance noise [len(seeds), *shape] and the per-image CPU generators, left where the noise ends."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    noise = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
    return noise.to(device), generators
