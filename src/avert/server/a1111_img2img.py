"""AUTOMATIC1111's `/sdapi/v1/img2img`: its fields and defaults, over the same job builder as txt2img.

One init image (base64 or a data: URL; never a URL that would be fetched) is repeated over the batch, as A1111
repeats one image; `denoising_strength` (0.75) is avert's `strength` with A1111's step rule; `resize_mode` 0..3
is A1111's (just resize, crop and resize, resize and fill, latent upscale). `include_init_images` false (A1111's
default) leaves `init_images` and `mask` out of the echoed parameters.

Inpainting (`mask`, `avert.pipeline.inpaint`) takes A1111's fields: `mask_blur` (or `mask_blur_x` and `mask_blur_y`:
avert's mask_blur and mask_blur_y), `mask_round`, `inpainting_fill` 0..3 (fill, original, latent
noise, latent nothing), `inpaint_full_res` (A1111's API default: true, only the masked area), its padding, and
`inpainting_mask_invert` 0 or 1; the option `overlay_inpaint` (default true) pastes the init image back. Without a
mask these fields are accepted and do nothing, as in A1111. `latent_mask` (never read by A1111) must be null.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from avert.errors import FieldProblem, ValidationError
from avert.init_image import InitImage, Mask
from avert.schema import INPAINTING_FILLS, RESIZE_MODES
from avert.server import openapi
from avert.server.a1111 import (IGNORED, INIT_IMAGES, NO_EFFECT, TXT2IMG_DEFAULTS, _empty, _OneOf, a1111_job,
                                run_a1111)
from avert.server.jobs import Job
from avert.server.state import ServerState

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])

TXT2IMG_ONLY = ("enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
                "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                "hr_negative_prompt")
# StableDiffusionImg2ImgProcessingAPI's fields and defaults (A1111 1.10).
IMG2IMG_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in TXT2IMG_DEFAULTS.items() if k not in TXT2IMG_ONLY}, "denoising_strength": 0.75,
    "init_images": None, "resize_mode": 0, "image_cfg_scale": None, "mask": None, "mask_blur_x": 4,
    "mask_blur_y": 4, "mask_blur": None, "mask_round": True, "inpainting_fill": 0, "inpaint_full_res": True,
    "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0, "initial_noise_multiplier": None,
    "latent_mask": None, "include_init_images": False,
}
IMG2IMG_NO_EFFECT = {
    **{k: rule for k, rule in NO_EFFECT.items() if k not in TXT2IMG_ONLY},
    "latent_mask": (_empty, "must be null: A1111 never reads it; the mask is `mask`"),
}
# accepted whatever their value: image_cfg_scale (instruct-pix2pix only); the mask's settings are read with a mask
# and, as in A1111, ignored without one
IMG2IMG_IGNORED = (*[k for k in IGNORED if k not in TXT2IMG_ONLY], "image_cfg_scale", "include_init_images")
FILLS = ", ".join(f"{i} ({name})" for i, name in enumerate(INPAINTING_FILLS))


def image_fields(settings: dict) -> dict:
    """The init image(s), strength, resize mode and mask as avert's request fields (a problem names A1111's field).
    k init images make a batch of k, image i drawn from init image i (A1111: k must not exceed batch_size); they
    are returned under `INIT_IMAGES`, for the job to give each image its own."""
    images, mode, strength = settings.get("init_images"), settings.get("resize_mode"), settings.get("denoising_strength")
    problems = []
    batch = settings.get("batch_size")
    if not isinstance(images, list) or not images:
        problems.append(FieldProblem("init_images", _shown(images), "must be a list of images as base64"))
    elif len(images) > 1 and type(batch) is int and len(images) > batch:
        problems.append(FieldProblem("init_images", _shown(images), f"must be at most batch_size ({batch}) images, "
                                     "one for each image of the batch (A1111 fails on more)"))
    if type(mode) is not int or not 0 <= mode < len(RESIZE_MODES):
        problems.append(FieldProblem("resize_mode", mode, "must be 0 (just resize), 1 (crop and resize), 2 (resize "
                                     "and fill) or 3 (just resize, latent upscale)"))
    mask = settings.get("mask")
    if mask is not None:
        inpainting = mask_fields(settings, problems)
    if problems:
        raise ValidationError(problems)
    inits = [InitImage.from_value(image, f"init_images[{i}]") for i, image in enumerate(images)]
    fields = {"init_image": inits[0], "resize_mode": RESIZE_MODES[mode],
              "strength": 0.75 if strength is None else strength}
    if settings.get("initial_noise_multiplier") is not None:  # null: the option (override_settings, /options)
        fields["initial_noise_multiplier"] = settings["initial_noise_multiplier"]
    if len(inits) > 1:
        fields.update({"batch_size": len(inits), INIT_IMAGES: inits})
    if mask is not None:
        fields.update(inpainting, mask=Mask.from_value(mask, "mask"))
    return fields


def mask_fields(settings: dict, problems: list[FieldProblem]) -> dict:
    """A1111's inpainting fields as avert's request fields (problems name A1111's fields)."""
    blur = settings.get("mask_blur")  # sets both when given (A1111's property)
    given = {"mask_blur": blur} if blur is not None else {k: settings.get(k) for k in ("mask_blur_x", "mask_blur_y")}
    problems += [FieldProblem(name, value, "must be an integer from 0 to 64") for name, value in given.items()
                 if type(value) is not int or not 0 <= value <= 64]
    blur_x, blur_y = (blur, blur) if blur is not None else tuple(given.values())
    fill, invert = settings.get("inpainting_fill"), settings.get("inpainting_mask_invert")
    if type(fill) is not int or not 0 <= fill < len(INPAINTING_FILLS):
        problems.append(FieldProblem("inpainting_fill", fill, f"must be {FILLS}"))
    if invert not in (0, 1) or type(invert) not in (int, bool):
        problems.append(FieldProblem("inpainting_mask_invert", invert, "must be 0 (inpaint masked) or 1 (inpaint "
                                     "not masked)"))
    fields = {"mask_blur": blur_x, "mask_blur_y": None if blur_y == blur_x else blur_y,
              "mask_round": settings.get("mask_round"),
              "inpaint_full_res": settings.get("inpaint_full_res"),
              "inpaint_full_res_padding": settings.get("inpaint_full_res_padding")}
    if not problems:
        fields.update(inpainting_fill=INPAINTING_FILLS[fill], inpainting_mask_invert=bool(invert))
    return fields


def img2img_job(state: ServerState, body: dict, client: str | None = None) -> Job:
    """Check an A1111 img2img body and build its job."""
    return a1111_job(state, body, client, IMG2IMG_DEFAULTS, IMG2IMG_NO_EFFECT, "img2img", image_fields)


def _shown(value: Any) -> Any:
    return f"a list of {len(value)}" if isinstance(value, list) else value


def _echo(parameters: dict) -> dict:
    """A1111 echoes init_images and mask only with include_init_images."""
    return parameters if parameters.get("include_init_images") is True else {**parameters, "init_images": None,
                                                                             "mask": None}


@router.post("/img2img", summary="Image to image (A1111 fields, defaults and response)",
             openapi_extra=openapi.txt2img_body(IMG2IMG_DEFAULTS, {k: rule[0].schema() for k, rule in
                                                                   IMG2IMG_NO_EFFECT.items() if isinstance(rule[0], _OneOf)},
                                                IMG2IMG_IGNORED, kind="img2img"))
async def img2img(request: Request) -> JSONResponse:
    return await run_a1111(request, img2img_job, IMG2IMG_DEFAULTS, "img2img", _echo)
