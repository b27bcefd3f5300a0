"""A reproducible dataset of rendered scenes, their captions and their ground truth."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avert.world.attributes import CONCEPT_INDEX, CONCEPTS, Scene
from avert.world.captions import Phrase, caption_with_concepts
from avert.world.render import render
from avert.world.sample import sample_scene

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class WorldDataset:
    """`images` uint8 [N, H, W, 3]; `captions[i]` the captions of image i; `concepts` bool
    [N, len(CONCEPTS)], column j true when `CONCEPTS[j]` is in image i; `scenes[i]` the full
    ground truth of image i. The arrays are read-only."""

    images: np.ndarray
    captions: tuple[tuple[str, ...], ...]
    concepts: np.ndarray
    scenes: tuple[Scene, ...]
    seed: int

    def __post_init__(self) -> None:
        n = len(self.scenes)
        if (
            self.images.dtype != np.uint8
            or self.images.ndim != 4
            or self.images.shape[0] != n
            or self.images.shape[3] != 3
        ):
            raise ValueError(f"images must be uint8 [{n}, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if self.concepts.dtype != np.bool_ or self.concepts.shape != (n, len(CONCEPTS)):
            raise ValueError(
                f"concepts must be bool [{n}, {len(CONCEPTS)}], got {self.concepts.dtype} {self.concepts.shape}"
            )
        if len(self.captions) != n:
            raise ValueError(f"{len(self.captions)} caption lists for {n} images")
        for a in (self.images, self.concepts):
            a.setflags(write=False)

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def has(self, concept: str) -> np.ndarray:
        """Bool [N]: which images contain the concept."""
        return self.concepts[:, CONCEPT_INDEX[concept]]

    def frequencies(self) -> dict[str, float]:
        """Share of images containing each concept."""
        means = self.concepts.mean(axis=0) if len(self) else np.zeros(len(CONCEPTS))
        return {name: float(m) for name, m in zip(CONCEPTS, means)}


def concept_matrix(scenes: list[Scene] | tuple[Scene, ...]) -> np.ndarray:
    """Bool [len(scenes), len(CONCEPTS)]."""
    m = np.zeros((len(scenes), len(CONCEPTS)), dtype=bool)
    for i, s in enumerate(scenes):
        for name in s.concepts():
            m[i, CONCEPT_INDEX[name]] = True
    return m


def make_dataset(n: int, seed: int, size: int = 32, captions_per_image: int = 4) -> WorldDataset:
    """`n` random scenes, rendered at `size` with `captions_per_image` captions each.

    The same seed gives identical data. Scenes and captions come from separate random
    streams, so the scenes of a seed do not depend on `size` or `captions_per_image`.
    """
    if n < 0 or captions_per_image < 0:
        raise ValueError("n and captions_per_image must be >= 0")
    scenes = sample_scenes(n, seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, s in enumerate(scenes):
        images[i] = render(s, size)
    caps = tuple(tuple(text for text, _ in phrases) for phrases in sample_captions(scenes, seed, captions_per_image))
    return WorldDataset(images=images, captions=caps, concepts=concept_matrix(scenes), scenes=scenes, seed=seed)


def sample_scenes(n: int, seed: int) -> tuple[Scene, ...]:
    """The scenes of `make_dataset(n, seed)`, without rendering or captions (their random stream is separate)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[0])
    return tuple(sample_scene(rng) for _ in range(n))


def sample_captions(scenes: tuple[Scene, ...], seed: int, captions_per_image: int) -> tuple[tuple[Phrase, ...], ...]:
    """The captions of `make_dataset(len(scenes), seed, captions_per_image=...)`, each with the concepts it names
    (`caption_with_concepts`), without rendering: the caption stream is separate from the scenes'."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    return tuple(tuple(caption_with_concepts(s, rng) for _ in range(captions_per_image)) for s in scenes)


def save_npz(dataset: WorldDataset, path: str | Path) -> None:
    """Write the dataset to one compressed .npz file (no pickled objects)."""
    flat = [c for caps in dataset.captions for c in caps]
    np.savez_compressed(
        path,
        format_version=np.array(FORMAT_VERSION),
        images=dataset.images,
        concepts=dataset.concepts,
        concept_names=np.array(CONCEPTS),
        captions=np.array(flat, dtype=str) if flat else np.zeros(0, dtype="<U1"),
        caption_counts=np.array([len(c) for c in dataset.captions], dtype=np.int64),
        scenes_json=np.array(json.dumps([s.to_dict() for s in dataset.scenes])),
        seed=np.array(dataset.seed, dtype=np.int64),
    )


def load_npz(path: str | Path) -> WorldDataset:
    """Read a dataset written by `save_npz`."""
    with np.load(path, allow_pickle=False) as f:
        if int(f["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {int(f['format_version'])}, expected {FORMAT_VERSION}")
        names = tuple(str(x) for x in f["concept_names"])
        if names != CONCEPTS:
            raise ValueError(f"{path}: saved with a different concept list")
        flat = [str(x) for x in f["captions"]]
        counts = f["caption_counts"].tolist()
        caps, i = [], 0
        for k in counts:
            caps.append(tuple(flat[i : i + k]))
            i += k
        scenes = tuple(Scene.from_dict(d) for d in json.loads(str(f["scenes_json"])))
        return WorldDataset(
            images=np.array(f["images"]),
            captions=tuple(caps),
            concepts=np.array(f["concepts"]),
            scenes=scenes,
            seed=int(f["seed"]),
        )
