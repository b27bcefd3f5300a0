"""Where and how the engine runs: device and precision (not part of the request: they do not change the image
beyond rounding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    """`precision` "bf16" runs the UNet and VAE under bf16 autocast (for CPUs with AVX-512 bf16; not yet
    benchmarked by avert); "fp32" is exact and is what diffusers parity is measured in."""

    device: str = "cpu"
    precision: str = "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None
