"""avert's methods as diffusers guiders (`avert.guiders`): in diffusers' modular SDXL pipeline on tiny components they
make avert's own image, with one negative and with several."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from avert.pipeline.generate import generate
from avert.request import GenerationRequest, Negative

BASE = GenerationRequest("a red house", "blue tree", seed=7, steps=5, cfg_scale=7.0, width=64, height=64,
                         sampler="Euler")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def modular(tiny_sdxl_folder):
    """diffusers' modular SDXL pipeline (its auto blocks) loaded from the tiny folder, with the Euler scheduler."""
    from diffusers import EulerDiscreteScheduler
    from diffusers.modular_pipelines.stable_diffusion_xl import StableDiffusionXLAutoBlocks

    pipe = StableDiffusionXLAutoBlocks().init_pipeline(str(tiny_sdxl_folder))
    pipe.load_components(torch_dtype=torch.float32)
    pipe.update_components(scheduler=EulerDiscreteScheduler.from_config(pipe.scheduler.config))
    return pipe


@pytest.fixture(scope="module")
def encoder(tiny_sdxl_folder):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)


def encoded(encoder, text: str) -> dict:
    """A negative's guider inputs as a user makes them: the prompt embeddings and pooled embedding of its text."""
    embeds, _, pooled, _ = encoder.encode_prompt(text, device="cpu", num_images_per_prompt=1,
                                                 do_classifier_free_guidance=False)
    return {"prompt_embeds": embeds, "text_embeds": pooled}


def modular_image(pipe, encoder, guider, request: GenerationRequest) -> np.ndarray:
    guider.set_negatives([encoded(encoder, n.text) for n in request.all_negatives()])
    pipe.update_components(guider=guider)
    images = pipe(prompt=request.prompt, num_inference_steps=request.steps, height=request.height,
                  width=request.width, generator=torch.Generator().manual_seed(request.seed), output="images")
    return pixels(images[0])


CLASSES = {"gated": "GatedGuidance", "posterior": "PosteriorGuidance", "dynamic": "DynamicGuidance",
           "perp-neg": "PerpNegGuidance"}


@pytest.mark.parametrize("method", list(CLASSES))
@pytest.mark.parametrize("several", [False, True])
def test_each_avert_guider_in_the_modular_sdxl_pipeline_makes_avert_image(modular, encoder, tiny_sdxl, method,
                                                                           several):
    import avert.guiders

    request = BASE.replace(guidance=method)
    config = {}
    if several:
        request = request.replace(negatives=(Negative("green grass", weight=0.6, start=0.2),),
                                  negatives_rule="orthogonal")
        config = {"negative_weights": [1.0, 0.6], "negative_windows": [[0.0, 1.0], [0.2, 1.0]], "rule": "orthogonal"}
    guider = getattr(avert.guiders, CLASSES[method]).from_scheduler(modular.scheduler, guidance_scale=7.0, **config)
    ours = pixels(generate(request, tiny_sdxl).images[0].image)
    theirs = modular_image(modular, encoder, guider, request)
    assert np.abs(ours - theirs).max() <= 1
    if several:  # the second negative counts in both
        alone = pixels(generate(request.replace(negatives=()), tiny_sdxl).images[0].image)
        assert np.abs(ours - alone).max() > 1


def test_a_guider_evaluates_only_the_branches_its_step_needs():
    import avert.guiders

    guider = avert.guiders.PerpNegGuidance(guidance_scale=5.0, negative_windows=[[0.5, 1.0]])
    guider.set_negatives([{"prompt_embeds": torch.zeros(1, 2, 3)}])
    guider.set_state(0, 4, torch.tensor(900))
    assert guider.num_conditions == 2  # the negative outside its window: prompt and empty prompt
    guider.set_state(2, 4, torch.tensor(400))
    data = {"prompt_embeds": (torch.ones(1, 2, 3), torch.full((1, 2, 3), 2.0))}
    batches = guider.prepare_inputs(data)
    ids = [getattr(b, guider._identifier_key) for b in batches]
    assert ids[0] == "pred_cond" and sorted(ids) == ["pred_cond", "pred_negative_0", "pred_uncond"]
    negative = next(b for b in batches if getattr(b, guider._identifier_key) == "pred_negative_0")
    assert torch.equal(negative.prompt_embeds, torch.zeros(1, 2, 3))


def test_the_guider_config_round_trips_and_mismatched_negatives_are_refused_by_name(tmp_path):
    import avert.guiders

    guider = avert.guiders.GatedGuidance(guidance_scale=6.0, negative_weights=[1.0, 0.5], rule="sum")
    guider.save_pretrained(tmp_path)
    again = avert.guiders.GatedGuidance.from_pretrained(tmp_path)
    assert again.config.negative_weights == [1.0, 0.5] and again.config.rule == "sum"
    again.set_negatives([{}])
    again.set_state(0, 4, torch.tensor(900))
    with pytest.raises(ValueError, match="1 negatives set, but 2 negative_weights"):
        again.num_conditions


@pytest.mark.parametrize("arguments,message", [
    ({"rule": "loudest"}, "rule: 'loudest' is not allowed; must be one of: sum"),
    ({"negative_weights": [1.0, "x"]}, "negative_weights: [1.0, 'x'] is not allowed"),
    ({"negative_windows": [[0.5, 0.2]]}, "negative_windows: [[0.5, 0.2]] is not allowed"),
    ({"posterior_prior": 1.0}, "posterior_prior 1.0"),
])
def test_bad_guider_arguments_are_refused_by_name(arguments, message):
    import avert.guiders

    with pytest.raises(ValueError, match=re.escape(message)):
        avert.guiders.PosteriorGuidance(**arguments)


def test_the_diffusers_release_is_the_tested_contract():
    """diffusers marks guiders experimental: a release outside the tested range fails here, loudly."""
    import diffusers
    from packaging.specifiers import SpecifierSet

    import avert.guiders

    assert diffusers.__version__ in SpecifierSet(avert.guiders.CONTRACT)
