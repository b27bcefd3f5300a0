"""AUTOMATIC1111's `/sdapi/v1/img2img`: its fields and defaults, over the same job builder as txt2img.

One init image (base64 or a data: URL; never a URL that would be fetched) is repeated over the batch, as A1111
repeats one image; `denoising_strength` (0.75) is avert's `strength` with A1111's step rule; `resize_mode` 0..3
is A1111's (just resize, crop and resize, resize and fill, latent upscale). `include_init_images` false (A1111's
default) leaves `init_images` out of the echoed parameters. Inpainting (`mask`) is refused by name until avert has
it; the mask's own fields are accepted while there is no mask, as A1111 ignores them then.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from avert.errors import FieldProblem, ValidationError
from avert.init_image import InitImage
from avert.schema import RESIZE_MODES
from avert.server import openapi
from avert.server.a1111 import IGNORED, NO_EFFECT, TXT2IMG_DEFAULTS, _empty, _one_of, _OneOf, a1111_job, run_a1111
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
    "mask": (_empty, "must be null: inpainting is not supported yet (img2img of the whole image is)"),
    "latent_mask": (_empty, "must be null: inpainting is not supported yet"),
    "initial_noise_multiplier": (_one_of(None, 1, 1.0), "must be 1 or null: the noise multiplier is not supported"),
}
# accepted whatever their value: the mask's settings without a mask, and image_cfg_scale (instruct-pix2pix only)
IMG2IMG_IGNORED = (*[k for k in IGNORED if k not in TXT2IMG_ONLY], "image_cfg_scale", "mask_blur_x", "mask_blur_y",
                   "mask_blur", "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
                   "inpainting_mask_invert", "include_init_images")


def image_fields(settings: dict) -> dict:
    """The init image, strength and resize mode as avert's request fields (a problem names A1111's field)."""
    images, mode, strength = settings.get("init_images"), settings.get("resize_mode"), settings.get("denoising_strength")
    problems = []
    if not isinstance(images, list) or len(images) != 1:
        problems.append(FieldProblem("init_images", _shown(images), "must be a list of one image as base64 (avert "
                                     "takes one init image, repeated over the batch as A1111 repeats one)"))
    if type(mode) is not int or not 0 <= mode < len(RESIZE_MODES):
        problems.append(FieldProblem("resize_mode", mode, "must be 0 (just resize), 1 (crop and resize), 2 (resize "
                                     "and fill) or 3 (just resize, latent upscale)"))
    if problems:
        raise ValidationError(problems)
    return {"init_image": InitImage.from_value(images[0], "init_images[0]"), "resize_mode": RESIZE_MODES[mode],
            "strength": 0.75 if strength is None else strength}


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
