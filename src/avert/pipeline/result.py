"""What a generation returns: images with their seeds and metadata, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from avert.request import GenerationRequest


@dataclass(frozen=True)
class NegativeMap:
    """Where one request negative acted in one image (`avert.guidance.attribution`): [h, w] at latent size."""

    negative: str
    values: np.ndarray


@dataclass(frozen=True)
class GeneratedImage:
    """One image, the seed that re-makes it alone, its A1111 infotext and its structured record; with maps
    asked for, one map per negative (the record keeps a small version of each, under "negative_maps")."""

    image: Image.Image
    seed: int
    infotext: str
    record: dict
    maps: tuple[NegativeMap, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    """All images of a request (seeds seed .. seed + n - 1), the request as run, and what the user must know."""

    request: GenerationRequest  # with the resolved seed and size
    images: tuple[GeneratedImage, ...]
    warnings: tuple[str, ...]
    unet_forwards: int
    seconds: float
    branch_evaluations: int = 0  # UNet evaluations per image (branches summed over steps)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(i.seed for i in self.images)
