"""A1111's complete request payloads against a real `avert serve` (uvicorn on loopback): every field of its txt2img
and img2img request models at A1111 1.10's API defaults, and the payloads and variations of A1111's own API tests
(its repository's tests/test_txt2img.py and tests/test_img2img.py). Each is answered 200, or 422 naming the
feature avert does not ship; never a 5xx, never a silent success for a feature it does not have.

The payloads are written here from A1111's code and tests (../shared/reference/a1111-api.md), not from avert's
tables (`TXT2IMG_DEFAULTS`), so a field missing from avert's table shows as a failure here."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from avert.server.app import create_app
from avert.server.config import ServerConfig
from serving import running_server

# StableDiffusionTxt2ImgProcessingAPI: every field at its API default (A1111 1.10)
TXT2IMG_MODEL = {
    "prompt": "", "negative_prompt": "", "styles": None, "seed": -1, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": None, "scheduler": None, "batch_size": 1,
    "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512, "restore_faces": None, "tiling": None,
    "do_not_save_samples": False, "do_not_save_grid": False, "eta": None, "denoising_strength": None,
    "s_min_uncond": None, "s_churn": None, "s_tmax": None, "s_tmin": None, "s_noise": None, "override_settings": None,
    "override_settings_restore_afterwards": True, "refiner_checkpoint": None, "refiner_switch_at": None,
    "disable_extra_networks": False, "firstpass_image": None, "comments": None, "enable_hr": False,
    "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2.0, "hr_upscaler": None, "hr_second_pass_steps": 0,
    "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None,
    "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": None, "sampler_index": "Euler", "script_name": None,
    "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {}, "infotext": None,
}
HIRES = ("enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
         "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
         "hr_negative_prompt")
# StableDiffusionImg2ImgProcessingAPI: the shared fields, and img2img's own
IMG2IMG_MODEL = {
    **{k: v for k, v in TXT2IMG_MODEL.items() if k not in HIRES}, "denoising_strength": 0.75, "init_images": None,
    "resize_mode": 0, "image_cfg_scale": None, "mask": None, "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None,
    "mask_round": True, "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0, "initial_noise_multiplier": None, "latent_mask": None, "include_init_images": False,
}
# A1111's tests/test_txt2img.py `simple_txt2img_request`
SIMPLE_TXT2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0, "firstphase_height": 0,
    "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "", "prompt": "example prompt",
    "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}


def _png(seed: int = 0, size: int = 64) -> str:
    image = Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# A1111's tests/test_img2img.py `simple_img2img_request`
SIMPLE_IMG2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64, "include_init_images": False,
    "init_images": [_png()], "inpaint_full_res": False, "inpaint_full_res_padding": 0, "inpainting_fill": 0,
    "inpainting_mask_invert": False, "mask": None, "mask_blur": 4, "n_iter": 1, "negative_prompt": "",
    "override_settings": {}, "prompt": "example prompt", "resize_mode": 0, "restore_faces": False, "s_churn": 0,
    "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1,
    "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False,
    "width": 64,
}
COMPLEX_PROMPT = "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"

SMALL = {"prompt": "a car", "width": 64, "height": 64, "steps": 3}  # the tiny test model is slow at 512x512
PAYLOADS = [  # (label, endpoint, body, status, field a 422 names)
    ("txt2img: every field at A1111's default but size and steps", "txt2img", {**TXT2IMG_MODEL, **SMALL}, 200, None),
    ("img2img: every field at A1111's default but size and steps", "img2img", {**IMG2IMG_MODEL, **SMALL,
                                                                               "init_images": [_png(1, 96)]}, 200, None),
    ("txt2img: A1111's simple request", "txt2img", SIMPLE_TXT2IMG, 200, None),
    ("txt2img: negative prompt", "txt2img", {**SIMPLE_TXT2IMG, "negative_prompt": "example negative prompt"}, 200,
     None),
    ("txt2img: complex prompt", "txt2img", {**SIMPLE_TXT2IMG, "prompt": COMPLEX_PROMPT}, 200, None),
    ("txt2img: batch", "txt2img", {**SIMPLE_TXT2IMG, "n_iter": 2, "batch_size": 2}, 200, None),
    ("txt2img: a null seed (random, as A1111)", "txt2img", {**SIMPLE_TXT2IMG, "seed": None}, 200, None),
    *[(f"txt2img: sampler {s}", "txt2img", {**SIMPLE_TXT2IMG, "sampler_index": s}, 200, None)
      for s in ("PLMS", "DDIM", "UniPC", "DPM++ 2M", "DPM2 a")],
    # A1111 runs its SDE samplers at the eta given (A1111's simple payload has eta 0), and so does avert
    *[(f"txt2img: sampler {s} at eta 0", "txt2img", {**SIMPLE_TXT2IMG, "sampler_index": s}, 200, None)
      for s in ("DPM++ 2M SDE", "DPM++ SDE Karras")],
    ("txt2img: restore faces", "txt2img", {**SIMPLE_TXT2IMG, "restore_faces": True}, 422, "restore_faces"),
    ("txt2img: avert's NAG at cfg 1 (extra fields)", "txt2img", {**SIMPLE_TXT2IMG, "negative_prompt": "blue",
                                                                  "cfg_scale": 1, "nag_scale": 3, "nag_end": 0.8},
     200, None),
    ("txt2img: hires fix", "txt2img", {**SIMPLE_TXT2IMG, "enable_hr": True, "denoising_strength": 0.7}, 200, None),
    ("txt2img: hires fix, every field at A1111's default", "txt2img", {**TXT2IMG_MODEL, **SMALL, "enable_hr": True,
                                                                       "denoising_strength": 0.5}, 200, None),
    ("txt2img: hires fix, Lanczos, own steps and negative", "txt2img", {
        **SIMPLE_TXT2IMG, "enable_hr": True, "denoising_strength": 0.5, "hr_upscaler": "Lanczos",
        "hr_second_pass_steps": 2, "hr_negative_prompt": "blurry", "hr_sampler_name": "Use same sampler",
        "hr_scheduler": "Use same scheduler", "hr_checkpoint_name": "Use same checkpoint"}, 200, None),
    ("txt2img: hires fix, a model upscaler", "txt2img", {**SIMPLE_TXT2IMG, "enable_hr": True,
                                                         "denoising_strength": 0.5, "hr_upscaler": "R-ESRGAN 4x+"},
     422, "hr_upscaler"),
    ("txt2img: tiling", "txt2img", {**SIMPLE_TXT2IMG, "tiling": True}, 200, None),
    ("img2img: tiling", "img2img", {**SIMPLE_IMG2IMG, "tiling": True}, 200, None),
    ("txt2img: variation seed", "txt2img", {**SIMPLE_TXT2IMG, "subseed": 3, "subseed_strength": 0.5}, 422,
     "subseed_strength"),
    ("img2img: A1111's simple request", "img2img", SIMPLE_IMG2IMG, 200, None),
    ("img2img: negative prompt", "img2img", {**SIMPLE_IMG2IMG, "negative_prompt": "example negative prompt"}, 200,
     None),
    ("img2img: complex prompt", "img2img", {**SIMPLE_IMG2IMG, "prompt": COMPLEX_PROMPT}, 200, None),
    ("img2img: batch", "img2img", {**SIMPLE_IMG2IMG, "n_iter": 2, "batch_size": 2}, 200, None),
    *[(f"img2img: resize mode {m}", "img2img", {**SIMPLE_IMG2IMG, "resize_mode": m,
                                                 "init_images": [_png(2, 48)]}, 200, None) for m in range(4)],
    ("img2img: inpainting", "img2img", {**SIMPLE_IMG2IMG, "mask": _png(3)}, 200, None),
    ("img2img: inpainting, mask inverted", "img2img", {**SIMPLE_IMG2IMG, "mask": _png(3),
                                                       "inpainting_mask_invert": True}, 200, None),
    ("img2img: inpainting at A1111's defaults (only masked)", "img2img", {**IMG2IMG_MODEL, **SMALL,
                                                                          "init_images": [_png(1)], "mask": _png(3)},
     200, None),
    *[(f"img2img: inpainting, fill {f}", "img2img", {**SIMPLE_IMG2IMG, "mask": _png(3), "inpainting_fill": f}, 200,
       None) for f in range(4)],
    ("img2img: inpainting, only masked with padding", "img2img", {**SIMPLE_IMG2IMG, "mask": _png(3),
                                                                  "inpaint_full_res": True,
                                                                  "inpaint_full_res_padding": 32}, 200, None),
    ("img2img: inpainting, blur x and y differ", "img2img", {**IMG2IMG_MODEL, **SMALL, "init_images": [_png(1)],
                                                             "mask": _png(3), "mask_blur_x": 2}, 200, None),
    ("img2img: inpainting, fill 4", "img2img", {**SIMPLE_IMG2IMG, "mask": _png(3), "inpainting_fill": 4}, 422,
     "inpainting_fill"),
    ("img2img: inpainting, latent_mask", "img2img", {**SIMPLE_IMG2IMG, "mask": _png(3), "latent_mask": _png(4)}, 422,
     "latent_mask"),
    ("img2img: SD upscale script", "img2img", {**SIMPLE_IMG2IMG, "script_name": "sd upscale",
                                               "script_args": ["", 8, "Lanczos", 2.0]}, 422, "script_name"),
]


@pytest.fixture(scope="module")
def url(tiny_folder):
    with running_server(create_app(ServerConfig(model=str(tiny_folder)))) as address:
        yield address


@pytest.mark.parametrize("label, endpoint, body, status, field", PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_a1111_payloads_are_answered_or_refused_by_name(url, label, endpoint, body, status, field):
    answer = requests.post(f"{url}/sdapi/v1/{endpoint}", json=body, timeout=300)
    assert answer.status_code == status, answer.text[:500]
    if status == 422:
        assert field in {e["field"] for e in answer.json()["errors"]}
        return
    made = answer.json()
    info = json.loads(made["info"])
    assert len(made["images"]) == body.get("batch_size", 1) * body.get("n_iter", 1)
    assert info["ignored_fields"] == []  # every field of A1111's models is known by name
    scale = body.get("hr_scale", 2) if body.get("enable_hr") else 1  # the hires fix doubles the size by default
    assert Image.open(io.BytesIO(base64.b64decode(made["images"][0]))).size == (body["width"] * scale,
                                                                                 body["height"] * scale)
