"""Where and how the engine runs: device and precision (not part of the request: they do not change the image
beyond rounding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    """`precision` "bf16" runs the UNet and VAE under bf16 autocast (for CPUs with AVX-512 bf16 or AMX, and
    GPUs; not yet benchmarked by avert); "fp32" is exact and is what diffusers parity is measured in."""

    device: str = "cpu"
    precision: str = "fp32"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def warnings(self) -> tuple[str, ...]:
        """What the user should know about this runtime before a long run."""
        if self.precision == "bf16" and torch.device(self.device).type == "cpu" and not native_bf16():
            return ("precision bf16: this CPU has no native bf16 (no AVX-512 bf16 or AMX), so torch emulates it "
                    "and the UNet runs many times slower than in fp32; use --precision fp32",)
        return ()


def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 bf16 or AMX). Without it torch emulates bf16: a training
    step of the embedded model under bf16 autocast took over 20 s against 2.0 s in fp32 on an AVX2-only EPYC."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
