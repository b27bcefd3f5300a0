"""Hires fix: A1111's target size, fixed-steps rule and upscalers, the second pass's own prompt, negative and sampler,
its infotext and `--from`, its work, and `/sdapi/v1/txt2img` with `enable_hr`."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from avert.errors import ValidationError
from avert.pipeline import hires
from avert.pipeline.generate import generate, request_work
from avert.request import GenerationRequest
from avert.schema import Limits
from avert.validation import validate
from test_engine import pixels

BASE = GenerationRequest("a red house", "blue tree", seed=3, steps=6, cfg_scale=7.5, guidance="cfg", width=32,
                         height=32, enable_hr=True, strength=0.5, sampler="Euler")


@pytest.mark.parametrize("changes, size", [
    ({}, (64, 64, 64, 64)),
    ({"hr_scale": 1.5, "width": 40}, (56, 48, 56, 48)),  # int(40 x 1.5) = 60 -> the latent grid: 56
    ({"hr_resize_x": 96, "width": 48}, (96, 64, 96, 64)),  # height follows the ratio: 96 x 32 // 48
    ({"hr_resize_y": 48, "width": 64}, (96, 48, 96, 48)),
    ({"hr_resize_x": 64, "hr_resize_y": 32}, (64, 32, 64, 64)),  # cover 64x64, then crop to 64x32
    ({"hr_resize_x": 32, "hr_resize_y": 64, "width": 64}, (32, 64, 128, 64)),
])
def test_the_target_is_a1111s(changes, size):
    t = hires.target(BASE.replace(**changes))
    assert (t.width, t.height, t.cover_width, t.cover_height) == size


def test_the_second_pass_runs_the_last_n_steps_of_a1111s_fixed_steps_schedule():
    assert [hires.schedule_steps(20, d) for d in (0.7, 0.5, 1.0, 0.25)] == [28, 40, 20, 80]
    second = hires.second_request(BASE.replace(hr_second_pass_steps=4), hires.target(BASE))
    assert (second.steps, second.width, second.enable_hr) == (8, 64, False)


def test_the_two_passes_report_one_progress_and_run_steps_plus_n_evaluations(tiny):
    events = []
    made = generate(BASE.replace(hr_second_pass_steps=3), tiny, on_step=events.append)
    assert [e.done for e in events] == list(range(1, 10)) and {e.total for e in events} == {9}
    assert made.unet_forwards == 9 and made.images[0].image.size == (64, 64)


def test_latent_modes_interpolate_and_the_cover_is_cropped_about_the_centre(tiny):
    from avert.pipeline.runtime import Runtime

    latents = torch.arange(2 * 4 * 16 * 16, dtype=torch.float32).reshape(2, 4, 16, 16)
    for mode, (filter_, antialias) in (("Latent", ("bilinear", False)), ("Latent (nearest-exact)", ("nearest-exact", False)),
                                       ("Latent (bicubic antialiased)", ("bicubic", True))):
        request = BASE.replace(hr_upscaler=mode, hr_resize_x=64, hr_resize_y=32)
        big, _ = hires.enlarge(latents, request, hires.target(request, 2), tiny, [1, 2], Runtime(), None)
        expected = F.interpolate(latents, size=(32, 32), mode=filter_, antialias=antialias)[:, :, 8:24]
        assert torch.equal(big, expected)


def test_a_pixel_upscaler_decodes_resizes_and_encodes_with_each_images_fresh_generator(tiny):
    from avert.pipeline.generate import decode
    from avert.pipeline.img2img import encode, to_tensor
    from avert.pipeline.runtime import Runtime

    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    request = BASE.replace(hr_upscaler="Nearest")
    big, generators = hires.enlarge(latents, request, hires.target(request, 2), tiny, [5], Runtime(),
                                    lambda small: decode(small, tiny, Runtime()))
    picture = decode(latents, tiny, Runtime())[0].resize((64, 64), Image.NEAREST)
    assert torch.equal(big, encode(to_tensor(picture), tiny, [torch.Generator().manual_seed(5)], Runtime()))
    assert torch.equal(generators[0].get_state(), _advanced(5, big.shape))


def _advanced(seed: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    torch.randn((1, *shape[1:]), generator=g)  # the VAE's sample
    return g.get_state()


def test_the_second_pass_has_its_own_prompt_negative_and_sampler(tiny):
    plain = pixels(generate(BASE, tiny).images[0].image)
    assert np.array_equal(plain, pixels(generate(BASE.replace(hr_prompt=BASE.prompt, hr_negative_prompt=BASE.negative_prompt),
                                                 tiny).images[0].image))  # the same texts: the same image
    for changes in ({"hr_negative_prompt": "a car"}, {"hr_prompt": "a car"}, {"hr_sampler": "DDIM"}):
        assert np.abs(pixels(generate(BASE.replace(**changes), tiny).images[0].image) - plain).max() > 0, changes


def test_strength_orders_how_far_the_second_pass_moves_from_the_enlarged_first():
    """On the pixel-space embedded model the enlarged first pass is the second's start itself."""
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    embedded = load_model(EMBEDDED_MODEL)
    request = BASE.replace(prompt="a red house on a hill", negative_prompt="", guidance=None)
    first = generate(request.replace(enable_hr=False, strength=0.75), embedded).images[0].image
    first = first.resize((64, 64), Image.NEAREST)
    distance = [np.abs(pixels(generate(request.replace(strength=d, hr_upscaler="Nearest"), embedded).images[0].image)
                       - pixels(first)).mean() for d in (0.05, 0.5, 1.0)]
    assert distance[0] < distance[1] < distance[2] and distance[0] < 8


def test_infotext_says_it_as_a1111_and_from_remakes_the_image(tmp_path, tiny_folder):
    from avert.cli import main
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    made, again = tmp_path / "made.png", tmp_path / "again.png"
    assert main(["generate", "a car", "-n", "blue", "--model", str(tiny_folder), "--enable-hr", "--strength", "0.6",
                 "--hr-scale", "1.5", "--hr-second-pass-steps", "2", "--hr-upscaler", "Lanczos", "--hr-negative-prompt",
                 "red", "-W", "32", "-H", "32", "--steps", "3", "--seed", "4", "-q", "-o", str(made)]) == 0
    text = Image.open(made).info["parameters"]
    for key in ("Size: 32x32", "Denoising strength: 0.6", "Hires upscale: 1.5", "Hires steps: 2",
                "Hires upscaler: Lanczos", "Hires negative prompt: red"):
        assert key in text
    assert main(["generate", "--from", str(made), "--model", str(tiny_folder), "-q", "-o", str(again)]) == 0
    assert np.array_equal(pixels(Image.open(made)), pixels(Image.open(again)))
    read = request_from_a1111(parse_parameters(text))
    assert (read.enable_hr, read.hr_scale, read.hr_second_pass_steps, read.hr_upscaler, read.hr_negative_prompt,
            read.strength) == (True, 1.5, 2, "Lanczos", "red", 0.6)
    resized = request_from_a1111(parse_parameters("a\nSteps: 3, Seed: 1, Size: 32x32, Denoising strength: 0.4, "
                                                  "Hires resize: 64x48, Hires upscaler: Latent (nearest)"))
    assert (resized.hr_resize_x, resized.hr_resize_y, resized.hr_upscaler) == (64, 48, "Latent (nearest)")
    assert not request_from_a1111(parse_parameters("a\nSteps: 3, Seed: 1, Denoising strength: 0.4")).enable_hr


@pytest.mark.parametrize("changes, field", [
    ({"enable_hr": False, "strength": 0.75, "hr_scale": 3.0}, "hr_scale"),
    ({"enable_hr": False, "strength": 0.75, "hr_prompt": "x"}, "hr_prompt"),
    ({"strength": 0.0}, "strength"),
    ({"hr_upscaler": "ESRGAN_4x"}, "hr_upscaler"),
    ({"hr_scale": 4.0, "width": 1024, "height": 1024}, "hr_scale"),
    ({"hr_resize_x": 2048, "hr_resize_y": 16, "height": 64}, "hr_resize_x"),  # covering 2048x16 needs 2048x4096
    ({"hr_sampler": "Euler z"}, "hr_sampler"),
])
def test_hires_fields_are_refused_by_name(changes, field):
    with pytest.raises(ValidationError) as error:
        validate(BASE.replace(**changes), Limits(min_size=8))
    assert [p.field for p in error.value.problems] == [field]


def test_the_work_counts_the_second_pass(tiny):
    one = request_work(BASE.replace(enable_hr=False, strength=0.75), tiny)
    two = request_work(BASE, tiny)
    assert two.extra == pytest.approx(one.megapixel_steps * 4) and "hires pass" in two.describe()


def test_a1111s_enable_hr_renders_the_second_pass(tiny_folder, tiny):
    from avert.server.app import create_app
    from avert.server.config import ServerConfig

    body = {"prompt": "a red house", "negative_prompt": "blue tree", "steps": 6, "cfg_scale": 7.5, "width": 32,
            "height": 32, "seed": 3, "sampler_name": "Euler", "enable_hr": True, "denoising_strength": 0.5,
            "hr_upscaler": None, "hr_sampler_name": "Use same sampler", "hr_checkpoint_name": None,
            "override_settings": {"avert_guidance": "cfg"}}
    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        made = c.post("/sdapi/v1/txt2img", json=body).json()
        assert np.array_equal(pixels(_png(made["images"][0])), pixels(generate(BASE, tiny).images[0].image))
        assert "Hires upscale: 2.0" in json.loads(made["info"])["infotexts"][0]
        karras = c.post("/sdapi/v1/txt2img", json={**body, "hr_scheduler": "Karras", "hr_sampler_name": "DPM++ 2M",
                                                   "steps": 2})
        assert karras.status_code == 200, karras.text
        assert "Hires sampler: DPM++ 2M Karras" in json.loads(karras.json()["info"])["infotexts"][0]
        for field, value in (("hr_upscaler", "R-ESRGAN 4x+"), ("hr_checkpoint_name", "other.safetensors"),
                             ("hr_scheduler", "exponential"), ("denoising_strength", 0)):
            answer = c.post("/sdapi/v1/txt2img", json={**body, field: value})
            assert answer.status_code == 422 and field in {e["field"] for e in answer.json()["errors"]}, answer.text
        legacy = c.post("/sdapi/v1/txt2img", json={**body, "firstphase_width": 16, "firstphase_height": 16,
                                                   "steps": 2}).json()
        assert _png(legacy["images"][0]).size == (32, 32)


def _png(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))
