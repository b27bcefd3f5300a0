"""Per-image pixel statistics that check tone grades without a neural network.

A tone grade (see `avert.world.render.apply_tone`) changes every pixel of an image, while
the content of a scene (green grass, blue sea, an orange sunset) covers only part of it.
So the statistics that tell grades apart are taken either as a per-image mean or as a low
quantile over the pixels (`TINT_QUANTILE`: the level that 95% of the pixels exceed), the
"tint floor" that a grade lifts and plain content does not.

Each tone is checked by one score that grows with the tone (`tone_scores`) and a threshold
calibrated on world renders (`calibrate_thresholds`); `tone_flags` applies them and
`tone_agreement` compares the flags with ground truth. All values are on the 0-255 scale
except saturation, greyness and sepia-likeness, which lie in [0, 1].
"""

from __future__ import annotations

import numpy as np

TINT_QUANTILE = 0.05
SEPIA_SCALE = 4.0  # mean distance (0-255 units) from the sepia curve at which likeness is 1/e
TONE_NAMES: tuple[str, ...] = ("green tones", "warm tones", "blue tones", "black and white", "sepia")

# The sepia grade maps a pixel to clip(t * SEPIA_DIRECTION): its three matrix rows are
# proportional to within 0.5%. The curve is a polyline once clipping sets in.
_SEPIA_ROWS = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
SEPIA_DIRECTION = _SEPIA_ROWS.sum(axis=1) / _SEPIA_ROWS.sum(axis=1)[0]


def _sepia_polyline() -> np.ndarray:
    """Vertices (0-255 RGB) of the curve t -> clip(t * SEPIA_DIRECTION), t from 0 to white."""
    t_end = float(_SEPIA_ROWS.sum(axis=1)[0])
    knots = sorted({0.0, *(1.0 / d for d in SEPIA_DIRECTION), t_end})
    return np.array([np.clip(t * SEPIA_DIRECTION, 0.0, 1.0) * 255.0 for t in knots if t <= t_end])


_SEPIA_VERTICES = _sepia_polyline()


def as_float(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, H*W, 3] on the 0-255 scale (ValueError on other shapes)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got shape {images.shape}")
    return images.reshape(images.shape[0], -1, 3).astype(np.float32)


def _reduce(values: np.ndarray, q: float | None) -> np.ndarray:
    """Per-image mean over pixels, or the q-quantile over pixels when q is given."""
    return values.mean(axis=1) if q is None else np.quantile(values, q, axis=1)


def mean_saturation(images: np.ndarray) -> np.ndarray:
    """Mean HSV saturation (max - min) / max per image, in [0, 1]; black pixels count as 0."""
    x = as_float(images)
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0).mean(axis=1)


def green_excess(images: np.ndarray, q: float | None = None) -> np.ndarray:
    """G - (R + B) / 2 per image (mean, or q-quantile over pixels)."""
    x = as_float(images)
    return _reduce(x[..., 1] - (x[..., 0] + x[..., 2]) / 2, q)


def warm_excess(images: np.ndarray, q: float | None = None) -> np.ndarray:
    """R - B per image (mean, or q-quantile over pixels)."""
    x = as_float(images)
    return _reduce(x[..., 0] - x[..., 2], q)


def blue_excess(images: np.ndarray, q: float | None = None) -> np.ndarray:
    """B - (R + G) / 2 per image (mean, or q-quantile over pixels)."""
    x = as_float(images)
    return _reduce(x[..., 2] - (x[..., 0] + x[..., 1]) / 2, q)


def sepia_distance(images: np.ndarray) -> np.ndarray:
    """Mean distance (0-255 RGB units) of each image's pixels from the sepia curve."""
    x = as_float(images)
    best = np.full(x.shape[:2], np.inf, dtype=np.float32)
    for a, b in zip(_SEPIA_VERTICES[:-1], _SEPIA_VERTICES[1:]):
        ab = (b - a).astype(np.float32)
        t = np.clip(((x - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        nearest = a.astype(np.float32) + t[..., None] * ab
        best = np.minimum(best, np.linalg.norm(x - nearest, axis=-1))
    return best.mean(axis=1)


def sepia_likeness(images: np.ndarray) -> np.ndarray:
    """exp(-sepia_distance / SEPIA_SCALE): near 1 for sepia-graded images, low otherwise."""
    return np.exp(-sepia_distance(images) / SEPIA_SCALE)


def tone_scores(images: np.ndarray) -> dict[str, np.ndarray]:
    """One score per tone in `TONE_NAMES`, each larger when the tone is more present."""
    q = TINT_QUANTILE
    return {
        "green tones": green_excess(images, q),
        "warm tones": warm_excess(images, q),
        "blue tones": blue_excess(images, q),
        "black and white": 1.0 - mean_saturation(images),
        "sepia": sepia_likeness(images),
    }


def tone_flags(images: np.ndarray, thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    """Bool [N] per tone: score above its threshold. Sepia is also warm, so a warm flag
    needs the sepia flag off (a world image carries at most one grade)."""
    scores = tone_scores(images)
    flags = {tone: scores[tone] > thresholds[tone] for tone in TONE_NAMES}
    flags["warm tones"] &= ~flags["sepia"]
    return flags


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold with the best balanced accuracy for `scores > threshold`; among equally
    good ones, the middle of their range (the widest margin on both sides)."""
    cuts = np.unique(scores)
    cuts = np.concatenate([[cuts[0] - 1.0], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1.0]])
    pred = scores[None, :] > cuts[:, None]
    pos, neg = max(int(truth.sum()), 1), max(int((~truth).sum()), 1)
    balanced = (pred & truth).sum(axis=1) / pos + (~pred & ~truth).sum(axis=1) / neg
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    return float((cuts[best[0]] + cuts[best[-1]]) / 2)


def calibrate_thresholds(images: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Thresholds per tone from world renders and their ground truth (tone -> bool [N]).
    The warm threshold is fitted without the sepia images, which the warm rule excludes."""
    scores = tone_scores(images)
    out = {}
    for tone in TONE_NAMES:
        keep = ~truth["sepia"] if tone == "warm tones" else np.ones(len(images), dtype=bool)
        out[tone] = best_threshold(scores[tone][keep], truth[tone][keep])
    return out


def tone_agreement(
    images: np.ndarray, truth: dict[str, np.ndarray], thresholds: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Accuracy, precision and recall of `tone_flags` against ground truth, per tone."""
    flags = tone_flags(images, thresholds)
    out = {}
    for tone in TONE_NAMES:
        p, t = flags[tone], truth[tone]
        tp = int((p & t).sum())
        out[tone] = {
            "accuracy": float((p == t).mean()),
            "precision": tp / max(int(p.sum()), 1),
            "recall": tp / max(int(t.sum()), 1),
        }
    return out
