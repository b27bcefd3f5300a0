"""The procedural world: reproducible data, truthful captions, measurable tone grades."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from avert.world import (
    CONCEPTS,
    OBJECT_KINDS,
    TONES,
    Scene,
    SceneObject,
    WorldDataset,
    caption_with_concepts,
    captions,
    load_npz,
    make_dataset,
    mentioned_concepts,
    render,
    render_pil,
    sample_scene,
    save_npz,
)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(1234)
    return [sample_scene(rng) for _ in range(2000)]


@pytest.fixture(scope="module")
def graded() -> dict[str, np.ndarray]:
    """The same 120 scenes rendered under every tone grade: tone -> uint8 [N, 32, 32, 3]."""
    rng = np.random.default_rng(99)
    base = [sample_scene(rng) for _ in range(120)]
    return {t: np.stack([render(dataclasses.replace(s, tone=t)) for s in base]) for t in TONES}


def test_same_seed_same_dataset() -> None:
    a = make_dataset(24, seed=5, captions_per_image=3)
    b = make_dataset(24, seed=5, captions_per_image=3)
    assert np.array_equal(a.images, b.images)
    assert a.captions == b.captions
    assert np.array_equal(a.concepts, b.concepts)
    assert a.scenes == b.scenes
    c = make_dataset(24, seed=6, captions_per_image=3)
    assert not np.array_equal(a.images, c.images)


def test_dataset_shapes_and_types() -> None:
    ds = make_dataset(10, seed=0, captions_per_image=4)
    assert isinstance(ds, WorldDataset) and len(ds) == 10
    assert ds.images.shape == (10, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.concepts.shape == (10, len(CONCEPTS)) and ds.concepts.dtype == np.bool_
    assert all(len(c) == 4 and all(isinstance(x, str) for x in c) for c in ds.captions)
    for i, s in enumerate(ds.scenes):
        assert {CONCEPTS[j] for j in np.flatnonzero(ds.concepts[i])} == s.concepts()
    with pytest.raises(ValueError):
        ds.images[0, 0, 0, 0] = 1  # read-only


def test_save_and_load_round_trip(tmp_path) -> None:
    ds = make_dataset(12, seed=3, size=16, captions_per_image=2)
    path = tmp_path / "world.npz"
    save_npz(ds, path)
    back = load_npz(path)
    assert np.array_equal(back.images, ds.images)
    assert np.array_equal(back.concepts, ds.concepts)
    assert back.captions == ds.captions
    assert back.scenes == ds.scenes
    assert back.seed == 3


def test_render_output() -> None:
    s = sample_scene(np.random.default_rng(0))
    img = render(s)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render(s))  # deterministic
    assert render(s, size=64).shape == (64, 64, 3)
    pil = render_pil(s)
    assert isinstance(pil, Image.Image) and pil.size == (32, 32) and pil.mode == "RGB"


def test_scene_constraints_are_enforced() -> None:
    s = sample_scene(np.random.default_rng(2))
    boat = SceneObject("boat", 0.5, 0.8, 0.2, (100, 60, 40), (250, 250, 250))
    with pytest.raises(ValueError):
        dataclasses.replace(s, ground="grass", objects=(boat,), sky="day", stars=False)
    with pytest.raises(ValueError):
        dataclasses.replace(s, sky="day", stars=True, objects=())
    with pytest.raises(ValueError):
        SceneObject("house", 0.5, 0.8, 0.2, (200, 40, 40))  # a house needs a colour name


def test_scene_dict_round_trip(scenes) -> None:
    for s in scenes[:50]:
        assert Scene.from_dict(s.to_dict()) == s


def test_sampled_scenes_respect_constraints(scenes) -> None:
    for s in scenes:
        c = s.concepts()
        if "sun" in c:
            assert s.sky in ("day", "sunset")
        if "moon" in c or "stars" in c:
            assert s.sky == "night"
        if "boat" in c:
            assert s.ground == "sea"
        if "flowers" in c:
            assert s.ground == "grass"
        if s.ground == "sea":
            assert not c & {"tree", "house"}


def test_every_concept_is_common_enough(scenes) -> None:
    present = np.array([[name in s.concepts() for name in CONCEPTS] for s in scenes])
    freq = dict(zip(CONCEPTS, present.mean(axis=0)))
    rare = {k: round(float(v), 3) for k, v in freq.items() if v < 0.05}
    assert not rare, rare
    day = [s for s in scenes if s.sky == "day"]
    for name in ("tree", "sun", "house"):
        share = sum(name in s.concepts() for s in day) / len(day)
        assert share >= 0.3, (name, share)
    assert 0.12 <= freq["hand"] <= 0.3
    tones = [s.tone for s in scenes]
    assert 0.4 <= tones.count("none") / len(tones) <= 0.6
    for t in TONES[1:]:
        assert 0.06 <= tones.count(t) / len(tones) <= 0.14, t


def test_captions_name_only_true_concepts(scenes) -> None:
    rng = np.random.default_rng(7)
    n_empty = n_total = 0
    for s in scenes[:1500]:
        truth = s.concepts()
        for _ in range(2):
            text, named = caption_with_concepts(s, rng)
            n_total += 1
            mentioned = mentioned_concepts(text)
            assert mentioned <= truth, (text, sorted(mentioned - truth))
            assert mentioned == named, (text, sorted(mentioned), sorted(named))
            if not text:
                n_empty += 1
            elif s.tone != "none":
                assert s.tone in mentioned, (text, s.tone)
    assert 0.05 <= n_empty / n_total <= 0.15


def test_caption_keywords_spot_checks(scenes) -> None:
    """Independent keyword checks, not relying on `mentioned_concepts`."""
    rng = np.random.default_rng(8)
    for s in scenes[:1500]:
        c = s.concepts()
        for text in captions(s, rng, 2):
            words = text.replace(",", " ").split()
            if "boat" in words or "boats" in words or "sailboat" in words:
                assert "boat" in c, text
            if "sun" in words:
                assert "sun" in c, text
            if "moon" in words:
                assert "moon" in c, text
            if "hand" in words:
                assert "hand" in c, text
            if "sepia" in words:
                assert s.tone == "sepia", text
            if "monochrome" in words or "black and white" in text:
                assert s.tone == "black and white", text
            for tone in ("green", "blue", "warm"):
                if f"{tone} tones" in text or f"{tone} tint" in text:
                    assert s.tone == f"{tone} tones", text
            for colour in ("red", "blue", "yellow", "white"):
                if f"{colour} house" in text or f"{colour} cottage" in text:
                    assert f"{colour} house" in c, text


def test_generic_prompt_covers_common_objects(scenes) -> None:
    rng = np.random.default_rng(9)
    hits = [s for s in scenes for t in captions(s, rng, 3) if t == "a landscape"]
    assert len(hits) > 50
    for name in ("tree", "sun"):
        share = sum(name in s.concepts() for s in hits) / len(hits)
        assert share >= 0.35, (name, share)


def _means(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64).mean(axis=(1, 2))  # [N, 3]


def test_black_and_white_has_no_saturation(graded) -> None:
    bw = graded["black and white"].astype(np.int16)
    assert (bw.max(-1) - bw.min(-1)).max() == 0
    none = graded["none"].astype(np.int16)
    assert (none.max(-1) - none.min(-1)).mean() > 30


def test_sepia_is_brown_and_ordered(graded) -> None:
    sep = graded["sepia"].astype(np.int16)
    assert (sep[..., 0] >= sep[..., 1]).all() and (sep[..., 1] >= sep[..., 2]).all()
    sat = (sep.max(-1) - sep.min(-1)).mean()
    assert 20 < sat < 70


def test_tint_grades_shift_the_colour_clearly(graded) -> None:
    none, green, blue, warm = (_means(graded[t]) for t in ("none", "green tones", "blue tones", "warm tones"))

    def g_excess(m: np.ndarray) -> np.ndarray:
        return m[:, 1] - (m[:, 0] + m[:, 2]) / 2

    def b_excess(m: np.ndarray) -> np.ndarray:
        return m[:, 2] - (m[:, 0] + m[:, 1]) / 2

    def warmth(m: np.ndarray) -> np.ndarray:
        return m[:, 0] - m[:, 2]

    # Every graded image shows the cast, and far more than ungraded images do on average.
    assert (green[:, 1] > green[:, 0] + 15).all() and (green[:, 1] > green[:, 2] + 15).all()
    assert g_excess(green).mean() > g_excess(none).mean() + 40
    assert (b_excess(blue) > 20).all()
    assert b_excess(blue).mean() > b_excess(none).mean() + 25
    assert (warmth(warm) > 30).all()
    assert warmth(warm).mean() > warmth(none).mean() + 80


def test_object_mask_marks_the_objects_and_nothing_else(scenes) -> None:
    from avert.world.render import object_mask

    bare = [s for s in scenes if all(o.kind in ("mountain", "cloud") for o in s.objects) and s.sky == "cloudy"][:4]
    bare += [s for s in scenes if all(o.kind == "mountain" for o in s.objects)][:4]
    assert len(bare) == 8 and not any(object_mask(s).any() for s in bare)
    lone = [s for s in scenes if len(s.objects) == 1 and s.count("tree") == 1][:5]
    assert lone
    for s in lone:
        mask, tree = object_mask(s), s.of_kind("tree")[0]
        rows, cols = np.nonzero(mask)
        assert 0 < mask.mean() < 0.2
        assert abs((cols.mean() + 0.5) / 32 - tree.x) < 0.06  # around the tree, from its top to its shadow
        assert (tree.y - tree.size) * 32 - 4 <= rows.min() and rows.max() <= tree.y * 32 + 3
    sun = [s for s in scenes if s.count("sun") == 1 and len(s.objects) == 1][0]
    mask, disc = object_mask(sun), sun.of_kind("sun")[0]
    rows, cols = np.nonzero(mask)
    assert abs((cols.mean() + 0.5) / 32 - disc.x) < 0.06 and abs((rows.mean() + 0.5) / 32 - disc.y) < 0.06


def test_sample_scenes_are_the_datasets_scenes() -> None:
    from avert.world.dataset import sample_scenes

    assert sample_scenes(12, seed=7) == make_dataset(12, seed=7, captions_per_image=1).scenes


def test_object_mask_of_some_kinds_marks_only_those(scenes) -> None:
    from avert.world.render import object_mask

    both = [s for s in scenes if s.count("tree") and s.count("sun") and s.sky != "cloudy"][:5]
    assert both
    for s in both:
        every, trees, sun = object_mask(s), object_mask(s, kinds={"tree"}), object_mask(s, kinds=["sun"])
        assert trees.any() and sun.any()
        # Each is (up to a few pixels of the downscale where objects meet) part of the mask of every object.
        assert (trees & ~every).sum() <= 0.05 * trees.sum() and (sun & ~every).sum() <= 0.05 * sun.sum()
        assert not np.array_equal(trees, sun)
        assert np.array_equal(object_mask(s, kinds=OBJECT_KINDS), every)
        assert not object_mask(s, kinds=()).any() and not object_mask(s, kinds={"mountain"}).any()
    only_trees = [s for s in scenes if s.objects and all(o.kind == "tree" for o in s.objects)][0]
    assert np.array_equal(object_mask(only_trees, kinds={"tree", "boat"}), object_mask(only_trees))


def test_sample_captions_are_the_datasets_captions_with_what_they_name() -> None:
    from avert.world.dataset import sample_captions, sample_scenes

    data = make_dataset(40, seed=3, captions_per_image=3)
    phrases = sample_captions(sample_scenes(40, seed=3), seed=3, captions_per_image=3)
    assert tuple(tuple(text for text, _ in caps) for caps in phrases) == data.captions
    named = [(text, concepts) for caps in phrases for text, concepts in caps]
    assert any(concepts for _, concepts in named)
    assert all(concepts <= scene.concepts() for scene, caps in zip(data.scenes, phrases) for _, concepts in caps)
    assert all({c for c in concepts if c in OBJECT_KINDS} <= mentioned_concepts(text) for text, concepts in named)
