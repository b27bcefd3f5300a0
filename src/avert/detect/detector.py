"""Load the shipped concept detector and read concepts off images.

The detector is two files side by side: `detector.safetensors` (the `ConceptNet` weights)
and `detector.json` (the concept order, one decision threshold per concept chosen on a
validation set, the held-out scores, and the pixel-statistic thresholds for tones).

    det = ConceptDetector.load()
    present = det.predict(images)            # bool [N, 27], columns in CONCEPTS order
    p_hand = det.probabilities(images)[:, det.index("hand")]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.nn.utils.fusion import fuse_conv_bn_eval

from avert.detect import pixelstats
from avert.detect.model import IMAGE_SIZE, ConceptNet
from avert.world import CONCEPTS

SHIPPED_DIR = Path(__file__).resolve().parent
WEIGHTS_NAME = "detector.safetensors"
META_NAME = "detector.json"
FORMAT_VERSION = 1
BATCH = 256

ImageInput = np.ndarray | Sequence[Image.Image]


def _paths(path: str | Path | None) -> tuple[Path, Path]:
    """(weights, metadata) for a folder, a weights file or None (the shipped detector)."""
    p = SHIPPED_DIR if path is None else Path(path)
    if p.suffix == ".safetensors":
        return p, p.with_name(META_NAME)
    return p / WEIGHTS_NAME, p / META_NAME


def save_detector(model: ConceptNet, meta: dict[str, Any], out: str | Path) -> Path:
    """Write `detector.safetensors` and `detector.json` into the folder `out`; the weights path."""
    weights, meta_path = _paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "avert-concept-detector", "version": str(FORMAT_VERSION)})
    weights.chmod(0o644)  # safetensors writes 0600; the shipped file must be readable by all
    meta_path.write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2) + "\n")
    return weights


def _fused(model: ConceptNet) -> ConceptNet:
    """Fold each BatchNorm into the conv before it (same outputs in eval mode, faster)."""
    model.eval()
    for block in model.features:
        block[0] = fuse_conv_bn_eval(block[0], block[1])
        block[1] = torch.nn.Identity()
    return model


def to_batch(images: ImageInput) -> np.ndarray:
    """uint8 [N, 32, 32, 3] from uint8 [N, H, W, 3] or a list of PIL images (resized as needed)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} with shape {images.shape}")
        if images.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE):
            return images
        images = [Image.fromarray(a) for a in images]
    if not all(isinstance(im, Image.Image) for im in images):
        raise ValueError("images must be a uint8 numpy array [N, H, W, 3] or a list of PIL images")
    size = (IMAGE_SIZE, IMAGE_SIZE)
    arrays = [np.asarray(im.convert("RGB").resize(size, Image.Resampling.LANCZOS)) for im in images]
    return np.stack(arrays) if arrays else np.zeros((0, *size, 3), dtype=np.uint8)


class ConceptDetector:
    """A trained `ConceptNet` with per-concept decision thresholds."""

    def __init__(self, model: ConceptNet, meta: dict[str, Any]):
        if tuple(meta["concepts"]) != CONCEPTS:
            raise ValueError("detector was trained on a different concept list than avert.world.CONCEPTS")
        self.model = _fused(model)
        self.meta = meta
        self.concepts: tuple[str, ...] = CONCEPTS
        self.thresholds = np.array([meta["thresholds"][c] for c in CONCEPTS], dtype=np.float32)
        self.pixel_thresholds: dict[str, float] = dict(meta["pixel_thresholds"])

    @classmethod
    def load(cls, path: str | Path | None = None) -> ConceptDetector:
        """From a folder holding the two files, a `.safetensors` path beside its json, or None
        for the detector shipped with avert."""
        weights, meta_path = _paths(path)
        if not weights.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"no detector at {weights} (+ {meta_path.name})")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path}: format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
        model = ConceptNet(widths=tuple(meta["widths"]))
        model.load_state_dict(load_file(str(weights)))
        return cls(model, meta)

    def index(self, concept: str) -> int:
        """Column of a concept in the outputs."""
        return self.concepts.index(concept)

    def probabilities(self, images: ImageInput) -> np.ndarray:
        """float32 [N, len(CONCEPTS)]: the sigmoid of each concept's logit."""
        batch = to_batch(images)
        out = np.empty((len(batch), len(self.concepts)), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(batch), BATCH):
                logits = self.model(torch.from_numpy(np.array(batch[i : i + BATCH])))
                out[i : i + BATCH] = torch.sigmoid(logits).numpy()
        return out

    def predict(self, images: ImageInput) -> np.ndarray:
        """bool [N, len(CONCEPTS)]: probability at or above the concept's threshold."""
        return self.probabilities(images) >= self.thresholds

    def tone_check(self, images: ImageInput) -> dict[str, np.ndarray]:
        """Tone flags from pixel statistics alone (no network), with the shipped thresholds."""
        return pixelstats.tone_flags(to_batch(images), self.pixel_thresholds)
