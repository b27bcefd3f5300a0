"""Tiling (seamless images): circular convolutions for the run, and an image whose edges continue into each other."""

from __future__ import annotations

import numpy as np
import torch

from avert.pipeline import tiling
from avert.pipeline.generate import generate
from avert.request import GenerationRequest
from test_engine import BASE, pixels


def test_the_convolutions_pad_circularly_during_the_run_only(tiny, monkeypatch):
    layers = tiling.convolutions(tiny)
    assert len(layers) > 10 and {layer.padding_mode for layer in layers} == {"zeros"}
    seen = []
    original = tiny.unet.forward

    def spy(*args, **kwargs):
        seen.append({layer.padding_mode for layer in layers})
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny.unet, "forward", spy)
    made = generate(BASE.replace(tiling=True, steps=2), tiny).images[0]
    assert seen and all(modes == {"circular"} for modes in seen)
    assert {layer.padding_mode for layer in layers} == {"zeros"}
    assert "Tiling: True" in made.infotext
    try:
        with tiling.circular(tiny, True):
            raise RuntimeError("a failing run")
    except RuntimeError:
        pass
    assert {layer.padding_mode for layer in layers} == {"zeros"}  # put back after an error too


def _seam(image: np.ndarray) -> float:
    """How much the right edge differs from the left one, against neighbouring columns inside the image."""
    wrap = np.abs(image[:, 0] - image[:, -1]).mean() + np.abs(image[0] - image[-1]).mean()
    inside = np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=0)).mean()
    return wrap / inside


def test_a_tiled_image_continues_across_its_edges_on_the_embedded_model():
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    components = load_model(EMBEDDED_MODEL)
    request = GenerationRequest("a house on a hill", "green tones", seed=0, batch_size=4)
    tiled = [_seam(pixels(g.image)) for g in generate(request.replace(tiling=True), components).images]
    plain = [_seam(pixels(g.image)) for g in generate(request, components).images]
    assert max(tiled) < 1.6 and np.mean(tiled) < np.mean(plain) / 2, (tiled, plain)
    assert torch.nn.Conv2d in {type(m) for m in components.unet.modules()}


def test_an_infotexts_tiling_is_read_back_and_a_word_that_is_no_boolean_is_named():
    import pytest

    from avert.errors import ValidationError
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111
    from avert.validation import validate

    read = request_from_a1111(parse_parameters("a\nSteps: 2, Seed: 1, Size: 64x64, Tiling: True, NGMS all steps: false"))
    assert (read.tiling, read.s_min_uncond_all) == (True, False)
    with pytest.raises(ValidationError) as error:  # not silently False
        validate(request_from_a1111(parse_parameters("a\nSteps: 2, Seed: 1, Size: 64x64, Tiling: maybe")))
    assert [(p.field, p.value) for p in error.value.problems] == [("tiling", "maybe")]
