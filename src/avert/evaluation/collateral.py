"""Collateral change of a negative: what it changes besides its concept (`avert eval negatives` and `compose`).

* colour: CIE76 Delta E*ab, the Euclidean distance in CIELAB (D65) of sRGB pixels (about 2.3 is a just-noticeable
  difference); per image pair (same seed, without and with the negatives), over the whole image where the image
  without them holds none of the named concepts (*absent*), and outside the named concepts' regions where it
  holds some (*outside*). A region is where occluding the image lowers the detector's probability of the concept
  most (`avert.evaluation.inpainting.concept_mask`); an image with a present concept it cannot place is left out.
* detection rates: see `avert.world.ties` for the concepts a negative implies, which are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from avert.evaluation.common import Reading


def lab(images: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 sRGB images [..., 3]: linearise, to XYZ (sRGB's matrix), to L*a*b*."""
    c = images.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 Delta E*ab per pixel of two uint8 sRGB images of one shape: [..., H, W]."""
    return np.linalg.norm(lab(a) - lab(b), axis=-1)


class Regions:
    """Where each concept is in each image without negatives (`concept_mask`), computed once per image and
    concept."""

    def __init__(self, images: np.ndarray, detector) -> None:
        self.images, self.detector, self.cache = images, detector, {}

    def mask(self, index: int, concept: str) -> np.ndarray | None:
        from avert.evaluation.inpainting import concept_mask

        key = (index, concept)
        if key not in self.cache:
            self.cache[key] = concept_mask(self.images[index], self.detector, concept)
        return self.cache[key]


def pixel_collateral(without: np.ndarray, with_: np.ndarray, reading: Reading, concepts: Sequence[str],
                     regions: Regions) -> tuple[float | None, int, float | None, int]:
    """(mean Delta E where no named concept is, images; mean Delta E outside the named ones' regions, images)."""
    from avert.world import CONCEPT_INDEX

    distance = delta_e(without, with_)
    absent, outside = [], []
    for i in range(len(without)):
        present = [c for c in concepts if reading.present[i, CONCEPT_INDEX[c]]]
        if not present:
            absent.append(float(distance[i].mean()))
            continue
        masks = [regions.mask(i, c) for c in present]
        if any(m is None for m in masks):
            continue
        keep = ~np.logical_or.reduce(masks)
        if keep.any():
            outside.append(float(distance[i][keep].mean()))
    mean = (lambda v: float(np.mean(v)) if v else None)
    return mean(absent), len(absent), mean(outside), len(outside)
