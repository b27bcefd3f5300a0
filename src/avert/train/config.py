"""Settings of a training run (also the `avert train` flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 25000
    batch_size: int = 32
    images: int = 80000
    captions_per_image: int = 2
    lr: float = 4e-4
    warmup: int = 500
    ema_decay: float = 0.9995
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 500
    seed: int = 0
