"""The training set: world images with captions, each distinct caption encoded once by the frozen encoder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from avert.world import make_dataset
from avert.world.attributes import OBJECT_KINDS, TONES
from avert.world.captions import TONE_WORDS
from avert.world.dataset import sample_captions, sample_scenes
from avert.world.render import object_mask


@dataclass(frozen=True)
class TrainingSet:
    """images uint8 [N, H, W, 3]; caption_ids int64 [N, k] into `embeds` [U, tokens, 384] (bf16);
    `empty_id` is the empty caption's row (the unconditional)."""

    images: torch.Tensor
    caption_ids: torch.Tensor
    embeds: torch.Tensor
    empty_id: int

    def __len__(self) -> int:
        return self.images.shape[0]


def build_training_set(n_images: int, seed: int, captions_per_image: int, cache: Path,
                       progress: bool = True) -> TrainingSet:
    """Render the world, caption it and encode every distinct caption (cached on disk by its arguments)."""
    def make() -> dict:
        data = make_dataset(n_images, seed, captions_per_image=captions_per_image)
        row = caption_rows(data.captions)
        ids = torch.tensor([[row[c] for c in caps] for caps in data.captions], dtype=torch.int64)
        return TrainingSet(torch.from_numpy(np.array(data.images)), ids, encode_all(list(row), progress),
                           row[""]).__dict__

    return TrainingSet(**_cached(Path(cache) / f"world-{n_images}-{seed}-{captions_per_image}.pt", make))


def build_object_masks(n_images: int, seed: int, cache: Path, progress: bool = True) -> torch.Tensor:
    """bool [N, H, W]: where each training image's objects are (`object_mask`), cached on disk by its arguments."""
    def make() -> torch.Tensor:
        scenes = sample_scenes(n_images, seed)
        return torch.from_numpy(np.stack([object_mask(s) for s in tqdm(scenes, desc="Object masks",
                                                                      disable=not progress, unit="scene")]))

    return _cached(Path(cache) / f"world-{n_images}-{seed}-objects.pt", make)


def build_named_object_masks(n_images: int, seed: int, captions_per_image: int, cache: Path,
                             progress: bool = True) -> torch.Tensor:
    """bool [N, k, H, W]: for caption j of image i, where the objects that caption names are (`object_mask`
    over `named_kinds`), in the order of `TrainingSet.caption_ids`; cached on disk by its arguments."""
    def make() -> torch.Tensor:
        scenes = sample_scenes(n_images, seed)
        phrases = sample_captions(scenes, seed, captions_per_image)
        return torch.from_numpy(np.stack([
            np.stack([object_mask(scene, kinds=named_kinds(concepts)) for _, concepts in caps])
            for scene, caps in tqdm(zip(scenes, phrases), total=n_images, desc="Named-object masks",
                                    disable=not progress, unit="scene")]))

    return _cached(Path(cache) / f"world-{n_images}-{seed}-{captions_per_image}-named-objects.pt", make)


def build_named_masks_with_tones(n_images: int, seed: int, captions_per_image: int, cache: Path,
                                 progress: bool = True) -> torch.Tensor:
    """bool [N, k, H, W]: `build_named_object_masks`, except that a caption naming a tone grade names the whole
    image (a grade changes every pixel), so its mask is all ones."""
    masks = build_named_object_masks(n_images, seed, captions_per_image, cache, progress)
    phrases = sample_captions(sample_scenes(n_images, seed), seed, captions_per_image)
    toned = torch.tensor([[names_a_tone(concepts) for _, concepts in caps] for caps in phrases])
    return masks | toned[:, :, None, None]


def tone_noise_table(n_images: int, seed: int, captions_per_image: int,
                     bare: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ungraded bool [N]: the images without a tone grade; tone_only int64 [M]: the rows of `TrainingSet.embeds`
    whose caption names a tone grade and nothing else, e.g. "a landscape, green tones"; with `bare`, only those
    that are a tone phrase alone, e.g. "green tones", the form a standing negative takes)."""
    scenes = sample_scenes(n_images, seed)
    phrases = sample_captions(scenes, seed, captions_per_image)
    row = caption_rows([[text for text, _ in caps] for caps in phrases])
    tone_only = sorted({row[text] for caps in phrases for text, concepts in caps
                        if concepts and concepts <= GRADES and (not bare or text in BARE_TONES)})
    return torch.tensor([s.tone == "none" for s in scenes]), torch.tensor(tone_only, dtype=torch.int64)


GRADES = frozenset(TONES) - {"none"}
BARE_TONES = frozenset(w for words in TONE_WORDS.values() for w in words)


def names_a_tone(concepts: frozenset[str]) -> bool:
    """Whether a caption's named concepts include a tone grade ("green tones", "sepia", ...)."""
    return not concepts.isdisjoint(GRADES)


def caption_rows(captions) -> dict[str, int]:
    """Each distinct caption (and the empty one) to its row of `TrainingSet.embeds`: sorted, in that order."""
    return {t: i for i, t in enumerate(sorted({c for caps in captions for c in caps} | {""}))}


def _cached(path: Path, make: Callable[[], Any]) -> Any:
    """What `path` holds (tensors only, loaded without pickle), or `make()`, saved there first."""
    if path.exists():
        return torch.load(path, weights_only=True)
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def named_kinds(concepts: frozenset[str]) -> frozenset[str]:
    """The object kinds among a caption's named concepts ("red house" names a house)."""
    return frozenset(c.split()[-1] for c in concepts if c.split()[-1] in OBJECT_KINDS)


@torch.inference_mode()
def encode_all(texts: list[str], progress: bool, batch: int = 256) -> torch.Tensor:
    """Hidden states of the frozen encoder for each text, as the engine computes them at generation time."""
    from avert.conditioning.text import encode_texts
    from avert.train.model import load_text_encoder

    encoder, tokenizer = load_text_encoder()
    chunks = []
    for start in tqdm(range(0, len(texts), batch), desc="Encoding captions", disable=not progress, unit="batch"):
        part = texts[start : start + batch]
        encoded = encode_texts(encoder, tokenizer, part)
        chunks.append(torch.stack([encoded.lookup(t) for t in part]).to(torch.bfloat16))
    return torch.cat(chunks)
