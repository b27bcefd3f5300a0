"""img2img: against diffusers' StableDiffusionImg2ImgPipeline on the same components, A1111's step rule and resize
modes, and what the init image does to validation, metadata and `--from`."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from avert.errors import ValidationError
from avert.init_image import MAX_INIT_PIXELS, InitImage
from avert.pipeline import img2img
from avert.pipeline.generate import generate
from avert.request import GenerationRequest
from avert.validation import validate
from sampler_reference import reference_scheduler
from test_engine import pixels

STEPS = 8
PICTURE = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
BASE = GenerationRequest("a red house", "blue tree", seed=3, steps=STEPS, cfg_scale=7.5, guidance="cfg",
                         init_image=InitImage.from_pil(PICTURE))


@pytest.fixture(scope="module")
def img2img_pipe(tiny_folder):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_folder, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def embedded():
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    return load_model(EMBEDDED_MODEL)


def diffusers_strength(strength: float, steps: int) -> float:
    """diffusers runs int(steps * s) steps; A1111 (and avert) int(min(d, 0.999) * steps) + 1, from the same end of
    the schedule: so A1111's d is diffusers' s = (int(min(d, 0.999) * steps) + 1) / steps."""
    return (int(min(strength, 0.999) * steps) + 1) / steps


@pytest.mark.parametrize("sampler", ["Euler a", "Euler", "DPM++ 2M Karras", "DDIM", "Heun", "UniPC"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_image_equals_diffusers_img2img_within_one_level(tiny, img2img_pipe, sampler, strength):
    ours = pixels(generate(BASE.replace(sampler=sampler, strength=strength), tiny).images[0].image)
    img2img_pipe.scheduler = reference_scheduler(sampler, tiny.scheduler_config, BASE.seed)
    theirs = img2img_pipe(BASE.prompt, image=PICTURE, strength=diffusers_strength(strength, STEPS),
                          num_inference_steps=STEPS, guidance_scale=BASE.cfg_scale, negative_prompt=BASE.negative_prompt,
                          generator=torch.Generator().manual_seed(BASE.seed)).images[0]
    assert np.abs(ours - pixels(theirs)).max() <= 1


def test_a1111s_step_rule():
    assert [img2img.steps_to_run(20, d) for d in (0.0, 0.3, 0.75, 0.999, 1.0)] == [1, 7, 16, 20, 20]
    assert img2img.steps_to_run(8, 0.5) == 5


def test_the_run_has_a1111s_steps_and_starts_from_the_init_image(tiny):
    events = []
    generate(BASE.replace(strength=0.3, steps=20), tiny, on_step=events.append)
    assert [e.total for e in events[:1]] == [7] and len(events) == 7
    near = pixels(generate(BASE.replace(strength=0.05, negative_prompt=""), tiny).images[0].image)
    far = pixels(generate(BASE.replace(strength=1.0, negative_prompt=""), tiny).images[0].image)
    reference = pixels(generate(BASE.replace(strength=0.05, seed=9, negative_prompt=""), tiny).images[0].image)
    assert np.abs(near - reference).mean() < np.abs(far - reference).mean()  # little strength: the seed hardly matters


def test_strength_orders_the_distance_from_the_init_image_on_the_embedded_model(embedded):
    """On a pixel-space model the init image is the start itself: the more strength, the further the result."""
    source = generate(GenerationRequest("a red house on a hill", seed=5), embedded).images[0].image
    init = InitImage.from_pil(source)
    distance = [np.abs(pixels(generate(GenerationRequest("a landscape with snow", seed=1, init_image=init,
                                                         strength=s), embedded).images[0].image)
                       - pixels(source)).mean() for s in (0.0, 0.1, 0.5, 1.0)]
    assert distance[0] < distance[1] < distance[2] < distance[3]
    assert distance[0] < 4  # strength 0: one step from the lowest noise level (A1111's t_enc + 1)


def test_a_batch_equals_its_images_alone(tiny):
    batch = generate(BASE.replace(batch_size=2, sampler="Euler a"), tiny).images
    alone = generate(BASE.replace(seed=BASE.seed + 1, sampler="Euler a"), tiny).images[0]
    assert np.abs(pixels(batch[1].image) - pixels(alone.image)).max() <= 1


@pytest.mark.parametrize("guidance", ["cfg", "perp-neg", "apg", "dynamic", "posterior", "gated"])
def test_every_guidance_method_and_several_negatives_work_in_img2img(tiny, guidance):
    request = BASE.replace(guidance=guidance, negative_prompt="", strength=0.6,
                           negatives=(BASE.negatives or ()) + tuple(__import__("avert.request", fromlist=["Negative"])
                                                                    .Negative(t) for t in ("blue tree", "a car")))
    with_negatives = pixels(generate(request, tiny).images[0].image)
    without = pixels(generate(request.replace(negatives=()), tiny).images[0].image)
    assert with_negatives.shape == (64, 64, 3) and np.abs(with_negatives - without).max() > 0


def test_width_and_height_default_to_the_init_image_rounded_down_to_8(tiny):
    odd = InitImage.from_pil(PICTURE.resize((45, 30)))
    assert generate(BASE.replace(init_image=odd, steps=2), tiny).images[0].image.size == (40, 24)


def _stripes(width=40, height=20) -> Image.Image:
    """Columns coloured by their x, rows by their y: where a pixel came from can be read off it."""
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8))


def test_resize_modes_as_a1111_defines_them():
    wide = _stripes(40, 20)  # 2:1 into a square
    stretched = np.asarray(img2img.resize(wide, 16, 16, "just resize"), dtype=int)
    cropped = np.asarray(img2img.resize(wide, 16, 16, "crop and resize"), dtype=int)
    filled = np.asarray(img2img.resize(wide, 16, 16, "resize and fill"), dtype=int)
    assert stretched[:, 0, 0].max() < 20 and stretched[:, -1, 0].min() > 235  # the whole width, squeezed
    assert cropped[:, 0, 0].min() > 40 and cropped[:, -1, 0].max() < 215  # the left and right quarters cut off
    assert cropped[0, :, 1].max() < 20 and cropped[-1, :, 1].min() > 235  # the full height kept
    # fitted: the image is 16x8 in the middle, the bands above and below repeat its first and last rows
    assert np.abs(filled[:4] - filled[4]).max() <= 2 and np.abs(filled[12:] - filled[11]).max() <= 2
    assert filled[4, :, 1].max() < 40 and filled[11, :, 1].min() > 215


def test_latent_upscale_encodes_at_the_images_size_and_interpolates(tiny):
    small = InitImage.from_pil(PICTURE.resize((32, 32)))
    result = generate(BASE.replace(init_image=small, width=64, height=64, resize_mode="latent upscale", steps=2), tiny)
    assert result.images[0].image.size == (64, 64)
    assert "Resize mode: latent upscale" in result.images[0].infotext


def test_the_noise_multiplier_scales_the_noise_that_re_draws_the_init_image(tiny):
    """A1111's initial_noise_multiplier: x = latents + m z sigma (Euler's add_noise), the latents untouched."""
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111
    from avert.pipeline.runtime import Runtime
    from avert.sampling.samplers import SAMPLERS

    def start(multiplier):
        scheduler = SAMPLERS["Euler"].build(tiny.scheduler_config, 3)
        scheduler.set_timesteps(STEPS)
        request = BASE.replace(sampler="Euler", width=64, height=64, initial_noise_multiplier=multiplier)
        return img2img.start(request, tiny, Runtime(), [scheduler], [3], (4, 32, 32))

    full, half, none = start(1.0), start(0.5), start(0.0)
    assert torch.equal(full.latents, half.latents) and (full.x - full.latents).abs().max() > 1
    assert torch.allclose(half.x - half.latents, 0.5 * (full.x - full.latents), atol=1e-5)
    assert torch.allclose(none.x, none.latents)
    made = generate(BASE.replace(steps=2, initial_noise_multiplier=0.5), tiny).images[0]
    assert "Noise multiplier: 0.5" in made.infotext
    assert not np.array_equal(pixels(made.image), pixels(generate(BASE.replace(steps=2), tiny).images[0].image))
    assert request_from_a1111(parse_parameters(made.infotext), img2img=True).initial_noise_multiplier == 0.5
    assert "Noise multiplier" not in generate(BASE.replace(steps=2), tiny).images[0].infotext


def test_metadata_says_img2img_and_the_record_names_the_init_image(tiny):
    made = generate(BASE.replace(strength=0.6, steps=2), tiny).images[0]
    assert "Denoising strength: 0.6" in made.infotext
    assert made.record["request"]["init_image"] == BASE.init_image.describe()
    assert made.record["request"]["strength"] == 0.6


@pytest.mark.parametrize("changes, field", [
    ({"init_image": None, "strength": 0.5}, "strength"),
    ({"init_image": None, "resize_mode": "crop and resize"}, "resize_mode"),
    ({"init_image": None, "initial_noise_multiplier": 0.5}, "initial_noise_multiplier"),
    ({"initial_noise_multiplier": 1.6}, "initial_noise_multiplier"),
    ({"initial_noise_multiplier": -0.1}, "initial_noise_multiplier"),
    ({"strength": 1.5}, "strength"),
    ({"resize_mode": "stretch"}, "resize_mode"),
    ({"init_image": "picture.png"}, "init_image"),
])
def test_img2img_fields_are_refused_by_name(changes, field):
    with pytest.raises(ValidationError) as error:
        validate(BASE.replace(**changes))
    assert [p.field for p in error.value.problems] == [field]


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_init_images_are_read_safely():
    assert InitImage.from_bytes(_encoded(PICTURE, "JPEG")).width == 64
    for data in (b"not an image", _encoded(PICTURE, "BMP"), _encoded(PICTURE, "GIF")):
        with pytest.raises(ValidationError, match="must be a PNG, JPEG or WebP"):
            InitImage.from_bytes(data)
    side = int(MAX_INIT_PIXELS ** 0.5) + 1  # a bomb: refused from its header, never decoded
    with pytest.raises(ValidationError, match=f"{side}x{side}"):
        InitImage.from_bytes(_encoded(Image.new("1", (side, side))))
    for value in ("http://example.com/a.png", "", 5, "%%%"):
        with pytest.raises(ValidationError):
            InitImage.from_value(value)
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert InitImage.from_bytes(_encoded(transparent)).to_pil().getpixel((0, 0)) == (255, 255, 255)  # A1111's white


def test_from_remakes_an_img2img_image_given_its_init_image(tmp_path, tiny_folder):
    from avert.cli import main

    source, made, again = tmp_path / "source.png", tmp_path / "made.png", tmp_path / "again.png"
    PICTURE.save(source)
    assert main(["generate", "a car", "--model", str(tiny_folder), "--init-image", str(source), "--strength", "0.5",
                 "--steps", "3", "--seed", "2", "-q", "-o", str(made)]) == 0
    assert main(["generate", "--from", str(made), "--model", str(tiny_folder), "-q", "-o", str(again)]) == 2
    assert main(["generate", "--from", str(made), "--init-image", str(source), "--model", str(tiny_folder), "-q",
                 "-o", str(again)]) == 0
    assert np.array_equal(pixels(Image.open(made)), pixels(Image.open(again)))


def test_a_bad_init_image_or_strength_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    from avert.cli import main

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    for argv, named in ((["--init-image", str(tmp_path / "missing.png")], "--init-image"),
                        (["--init-image", str(text)], "--init-image"),
                        (["--init-image", str(text), "--strength", "1.5"], "--init-image"),
                        (["--strength", "0.5"], "strength"), (["--resize-mode", "stretch"], "resize_mode"),
                        (["--mask", str(tmp_path / "missing.png")], "--mask"),
                        (["--enable-hr", "--strength", "0"], "strength"), (["--mask-blur", "2"], "mask_blur")):
        assert main(["generate", "a car", "-q", "-o", str(tmp_path / "x.png"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"avert: error: invalid request: {named}:"), err
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "img2img", "--strength", "2"])
    assert exit_.value.code == 2 and "strength: '2' is not allowed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "img2img", "--inpaint-strength", "-0.5"])
    assert exit_.value.code == 2 and "inpaint-strength: '-0.5' is not allowed" in capsys.readouterr().err
