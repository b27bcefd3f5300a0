"""Inpainting: against diffusers' StableDiffusionInpaintPipeline on tiny 4- and 9-channel components, A1111's mask
steps (read, invert, blur, only-masked crop, fill, latent mask, paste-back), and what a mask does to validation,
metadata, `--from` and single files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from avert.errors import ValidationError
from avert.init_image import InitImage, Mask
from avert.pipeline import inpaint
from avert.pipeline.generate import generate
from avert.request import GenerationRequest
from avert.validation import validate
from sampler_reference import reference_scheduler
from test_engine import pixels
from test_img2img import PICTURE, diffusers_strength

STEPS = 8
HOLE = np.zeros((64, 64), np.uint8)
HOLE[16:40, 8:32] = 255  # on the latent grid of the tiny VAE (factor 2) and of SD's (factor 8)
MASK = Mask.from_pil(Image.fromarray(HOLE))
BASE = GenerationRequest("a red house", "blue tree", seed=3, steps=STEPS, cfg_scale=7.5, guidance="cfg",
                         init_image=InitImage.from_pil(PICTURE), mask=MASK, strength=0.6)
EXACT = dict(mask_blur=0, overlay_inpaint=False)  # where avert and diffusers define the same image


@pytest.fixture(scope="module")
def inpainting_folder(tmp_path_factory):
    from avert.testing.tiny import build_tiny_sd_folder

    return build_tiny_sd_folder(tmp_path_factory.mktemp("tiny-inpainting"), in_channels=9)


@pytest.fixture(scope="module")
def tiny9(inpainting_folder):
    from avert.models.loader import load_model

    return load_model(inpainting_folder)


def diffusers_inpaint(folder, components, request: GenerationRequest) -> np.ndarray:
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = reference_scheduler(request.sampler, components.scheduler_config, request.seed)
    image = pipe(request.prompt, image=PICTURE, mask_image=Image.fromarray(HOLE), height=64, width=64,
                 strength=diffusers_strength(request.strength, STEPS), num_inference_steps=STEPS,
                 guidance_scale=request.cfg_scale, negative_prompt=request.negative_prompt,
                 generator=torch.Generator().manual_seed(request.seed)).images[0]
    return pixels(image)


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM", "DPM++ 2M Karras"])
@pytest.mark.parametrize("channels", [4, 9])
def test_image_equals_diffusers_inpainting_within_one_level(tiny, tiny_folder, tiny9, inpainting_folder, sampler,
                                                              channels):
    components, folder = (tiny, tiny_folder) if channels == 4 else (tiny9, inpainting_folder)
    request = BASE.replace(sampler=sampler, **EXACT)
    ours = pixels(generate(request, components).images[0].image)
    assert np.abs(ours - diffusers_inpaint(folder, components, request)).max() <= 1


@pytest.mark.parametrize("changes", [{}, {"inpaint_full_res": True, "inpaint_full_res_padding": 4},
                                     {"inpainting_fill": "fill"}, {"inpainting_fill": "latent noise"},
                                     {"inpainting_fill": "latent nothing", "mask_blur": 0},
                                     {"inpainting_mask_invert": True, "mask_blur": 0},
                                     {"mask_round": False, "mask_blur": 8}])
def test_every_pixel_outside_the_blurred_mask_comes_back_unchanged(tiny, changes):
    request = BASE.replace(**changes)
    made = pixels(generate(request, tiny).images[0].image)
    blurred = np.asarray(inpaint.read_mask(request.mask, (64, 64), request))
    outside, inside = blurred == 0, blurred > 128
    assert outside.sum() > 500 and inside.sum() > 100
    assert np.abs(made - pixels(PICTURE))[outside].max() == 0
    assert np.abs(made - pixels(PICTURE))[inside].mean() > 20  # and the hole is re-drawn


def test_the_final_latents_are_the_init_latents_outside_the_latent_mask(tiny, monkeypatch):
    from avert.pipeline import generate as engine

    seen = {}
    start, decode = engine.img2img.start, engine.decode

    def recording_start(*args, **kwargs):
        seen["start"] = start(*args, **kwargs)
        return seen["start"]

    def recording_decode(latents, *args):
        seen["final"] = latents
        return decode(latents, *args)

    monkeypatch.setattr(engine.img2img, "start", recording_start)
    monkeypatch.setattr(engine, "decode", recording_decode)
    generate(BASE.replace(**EXACT), tiny)
    keep = torch.from_numpy(HOLE[::2, ::2] == 0)  # the tiny VAE's factor 2
    assert torch.equal(seen["final"][..., keep], seen["start"].latents[..., keep])
    assert (seen["final"][..., ~keep] - seen["start"].latents[..., ~keep]).abs().mean() > 0.1


def test_the_blend_keeps_renoised_init_latents_and_the_last_step_keeps_them_clean(tiny):
    from avert.pipeline.generate import make_schedulers

    from avert.pipeline.runtime import Runtime

    schedulers = make_schedulers(BASE.replace(sampler="Euler"), tiny, [1], Runtime())
    latents, noise = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    blend = inpaint.Blend(mask, latents, noise, schedulers, begin=0)
    x = torch.full((1, 4, 2, 2), 7.0)
    sigma = float(schedulers[0].sigmas[1])
    schedulers[0]._step_index = 1  # after the first step
    middle = blend(0, x)
    assert torch.allclose(middle[0, :, 0, 1], torch.tensor(1 + 2 * sigma)) and torch.equal(middle[0, :, 0, 0], x[0, :, 0, 0])
    last = blend(STEPS - 1, x)
    assert torch.equal(last[0, :, 1, 0], latents[0, :, 1, 0]) and torch.equal(last[0, :, 1, 1], x[0, :, 1, 1])


def test_a_9_channel_unet_gets_the_mask_and_the_masked_images_latents(tiny9):
    from avert.pipeline.runtime import Runtime

    plan = inpaint.plan(BASE.replace(width=64, height=64, mask_blur=0))
    pixels_ = torch.ones(1, 3, 64, 64)
    extra = inpaint.image_conditioning(plan.mask, pixels_, tiny9, [torch.Generator().manual_seed(1)], Runtime(),
                                       (32, 32))
    assert extra.shape == (1, 5, 32, 32)
    assert torch.equal(extra[0, 0], torch.from_numpy(HOLE[::2, ::2] / 255.0).float())
    unmasked = inpaint.image_conditioning(None, None, tiny9, [None, None], Runtime(), (32, 32))
    assert unmasked.shape == (2, 5, 32, 32) and bool((unmasked[:, 0] == 1).all())
    assert tiny9.image_channels == 5 and tiny9.latent_channels == 4


def test_a_9_channel_model_also_renders_text_to_image_and_img2img(tiny9):
    for request in (GenerationRequest("a red house", seed=1, steps=2, width=64, height=64),
                    BASE.replace(mask=None, steps=2)):
        assert generate(request, tiny9).images[0].image.size == (64, 64)


def test_the_blur_is_opencvs_gaussian_with_a1111s_kernel_width():
    kernel = inpaint.gaussian_kernel(4)
    assert len(kernel) == 2 * int(2.5 * 4 + 0.5) + 1 == 21 and np.isclose(kernel.sum(), 1)
    assert np.isclose(kernel[10] / kernel[14], np.exp(16 / 32))  # exp(-x^2 / (2 sigma^2))
    assert inpaint.reflect_101(4, 3).tolist() == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert inpaint.reflect_101(2, 3).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    dot = np.zeros((1, 41), np.uint8)
    dot[0, 20] = 255
    blurred = np.asarray(inpaint.gaussian_blur(Image.fromarray(dot), 4))[0].astype(float)  # one row: the kernel
    assert np.abs(blurred[10:31] - 255 * kernel).max() <= 0.5 + 1e-9 and not blurred[:10].any()
    assert np.array_equal(np.asarray(inpaint.gaussian_blur(Image.fromarray(dot), 0)), dot)


def test_the_blur_takes_its_own_sigma_vertically_as_a1111s_mask_blur_y():
    dot = np.zeros((41, 41), np.uint8)
    dot[20, 20] = 255
    image = Image.fromarray(dot)
    both = np.asarray(inpaint.gaussian_blur(image, 4))
    assert np.array_equal(np.asarray(inpaint.gaussian_blur(image, 4, 4)), both)
    across = np.asarray(inpaint.gaussian_blur(image, 4, 0)).astype(float)  # horizontal only: one row, the kernel
    assert not across[:20].any() and not across[21:].any()
    assert np.abs(across[20, 10:31] - 255 * inpaint.gaussian_kernel(4)).max() <= 0.5 + 1e-9
    down = np.asarray(inpaint.gaussian_blur(image, 0, 2)).astype(float)  # vertical only: one column, 11 taps
    assert not down[:, :20].any() and not down[:, 21:].any() and down[15:26, 20].all() and not down[:15, 20].any()
    tall = np.asarray(inpaint.gaussian_blur(image, 1, 3))
    assert np.flatnonzero(tall[20]).size < np.flatnonzero(tall[:, 20]).size  # wider vertically, as asked


def test_mask_blur_y_is_written_read_back_and_applies_only_with_a_mask(tiny):
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    made = generate(BASE.replace(steps=2, mask_blur=2, mask_blur_y=6), tiny).images[0]
    assert "Mask blur: 2" in made.infotext and "Mask blur y: 6" in made.infotext
    read = request_from_a1111(parse_parameters(made.infotext), img2img=True, inpainting=True)
    assert (read.mask_blur, read.mask_blur_y) == (2, 6)
    same = generate(BASE.replace(steps=2, mask_blur=2, mask_blur_y=2), tiny).images[0]
    assert "Mask blur y" not in same.infotext
    assert np.array_equal(pixels(same.image), pixels(generate(BASE.replace(steps=2, mask_blur=2), tiny).images[0].image))
    assert not np.array_equal(pixels(same.image), pixels(made.image))
    for changes, field in (({"mask": None, "mask_blur_y": 3}, "mask_blur_y"), ({"mask_blur_y": 65}, "mask_blur_y"),
                           ({"mask_blur_y": 2.5}, "mask_blur_y")):
        with pytest.raises(ValidationError) as error:
            validate(BASE.replace(**changes))
        assert [p.field for p in error.value.problems] == [field]


def test_the_only_masked_box_is_grown_by_the_padding_then_to_the_ratio_inside_the_image():
    mask = Image.new("L", (100, 60))
    mask.paste(255, (40, 20, 50, 30))
    assert inpaint.crop_region(mask, 5) == (35, 15, 55, 35)
    assert inpaint.crop_region(mask, 50) == (0, 0, 100, 60)
    assert inpaint.crop_region(Image.new("L", (8, 8)), 4) is None
    assert inpaint.expand_to_ratio((35, 15, 55, 35), 64, 32, (100, 60)) == (25, 15, 65, 35)  # 20x20 -> 40x20
    assert inpaint.expand_to_ratio((0, 10, 10, 20), 64, 32, (100, 60)) == (0, 10, 20, 20)  # shifted inside
    assert inpaint.expand_to_ratio((90, 0, 100, 60), 64, 32, (100, 60)) == (0, 0, 100, 60)  # clamped


def test_only_masked_renders_the_box_at_width_x_height_and_pastes_it_back(tiny):
    wide = InitImage.from_pil(PICTURE.resize((96, 64)))
    hole = np.zeros((64, 96), np.uint8)
    hole[24:32, 40:48] = 255
    request = BASE.replace(init_image=wide, mask=Mask.from_pil(Image.fromarray(hole)), width=32, height=32,
                           inpaint_full_res=True, inpaint_full_res_padding=4, mask_blur=0)
    plan = inpaint.plan(request)
    assert plan.paste_to == (36, 20, 16, 16) and plan.image.size == (32, 32)
    made = generate(request, tiny).images[0]
    assert made.image.size == (96, 64)  # A1111: the result is the init image with the box pasted in
    assert "Inpaint area: Only masked" in made.infotext and "Masked area padding: 4" in made.infotext
    outside = hole == 0
    assert np.abs(pixels(made.image) - pixels(wide.to_pil()))[outside].max() == 0
    empty = request.replace(mask=Mask.from_pil(Image.new("L", (96, 64))))
    assert inpaint.plan(empty) is None  # an empty mask: img2img of the whole image, as A1111
    assert generate(empty, tiny).images[0].image.size == (32, 32)


def test_fill_paints_the_hole_with_its_surroundings():
    image = Image.new("RGB", (64, 64), (200, 0, 0))
    image.paste((0, 0, 200), (32, 0, 64, 64))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (24, 0, 40, 64))
    filled = np.asarray(inpaint.fill(image, mask), dtype=int)
    assert np.array_equal(filled[:, :24], np.asarray(image)[:, :24])  # unmasked pixels are kept
    assert filled[32, 25, 0] > filled[32, 25, 2] and filled[32, 38, 2] > filled[32, 38, 0]  # the nearer side wins
    assert filled[32, 33, 0] > 0  # red spreads past where the image was blue


def test_a_mask_from_transparency_is_binarized_and_grey_levels_are_not():
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(0, 0, 0, 0), (0, 0, 0, 100), (0, 0, 0, 200), (0, 0, 0, 255)])
    from_alpha = Mask.from_pil(rgba)
    assert from_alpha.from_alpha and from_alpha.pixels == bytes([0, 100, 200, 255])
    request = BASE.replace(mask_blur=0)
    assert list(inpaint.read_mask(from_alpha, (4, 1), request).getdata()) == [0, 0, 255, 255]
    assert list(inpaint.read_mask(from_alpha, (4, 1), request.replace(mask_round=False)).getdata()) == [0, 100, 200, 255]
    grey = Mask.from_pil(Image.fromarray(np.array([[0, 100, 200, 255]], np.uint8)))
    assert not grey.from_alpha and list(inpaint.read_mask(grey, (4, 1), request).getdata()) == [0, 100, 200, 255]
    opaque = Mask.from_pil(Image.new("RGBA", (2, 2), (255, 255, 255, 255)))
    assert not opaque.from_alpha and opaque.pixels == bytes([255] * 4)  # all opaque: its colours count
    inverted = inpaint.read_mask(grey, (4, 1), request.replace(inpainting_mask_invert=True))
    assert list(inverted.getdata()) == [255, 155, 55, 0]


def test_the_latent_mask_is_the_processed_mask_at_the_latent_grid_rounded_with_mask_round():
    plan = inpaint.plan(BASE.replace(width=64, height=64, mask_blur=6))
    rounded, soft = plan.latent_mask((8, 8)), inpaint.plan(BASE.replace(width=64, height=64, mask_blur=6,
                                                                        mask_round=False)).latent_mask((8, 8))
    assert set(rounded.unique().tolist()) == {0.0, 1.0}
    assert 0 < soft.min() or ((soft > 0) & (soft < 1)).any()
    assert torch.equal(rounded, torch.round(soft))


def test_whole_picture_paste_back_doubles_the_mask():
    request = BASE.replace(width=64, height=64, mask_blur=4)
    plan = inpaint.plan(request)
    alpha = np.asarray(plan.overlay.getchannel("A"), dtype=int)
    blurred = np.asarray(inpaint.read_mask(request.mask, (64, 64), request), dtype=int)
    assert np.array_equal(alpha, 255 - np.clip(blurred * 2, 0, 255))


@pytest.mark.parametrize("changes, field", [
    ({"init_image": None, "strength": 0.75}, "mask"),
    ({"mask": None, "mask_blur": 8}, "mask_blur"),
    ({"mask": None, "inpainting_fill": "fill"}, "inpainting_fill"),
    ({"mask": None, "overlay_inpaint": False}, "overlay_inpaint"),
    ({"resize_mode": "latent upscale"}, "resize_mode"),
    ({"inpainting_fill": "noise"}, "inpainting_fill"),
    ({"mask_blur": 65}, "mask_blur"),
    ({"mask": "mask.png"}, "mask"),
])
def test_inpainting_fields_are_refused_by_name(changes, field):
    with pytest.raises(ValidationError) as error:
        validate(BASE.replace(**changes))
    assert [p.field for p in error.value.problems] == [field]


def test_metadata_names_the_mask_and_a1111s_keys(tiny):
    made = generate(BASE.replace(steps=2, inpainting_fill="latent noise", inpainting_mask_invert=True,
                                 overlay_inpaint=False), tiny).images[0]
    for text in ("Mask blur: 4", "Masked content: latent noise", "Mask mode: Inpaint not masked",
                 "Overlay inpaint: False", "Denoising strength: 0.6"):
        assert text in made.infotext
    assert "Inpaint area" not in made.infotext and "Mask round" not in made.infotext
    assert made.record["request"]["mask"] == MASK.describe()


def test_from_remakes_an_inpainted_image_given_its_images_and_reads_a1111s_keys(tmp_path, tiny_folder):
    from avert.cli import main
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    source, hole, made, again = (tmp_path / n for n in ("source.png", "hole.png", "made.png", "again.png"))
    PICTURE.save(source)
    Image.fromarray(HOLE).save(hole)
    common = ["--model", str(tiny_folder), "-q"]
    assert main(["generate", "a car", *common, "--init-image", str(source), "--mask", str(hole), "--mask-blur", "2",
                 "--inpainting-fill", "fill", "--inpaint-full-res", "--steps", "3", "--seed", "2", "-o",
                 str(made)]) == 0
    assert main(["generate", "--from", str(made), *common, "--init-image", str(source), "-o", str(again)]) == 2
    assert main(["generate", "--from", str(made), *common, "--init-image", str(source), "--mask", str(hole), "-o",
                 str(again)]) == 0
    assert np.array_equal(pixels(Image.open(made)), pixels(Image.open(again)))
    text = ("a car\nNegative prompt: hands\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 2, Size: 64x64, Denoising "
            "strength: 0.4, Mask blur: 2, Inpaint area: Only masked, Masked area padding: 8, Masked content: latent "
            "nothing, Mask mode: Inpaint not masked")
    read = request_from_a1111(parse_parameters(text), img2img=True, inpainting=True)
    assert (read.strength, read.mask_blur, read.inpaint_full_res, read.inpaint_full_res_padding, read.inpainting_fill,
            read.inpainting_mask_invert) == (0.4, 2, True, 8, "latent nothing", True)
    plain = request_from_a1111(parse_parameters(text))
    assert plain.strength == GenerationRequest().strength and plain.mask_blur == GenerationRequest().mask_blur


def test_an_inpainting_single_file_loads_with_a_9_channel_unet(tmp_path, tiny_folder, inpainting_folder, tiny9):
    from avert.models.single_file import detect_family, load_single_file
    from tiny_models import write_tiny_single_file

    path = write_tiny_single_file(inpainting_folder, tmp_path / "tiny-inpainting.safetensors")
    pipe = load_single_file(path, config_dir=tiny_folder)  # a 4-channel config: in_channels follows the file
    assert pipe.unet.config.in_channels == 9
    for key, value in tiny9.unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[key], value), key
    assert detect_family(["model.diffusion_model.input_blocks.0.0.weight",
                          "cond_stage_model.transformer.text_model.x"],
                         {"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}) == "sd15"


def test_a1111s_info_says_when_the_model_is_an_inpainting_model(tiny_folder, inpainting_folder):
    import base64
    import io
    import json

    from fastapi.testclient import TestClient

    from avert.server.app import create_app
    from avert.server.config import ServerConfig

    buffer = io.BytesIO()
    PICTURE.save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    buffer = io.BytesIO()
    Image.fromarray(HOLE).save(buffer, "PNG")
    body = {"init_images": [image], "mask": base64.b64encode(buffer.getvalue()).decode(), "prompt": "a car",
            "steps": 2, "width": 64, "height": 64}
    for folder, inpainting in ((inpainting_folder, True), (tiny_folder, False)):
        with TestClient(create_app(ServerConfig(model=str(folder))), base_url="http://127.0.0.1") as c:
            answer = c.post("/sdapi/v1/img2img", json=body)
            assert answer.status_code == 200, answer.text
            assert json.loads(answer.json()["info"])["is_using_inpainting_conditioning"] is inpainting
