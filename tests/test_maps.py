"""Where a negative acted (`avert compare --map`) on the embedded model: a map leaves the image alone, several
negatives get one each, the cross-attention view puts the processors back, and a negative's map falls on its
object (docs/eval/maps.md measures it over more scenes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avert.pipeline.generate import generate
from avert.request import GenerationRequest


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


@pytest.mark.parametrize("guidance", ["cfg", "gated", "apg"])
def test_a_map_does_not_change_the_image(embedded, guidance):
    request = GenerationRequest("a red house on a hill", "house", seed=4, steps=4, guidance=guidance)
    plain = generate(request, embedded)
    mapped = generate(request, embedded, maps=True)
    assert np.array_equal(pixels(plain), pixels(mapped)) and not plain.images[0].maps
    made = mapped.images[0]
    assert [n.negative for n in made.maps] == ["house"] and made.maps[0].values.shape == (32, 32)
    assert made.maps[0].values.min() > 0.0
    assert made.record["negative_maps"][0]["negative"] == "house"
    assert mapped.branch_evaluations == 3 * 4 and plain.branch_evaluations == (3 if guidance == "gated" else 2) * 4


def test_several_negatives_get_a_map_each_and_one_outside_its_window_none(embedded):
    from avert.request import Negative

    request = GenerationRequest("a red house on a hill", seed=4, steps=6, guidance="cfg",
                                negatives=(Negative("house"), Negative("snow", start=0.9, end=1.0)))
    made = generate(request, embedded, maps=True).images[0]
    assert [n.negative for n in made.maps] == ["house", "snow"]
    assert made.maps[0].values.max() > 0.0 and made.maps[1].values.max() == 0.0


@pytest.fixture(scope="module")
def embedded():
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    return load_model(EMBEDDED_MODEL)


@pytest.mark.parametrize("kind", ["boat", "house", "flowers"])
def test_an_objects_map_falls_on_the_object(embedded, kind):
    """img2img from world renders that hold the object (docs/eval/maps.md has the measure over more scenes)."""
    from avert.evaluation.maps import cases, read

    readings = [read(case, embedded, "cfg", seed) for seed, case in enumerate(cases(kind, 4))]
    assert np.mean([r.map_ratio for r in readings]) > 1.15
    unrelated = [read(dataclasses.replace(r.case, kind="snow"), embedded, "cfg", seed)
                 for seed, r in enumerate(readings)]
    assert np.mean([r.map_ratio for r in readings]) > np.mean([u.map_ratio for u in unrelated])


def test_the_cross_attention_view_leaves_the_image_and_puts_the_processors_back(embedded):
    from avert.evaluation.maps import CrossAttention

    request = GenerationRequest("a boat on the sea", "boat", seed=2, steps=4, guidance="cfg")
    before = dict(embedded.unet.attn_processors)
    with CrossAttention(embedded.unet, len(embedded.tokenizer("boat").input_ids), (32, 32)) as attention:
        inside = generate(request, embedded)
    assert all(embedded.unet.attn_processors[k] is p for k, p in before.items())
    assert np.array_equal(pixels(inside), pixels(generate(request, embedded)))
    assert attention.total.shape == (1, 32, 32) and attention.total.min() > 0
    # 4 evaluations x 7 cross-attention layers, each a share of 1 over the tokens: the words' share is below that
    assert attention.total.sum() < 4 * 7 * 32 * 32


@pytest.mark.parametrize("flag, value, message", [
    ("--scenes", "0", "scenes: '0' is not allowed; must be an integer from 1 to 64"),
    ("--threads", "x", "threads: 'x' is not allowed; must be an integer from 1 to 256"),
    ("--kinds", "mountain", "invalid choice: 'mountain'"),
])
def test_the_maps_tool_refuses_bad_options_by_name(flag, value, message):
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).parents[1] / "tools" / "maps.py"
    done = subprocess.run([sys.executable, str(tool), flag, value], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
