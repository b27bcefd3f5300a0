"""Pictures of where a negative acted (`avert.guidance.attribution`) and what it changed, and their small record.

* `overlay`: the map brought to the image's size (bilinear) and laid over a dimmed grey copy of the image in a
  black-red-yellow-white scale from `low` (transparent) to `high` (white, opaque); maps shown together share
  one range (the smallest and largest of their values), so columns compare. A negative acts over much of the
  image (docs/eval/maps.md), so the range starts at the smallest value rather than at 0, to show where it acted
  most.
* `difference`: the mean absolute RGB difference per pixel of two images, doubled (a change of 128 levels or more
  is white), on black: the same scale for every column.
* `small_map` / `read_small_map`: the map at most 16 x 16 (area mean), 0..255 of its own peak, with the peak, as
  the PNG record keeps it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SMALL_SIDE = 16


def heat(values: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 colours of values in [0, 1]: black, red, yellow, white (each channel a ramp)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    ramps = np.clip(3.0 * v - np.array([0.0, 1.0, 2.0]), 0.0, 1.0)
    return np.round(255.0 * ramps).astype(np.uint8)


def resized(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """A [h, w] float map brought to [height, width] by bilinear resampling (PIL's, in float32)."""
    plane = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))  # mode "F"
    return np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))


def shared_range(maps) -> tuple[float, float]:
    """(smallest, largest) value over the maps shown together (arrays), (0, 0) for none: `overlay`'s range."""
    values = list(maps)
    return (min((float(v.min()) for v in values), default=0.0), max((float(v.max()) for v in values), default=0.0))


def overlay(image: Image.Image, values: np.ndarray, low: float, high: float) -> Image.Image:
    """The map `values` ([h, w], latent size) over `image`, from `low` (not shown) to `high` (full heat)."""
    span = high - low
    scaled = (resized(values, image.width, image.height) - low) / span if span > 0 else \
        np.zeros((image.height, image.width))
    scaled = np.clip(scaled, 0.0, 1.0)
    grey = np.asarray(image.convert("L"), dtype=np.float64)[..., None] * 0.6
    alpha = (0.25 + 0.75 * scaled)[..., None] * (scaled[..., None] > 0)
    mixed = (1.0 - alpha) * grey + alpha * heat(scaled)
    return Image.fromarray(np.round(mixed).astype(np.uint8))


def difference(before: Image.Image, after: Image.Image) -> Image.Image:
    """|after - before| per pixel, mean over RGB, doubled and clipped to 255: black where nothing changed."""
    a, b = (np.asarray(i.convert("RGB"), dtype=np.int16) for i in (before, after))
    change = np.abs(a - b).mean(axis=-1) * 2.0
    return Image.fromarray(np.clip(np.round(change), 0, 255).astype(np.uint8)).convert("RGB")


def small_map(values: np.ndarray) -> dict:
    """{"size": [h, w], "peak": float, "values": hex of h*w bytes, row by row}: the map area-averaged in square
    cells to at most 16 a side, each cell 0..255 of the largest (its peak; 0 everywhere when the map is)."""
    h, w = values.shape
    k = max(1, -(-max(h, w) // SMALL_SIDE))  # square cells of k x k, so the map keeps its aspect
    padded = np.pad(values, ((0, -h % k), (0, -w % k)), mode="edge")
    cells = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k).mean(axis=(1, 3))
    peak = float(cells.max()) if cells.size else 0.0
    levels = np.round(255.0 * cells / peak) if peak > 0 else np.zeros_like(cells)
    return {"size": list(cells.shape), "peak": peak, "values": levels.astype(np.uint8).tobytes().hex()}


def read_small_map(record: dict) -> np.ndarray:
    """The [h, w] float map of a `small_map` record (values times peak / 255)."""
    h, w = record["size"]
    levels = np.frombuffer(bytes.fromhex(record["values"]), dtype=np.uint8).reshape(h, w)
    return levels.astype(np.float64) * record["peak"] / 255.0
