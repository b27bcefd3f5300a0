"""The shipped concept detector: it loads, it is accurate on fresh world images, it is
deterministic and strict about its input, and pixel statistics tell tone grades apart."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from avert.detect import ConceptDetector, pixelstats
from avert.detect.train import split_seeds
from avert.world import CONCEPTS, TONES, make_dataset, render, sample_scene

FRESH_SEED = 2027  # not a training, validation or test seed of the shipped detector


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def detector() -> ConceptDetector:
    return ConceptDetector.load()


@pytest.fixture(scope="module")
def fresh():
    return make_dataset(600, FRESH_SEED)


def test_fresh_seed_is_unseen(detector):
    assert FRESH_SEED not in detector.meta["seeds"].values()
    assert detector.meta["seeds"] == split_seeds(0)


def test_shipped_detector_is_small_and_complete(detector):
    assert detector.concepts == CONCEPTS
    assert set(detector.meta["thresholds"]) == set(CONCEPTS)
    assert all(0.0 < t < 1.0 for t in detector.thresholds)
    params = sum(p.numel() for p in detector.model.parameters())
    assert params * 4 < 3_000_000


def test_accuracy_per_concept_on_fresh_world(detector, fresh):
    pred = detector.predict(fresh.images)
    assert pred.shape == (600, len(CONCEPTS)) and pred.dtype == np.bool_
    acc = (pred == fresh.concepts).mean(axis=0)
    low = {c: round(float(a), 3) for c, a in zip(CONCEPTS, acc) if a < 0.95}
    assert not low, f"concepts below 95% accuracy: {low}"


def test_a_broken_detector_fails_the_bar(detector, fresh):
    """The accuracy test is relational: flipped decisions or a blind model miss it."""
    pred = detector.predict(fresh.images)
    assert ((~pred) == fresh.concepts).mean(axis=0).min() < 0.95
    blank = detector.predict(np.zeros_like(fresh.images))
    assert (blank == fresh.concepts).mean(axis=0).min() < 0.95


def test_predictions_are_deterministic(detector, fresh):
    a = detector.probabilities(fresh.images[:64])
    b = ConceptDetector.load().probabilities(fresh.images[:64])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(detector.predict(fresh.images[:64]), detector.predict(fresh.images[:64]))


def test_probabilities_do_not_depend_on_batch_company(detector, fresh):
    alone = detector.probabilities(fresh.images[5:6])
    together = detector.probabilities(fresh.images[:300])[5:6]
    np.testing.assert_allclose(alone, together, atol=1e-5)


def test_pil_and_larger_images_are_resized(detector):
    scene = sample_scene(np.random.default_rng(5))
    small, big = render(scene, 32), render(scene, 128)
    p_small = detector.probabilities(small[None])
    p_big = detector.probabilities(big[None])
    p_pil = detector.probabilities([Image.fromarray(big).convert("RGBA")])
    np.testing.assert_allclose(p_big, p_pil, atol=1e-6)
    assert (detector.predict(big[None]) == detector.predict(small[None])).mean() > 0.9
    assert np.abs(p_big - p_small).mean() < 0.1


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32, 3), np.uint8),
        np.zeros((2, 32, 32), np.uint8),
        np.zeros((2, 32, 32, 4), np.uint8),
        np.zeros((2, 32, 32, 3), np.float32),
    ],
)
def test_wrong_input_raises_naming_the_shape(detector, bad):
    with pytest.raises(ValueError, match=str(bad.shape).replace("(", r"\(").replace(")", r"\)")):
        detector.predict(bad)


def test_not_images_raise(detector):
    with pytest.raises(ValueError):
        detector.predict(["not an image"])


@pytest.fixture(scope="module")
def graded() -> dict[str, np.ndarray]:
    """The same 80 scenes under every tone grade: tone -> uint8 [80, 32, 32, 3]."""
    rng = np.random.default_rng(FRESH_SEED)
    base = [sample_scene(rng) for _ in range(80)]
    return {t: np.stack([render(dataclasses.replace(s, tone=t)) for s in base]) for t in TONES}


def test_pixel_stats_move_with_their_grade(graded):
    plain = graded["none"]
    q = pixelstats.TINT_QUANTILE
    assert (pixelstats.green_excess(graded["green tones"], q) > pixelstats.green_excess(plain, q)).all()
    assert (pixelstats.warm_excess(graded["warm tones"], q) > pixelstats.warm_excess(plain, q)).all()
    assert (pixelstats.blue_excess(graded["blue tones"], q) > pixelstats.blue_excess(plain, q)).all()
    assert (pixelstats.mean_saturation(graded["black and white"]) < 0.01).all()
    assert (pixelstats.sepia_likeness(graded["sepia"]) > pixelstats.sepia_likeness(plain)).all()


@pytest.mark.parametrize("tone", pixelstats.TONE_NAMES)
def test_pixel_flags_separate_graded_from_ungraded(detector, graded, tone):
    on = detector.tone_check(graded[tone])[tone]
    off = np.concatenate([detector.tone_check(graded[t])[tone] for t in TONES if t != tone])
    assert on.mean() >= 0.95, f"{tone}: only {on.mean():.2f} of graded images flagged"
    assert off.mean() <= 0.05, f"{tone}: {off.mean():.2f} of other images flagged"


def test_pixel_stats_reject_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        pixelstats.green_excess(np.zeros((32, 32, 3), np.uint8))
