"""Speckle: generated images with more fine-grained, pixel-level noise than the world ever draws.

The high-frequency energy of an image is, per pixel, the squared difference between the image and its 3x3
box blur (values in [0, 1], channels averaged, edges replicated), summarised over the image by its median
pixel (`PIXEL_QUANTILE`). An image is *speckled* when that energy exceeds the `quantile` (99th percentile by
default) of the same statistic over the world's own renders, so about 1% of world renders count as speckled
by construction.

Why the median pixel and not the mean: world renders are flat regions with antialiased edges and, at night,
single-pixel stars. The mean is dominated by those few pixels (its world 99th percentile equals grain of
about 25/255 per pixel, clearly visible), while the median pixel of a world render sits in a flat region and
is near 0. With the median, grain of sigma 8/255 over the image is flagged in 99% of images (6/255: about a
third); sparse speckle (20% of pixels off by sigma 30/255) in about half; noise-free world renders in 1%.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

QUANTILE = 0.99
PIXEL_QUANTILE = 0.5
REFERENCE_N = 2000
REFERENCE_SEED = 20261  # a world seed no training or detector split uses by default

ImageInput = np.ndarray | Sequence[Image.Image]


def as_array(images: ImageInput) -> np.ndarray:
    """uint8 [N, H, W, 3] from such an array or a list of PIL images (all of one size)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} with shape {images.shape}")
        return images
    arrays = [np.asarray(im.convert("RGB")) for im in images]
    if not arrays:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return np.stack(arrays)


def high_frequency_energy(images: ImageInput, pixel_quantile: float = PIXEL_QUANTILE) -> np.ndarray:
    """float64 [N]: per image, the `pixel_quantile` (median) over pixels of (image - 3x3 box blur)^2, values
    in [0, 1], channels averaged, edges replicated."""
    x = as_array(images).astype(np.float64) / 255.0
    if len(x) == 0:
        return np.zeros(0)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    blurred = sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    per_pixel = ((x - blurred) ** 2).mean(axis=3).reshape(len(x), -1)
    return np.quantile(per_pixel, pixel_quantile, axis=1)


def speckle_threshold(reference_images: ImageInput, quantile: float = QUANTILE) -> float:
    """The `quantile` of the reference images' high-frequency energy."""
    energy = high_frequency_energy(reference_images)
    if len(energy) == 0:
        raise ValueError("speckle_threshold needs at least one reference image")
    return float(np.quantile(energy, quantile))


def is_speckled(images: ImageInput, threshold: float) -> np.ndarray:
    """bool [N]: energy above `threshold`."""
    return high_frequency_energy(images) > threshold


def speckle_fraction(images: ImageInput, reference_images: ImageInput | None = None,
                     quantile: float = QUANTILE) -> float:
    """Share of `images` whose high-frequency energy exceeds the `quantile` of `reference_images`' (default:
    `REFERENCE_N` world renders of seed `REFERENCE_SEED`, at the images' size). 0.0 for no images."""
    array = as_array(images)
    if len(array) == 0:
        return 0.0
    if reference_images is None:
        threshold = world_threshold(array.shape[1], quantile)
    else:
        threshold = speckle_threshold(reference_images, quantile)
    return float(is_speckled(array, threshold).mean())


@lru_cache(maxsize=4)
def world_reference(size: int = 32, n: int = REFERENCE_N, seed: int = REFERENCE_SEED) -> np.ndarray:
    """`n` world renders at `size` (read-only uint8 [n, size, size, 3]), the reference for speckle."""
    from avert.world import make_dataset

    return make_dataset(n, seed, size=size, captions_per_image=0).images


@lru_cache(maxsize=8)
def world_threshold(size: int = 32, quantile: float = QUANTILE) -> float:
    """`speckle_threshold` of `world_reference(size)` (cached)."""
    return speckle_threshold(world_reference(size), quantile)
