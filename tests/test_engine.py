"""The engine against diffusers on the same components, and relational properties of the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avert.guidance.denoiser import Denoiser
from avert.pipeline.generate import generate
from avert.request import GenerationRequest
from sampler_reference import reference_scheduler
from tiny_models import beyond_size

BASE = GenerationRequest("a red house", "blue tree", seed=1234, steps=5, cfg_scale=7.5, width=64, height=64)
PARITY_SAMPLERS = ["Euler a", "Euler", "DPM++ 2M Karras", "DDIM", "Heun", "DPM++ SDE Karras", "UniPC", "LMS",
                   "PLMS", "DPM2 a"]


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def diffusers_image(pipe, components, request: GenerationRequest, **overrides):
    """The reference: diffusers' StableDiffusionPipeline on the same components, with the scheduler diffusers
    documents for the A1111 name (`sampler_reference`, not avert's table)."""
    pipe.scheduler = reference_scheduler(request.sampler, components.scheduler_config, request.seed)
    kwargs = dict(negative_prompt=request.negative_prompt or None, num_inference_steps=request.steps,
                  guidance_scale=request.cfg_scale, width=request.width, height=request.height,
                  generator=torch.Generator("cpu").manual_seed(request.seed))
    kwargs.update(overrides)
    prompt = kwargs.pop("prompt", request.prompt)
    return pipe(prompt, **kwargs).images[0]


@pytest.mark.parametrize("sampler", PARITY_SAMPLERS)
@pytest.mark.parametrize("negative", ["blue tree", ""])
def test_image_equals_diffusers_within_one_level(tiny, diffusers_pipe, sampler, negative):
    request = BASE.replace(sampler=sampler, negative_prompt=negative)
    ours = pixels(generate(request, tiny).images[0].image)
    theirs = pixels(diffusers_image(diffusers_pipe, tiny, request))
    assert np.abs(ours - theirs).max() <= 1


def test_v_prediction_model_equals_diffusers(tiny_v_folder):
    from diffusers import StableDiffusionPipeline

    from avert.models.loader import load_model

    components = load_model(tiny_v_folder)
    assert components.scheduler_config["prediction_type"] == "v_prediction"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_v_folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    request = BASE.replace(sampler="DPM++ 2M")
    assert np.abs(pixels(generate(request, components).images[0].image)
                  - pixels(diffusers_image(pipe, components, request))).max() <= 1


def test_negative_changes_the_image(tiny):
    """Guards the parity tests against a model on which the negative does nothing."""
    with_negative = pixels(generate(BASE, tiny).images[0].image)
    without = pixels(generate(BASE.replace(negative_prompt=""), tiny).images[0].image)
    assert np.abs(with_negative - without).max() > 5


def test_string_negative_equals_precomputed_negative_embeddings(tiny, diffusers_pipe):
    from avert.conditioning.text import encode_texts

    encoded = encode_texts(tiny.text_encoder, tiny.tokenizer, [BASE.prompt, BASE.negative_prompt])
    theirs = diffusers_image(diffusers_pipe, tiny, BASE, prompt=None, negative_prompt=None,
                             prompt_embeds=encoded.lookup(BASE.prompt)[None],
                             negative_prompt_embeds=encoded.lookup(BASE.negative_prompt)[None])
    assert np.abs(pixels(generate(BASE, tiny).images[0].image) - pixels(theirs)).max() <= 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE Karras", "DPM++ 2M", "DDIM"])
def test_batch_equals_singles(tiny, sampler):
    request = BASE.replace(sampler=sampler, batch_size=3)
    batch = generate(request, tiny)
    assert batch.seeds == (1234, 1235, 1236)
    for generated in batch.images:
        alone = generate(request.replace(seed=generated.seed, batch_size=1), tiny).images[0]
        assert np.abs(pixels(generated.image) - pixels(alone.image)).max() <= 1


def test_same_seed_same_image_and_other_seed_other_image(tiny):
    a, b = (generate(BASE, tiny).images[0].image for _ in range(2))
    c = generate(BASE.replace(seed=BASE.seed + 7), tiny).images[0].image
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_random_seed_is_drawn_and_reported(tiny):
    result = generate(BASE.replace(seed=-1, batch_size=2), tiny)
    assert 0 <= result.request.seed <= 2**32 - 1
    assert result.seeds == (result.request.seed, (result.request.seed + 1) % 2**32)
    again = generate(BASE.replace(seed=result.seeds[1]), tiny)
    assert np.abs(pixels(again.images[0].image) - pixels(result.images[1].image)).max() <= 1


def test_batched_forward_runs_prompt_and_negative_together(tiny):
    result = generate(BASE, tiny)
    assert result.unet_forwards == BASE.steps  # one forward per step, both branches inside it


def count_forwards(monkeypatch) -> list[int]:
    """Record the batch size of every UNet forward the denoiser makes."""
    sizes: list[int] = []
    original = Denoiser.__call__

    def spy(self, x, t, ctx):
        sizes.append(len(self.guidance.branches(ctx)) * x.shape[0])
        return original(self, x, t, ctx)

    monkeypatch.setattr(Denoiser, "__call__", spy)
    return sizes


def test_cfg_scale_one_skips_the_negative_and_says_so(tiny, monkeypatch):
    sizes = count_forwards(monkeypatch)
    result = generate(BASE.replace(cfg_scale=1.0), tiny)
    assert sizes == [1] * BASE.steps
    assert any("no effect" in w and "negative_prompt" in w for w in result.warnings)
    plain = generate(BASE.replace(cfg_scale=1.0, negative_prompt=""), tiny)
    assert np.array_equal(pixels(result.images[0].image), pixels(plain.images[0].image))
    assert beyond_size(plain.warnings) == []


def test_cfg_scale_below_one_keeps_the_negative_and_warns(tiny, monkeypatch):
    sizes = count_forwards(monkeypatch)
    result = generate(BASE.replace(cfg_scale=0.5), tiny)
    assert sizes == [2] * BASE.steps
    assert any("toward the negative" in w for w in result.warnings)


# A1111's schedule types as diffusers documents them (schedulers overview), written here from that table, not from
# avert's: the reference scheduler for the sampler's name with these options
REFERENCE_SCHEDULES = {"Uniform": {"timestep_spacing": "linspace"}, "Karras": {"use_karras_sigmas": True},
                       "Exponential": {"use_exponential_sigmas": True}, "SGM Uniform": {"timestep_spacing": "trailing"}}


@pytest.mark.parametrize("sampler, schedule", [("Euler", "Karras"), ("Euler", "Exponential"), ("DPM++ 2M", "Uniform"),
                                               ("DDIM", "SGM Uniform"), ("Heun", "Karras"), ("UniPC", "Exponential"),
                                               ("Euler a", "SGM Uniform")])
def test_a_schedule_type_equals_diffusers_with_its_options(tiny, diffusers_pipe, sampler, schedule):
    request = BASE.replace(sampler=sampler, schedule_type=schedule)
    ours = pixels(generate(request, tiny).images[0].image)
    reference = reference_scheduler(sampler, tiny.scheduler_config, request.seed)
    diffusers_pipe.scheduler = type(reference).from_config(reference.config, **REFERENCE_SCHEDULES[schedule])
    theirs = pixels(diffusers_pipe(request.prompt, negative_prompt=request.negative_prompt,
                                   num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                                   width=request.width, height=request.height,
                                   generator=torch.Generator("cpu").manual_seed(request.seed)).images[0])
    assert np.abs(ours - theirs).max() <= 1
    plain = pixels(generate(BASE.replace(sampler=sampler), tiny).images[0].image)
    assert np.abs(ours - plain).max() > 1  # the schedule changed the image


def test_a_schedule_type_is_written_and_read_back_as_a1111_writes_it(tiny):
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    made = generate(BASE.replace(sampler="Euler", schedule_type="Exponential", steps=2), tiny).images[0]
    assert "Sampler: Euler, Schedule type: Exponential, CFG scale" in made.infotext
    assert request_from_a1111(parse_parameters(made.infotext)).schedule_type == "Exponential"
    automatic = generate(BASE.replace(steps=2), tiny).images[0].infotext
    assert "Schedule type" not in automatic
    karras = parse_parameters("a\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, Seed: 1")
    assert (request_from_a1111(karras).sampler, request_from_a1111(karras).schedule_type) == ("DPM++ 2M Karras",
                                                                                              "Automatic")


@pytest.mark.parametrize("sampler", ["LCM", "TCD"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_the_few_step_samplers_equal_diffusers(tiny, diffusers_pipe, sampler, cfg_scale):
    """LCM and TCD (diffusers' schedulers; TCD at its gamma 0.3, which diffusers' pipeline must be given as eta)."""
    request = BASE.replace(sampler=sampler, steps=4, cfg_scale=cfg_scale)
    ours = pixels(generate(request, tiny).images[0].image)
    extra = {"eta": 0.3} if sampler == "TCD" else {}
    theirs = pixels(diffusers_image(diffusers_pipe, tiny, request, **extra))
    assert np.abs(ours - theirs).max() <= 1


def test_the_few_step_samplers_are_held_to_their_schedule():
    from avert.errors import ValidationError
    from avert.validation import validate

    with pytest.raises(ValidationError, match="steps: 51 is not allowed; must be at most 50 with sampler LCM"):
        validate(BASE.replace(sampler="LCM", steps=51))
    with pytest.raises(ValidationError, match="LCM and TCD are text to image only"):
        validate(BASE.replace(sampler="TCD", enable_hr=True))
    with pytest.raises(ValidationError, match="eta: 0.5 is not allowed"):
        validate(BASE.replace(sampler="TCD", eta=0.5))
