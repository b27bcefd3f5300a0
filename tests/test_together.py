"""Several requests in one sampling loop (`avert.pipeline.together`): each image is its request rendered alone."""

from __future__ import annotations

import numpy as np
import pytest

from avert import GenerationRequest
from avert.guidance.together import Together
from avert.pipeline.generate import generate
from avert.pipeline.together import generate_together, loop_key, shareable
from avert.request import Negative


def _pixels(result):
    return [np.asarray(i.image, dtype=np.int16) for i in result.images]


REQUESTS = [
    GenerationRequest("a cat", negative_prompt="blurry", seed=1, steps=4, width=64, height=64),
    GenerationRequest("a dog on grass", negatives=(Negative("sun"), Negative("trees", 0.5, 0.2, 0.8)), seed=7,
                      steps=4, width=64, height=64, batch_size=2, guidance="gated"),
    GenerationRequest("a tree", seed=3, steps=4, width=64, height=64, guidance="cfg", cfg_scale=5),
    GenerationRequest("a tree " + "on a hill with a house " * 20, negative_prompt="rain", seed=3, steps=4, width=64,
                      height=64, guidance="apg"),  # two chunks of tokens: a forward of its own
]


def test_each_request_of_a_shared_loop_equals_it_rendered_alone(tiny):
    alone = [generate(r, tiny) for r in REQUESTS]
    together = generate_together(REQUESTS, tiny)
    assert [len(r.images) for r in together] == [1, 2, 1, 1]
    for a, b in zip(alone, together):
        assert a.seeds == b.seeds
        assert [i.infotext for i in a.images] == [i.infotext for i in b.images]
        assert [i.record for i in a.images] == [i.record for i in b.images]
        for x, y in zip(_pixels(a), _pixels(b)):
            assert np.abs(x - y).max() <= 1


def test_a_shared_loop_evaluates_the_unet_once_per_step_for_requests_of_one_token_length(tiny, monkeypatch):
    calls = []
    original = Together.__call__

    def counting(self, x, t, ctx):
        out = original(self, x, t, ctx)
        calls.append(x.shape[0])
        return out

    forwards = []
    unet_forward = tiny.unet.forward
    monkeypatch.setattr(tiny.unet, "forward", lambda *a, **k: forwards.append(a[0].shape[0]) or unet_forward(*a, **k))
    monkeypatch.setattr(Together, "__call__", counting)
    generate_together(REQUESTS[:3], tiny)
    assert calls == [4] * 4  # 1 + 2 + 1 images per step
    # one forward per step, of every request's branches: cfg 2 + gated (prompt, empty, "sun", and "trees" from
    # step 1: its window starts at 0.2) x 2 images + cfg 2
    assert forwards == [2 + 3 * 2 + 2] + [2 + 4 * 2 + 2] * 3


def test_requests_that_cannot_share_a_loop_are_refused(tiny):
    with pytest.raises(ValueError, match="one size, sampler"):
        generate_together([REQUESTS[0], REQUESTS[0].replace(steps=5)], tiny)
    with pytest.raises(ValueError, match="NAG"):
        generate_together([REQUESTS[0].replace(nag_scale=3.0)], tiny)
    assert not shareable(REQUESTS[0].replace(enable_hr=True))
    assert loop_key(REQUESTS[0], tiny) == loop_key(REQUESTS[2], tiny)
    assert loop_key(REQUESTS[0], tiny) != loop_key(REQUESTS[0].replace(sampler="DDIM"), tiny)


def test_sdxl_requests_share_a_loop_with_their_own_pooled_and_size_conditioning(tiny_sdxl):
    requests = [GenerationRequest("a cat", negative_prompt="blurry", seed=2, steps=3, width=64, height=64),
                GenerationRequest("a dog", seed=5, steps=3, width=64, height=64, negative_original_size="32x32",
                                  prompt_2="a painting")]
    alone = [generate(r, tiny_sdxl) for r in requests]
    together = generate_together(requests, tiny_sdxl)
    for a, b in zip(alone, together):
        assert [i.infotext for i in a.images] == [i.infotext for i in b.images]
        for x, y in zip(_pixels(a), _pixels(b)):
            assert np.abs(x - y).max() <= 1


def test_diffusers_guiders_share_a_loop_each_with_its_own_state_and_pag_runs_alone(tiny):
    """Each request keeps its own guider (CFG-Zero*'s zero step, APG-diffusers' momentum) in its denoiser's memory;
    a perturbed branch (pag, seg, slg) acts inside one run's UNet call, so such a request is not shared."""
    requests = [GenerationRequest("a cat", negative_prompt="blurry", seed=1, steps=4, width=64, height=64,
                                  guidance=g, **options)
                for g, options in (("cfg-zero-star", {}), ("tangential", {}), ("magnitude-aware", {}),
                                   ("apg", {"apg_formulation": "diffusers", "apg_momentum": -0.5}))]
    for a, b in zip((generate(r, tiny) for r in requests), generate_together(requests, tiny)):
        assert np.abs(_pixels(a)[0] - _pixels(b)[0]).max() <= 1
    assert not shareable(requests[0].replace(guidance="pag"))
