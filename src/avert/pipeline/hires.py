"""Hires fix: the first pass at width x height, enlarged, then re-drawn at the larger size (A1111's `enable_hr`).

As A1111's `StableDiffusionProcessingTxt2Img` does it (written from ../shared/reference/a1111-api.md, section 3.4):

- target size: int(width x hr_scale) x int(height x hr_scale) when hr_resize_x and hr_resize_y are 0; one of them
  set, the other follows the first pass's ratio (integer division); both set, the image is enlarged to cover both and
  the latents are cropped about the centre, (enlarged - target) // 8 latent pixels in all. The size is that of the
  latent grid: a multiple of the VAE's factor (8), rounded down.
- `hr_upscaler`: a latent mode interpolates the first pass's latents (`torch.nn.functional.interpolate` with the
  mode's filter and antialiasing); Lanczos or Nearest decode them, resize the pixels and encode them again (one VAE
  sample from each image's generator, seeded afresh with the image's seed).
- the second pass is img2img of those latents with A1111's fixed-steps rule: n = hr_second_pass_steps or steps,
  a schedule of int(n / min(strength, 0.999)) steps, of which the last n run, from fresh noise drawn from each
  image's seed at the new size; its sampler is hr_sampler or the sampler; its prompt hr_prompt or the prompt, and
  hr_negative_prompt, when given, takes the place of negative_prompt (the other negatives stay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from avert.models.components import Components
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest
from avert.schema import LATENT_UPSCALERS


@dataclass(frozen=True)
class Target:
    """The second pass's size, and the size the image is enlarged to before the centre crop (the same unless both
    hr_resize_x and hr_resize_y are given)."""

    width: int
    height: int
    cover_width: int
    cover_height: int


def target(request: GenerationRequest, factor: int = 8) -> Target:
    """A1111's hires target for a first pass of request.width x request.height, on the latent grid of `factor`."""
    w, h, rx, ry = request.width, request.height, request.hr_resize_x, request.hr_resize_y
    if rx == 0 and ry == 0:
        tw, th = int(w * request.hr_scale), int(h * request.hr_scale)
        cw, ch = tw, th
    elif ry == 0:
        tw = cw = rx
        th = ch = rx * h // w
    elif rx == 0:
        th = ch = ry
        tw = cw = ry * w // h
    else:
        tw, th = rx, ry
        cw, ch = (rx, rx * h // w) if w / h < rx / ry else (ry * w // h, ry)
    grid = lambda v: max(factor, v // factor * factor)  # noqa: E731
    return Target(grid(tw), grid(th), grid(cw), grid(ch))


def schedule_steps(steps: int, strength: float) -> int:
    """The length of the second pass's schedule, of which the last `steps` run: int(steps / min(d, 0.999))."""
    return int(steps / min(strength, 0.999))


def second_request(request: GenerationRequest, size: Target) -> GenerationRequest:
    """The second pass as a request of its own: the target size, the hires prompt, negative and sampler, and the
    full schedule's length as `steps` (the run begins `passes` steps before its end)."""
    passes = request.hr_second_pass_steps or request.steps
    return request.replace(
        prompt=request.hr_prompt or request.prompt,
        negative_prompt=request.hr_negative_prompt or request.negative_prompt,
        sampler=request.hr_sampler or request.sampler, width=size.width, height=size.height,
        steps=schedule_steps(passes, request.strength), enable_hr=False, hr_prompt="", hr_negative_prompt="",
        hr_sampler=None, hr_second_pass_steps=0)


def counted(request: GenerationRequest, factor: int = 8) -> GenerationRequest:
    """The second pass as its cost is counted: at the target size, with the steps that run."""
    second = second_request(request, target(request, factor))
    return second.replace(steps=request.hr_second_pass_steps or request.steps)


def enlarge(latents: torch.Tensor, request: GenerationRequest, size: Target, components: Components,
            seeds, runtime: Runtime, decode: Callable) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The first pass's latents at the target size, and each image's fresh generator (past the VAE sample of a pixel
    upscaler)."""
    from avert.pipeline.img2img import encode, to_tensor

    factor = components.vae_scale_factor
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    cover = (size.cover_height // factor, size.cover_width // factor)
    if request.hr_upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[request.hr_upscaler]
        big = F.interpolate(latents, size=cover, mode=mode, antialias=antialias)
    else:
        resample = Image.LANCZOS if request.hr_upscaler == "Lanczos" else Image.NEAREST
        pictures = [p.resize((size.cover_width, size.cover_height), resample) for p in decode(latents)]
        big = torch.cat([encode(to_tensor(p), components, [g], runtime) for p, g in zip(pictures, generators)])
    return crop(big, size, factor), generators


def crop(latents: torch.Tensor, size: Target, factor: int) -> torch.Tensor:
    """The centre of the enlarged latents at the target size (A1111 cuts (cover - target) // 8 latent pixels,
    the odd one from the end)."""
    cut_y, cut_x = (size.cover_height - size.height) // factor, (size.cover_width - size.width) // factor
    height, width = latents.shape[-2:]
    return latents[..., cut_y // 2: height - (cut_y + 1) // 2, cut_x // 2: width - (cut_x + 1) // 2]


def begin(second: GenerationRequest, passes: int, schedulers, latents: torch.Tensor, generators) -> tuple[
        torch.Tensor, torch.Tensor, int]:
    """The noised start of the second pass, its noise and the schedule index where it begins."""
    from avert.pipeline.img2img import noised

    noise = torch.cat([torch.randn((1, *latents.shape[1:]), generator=g) for g in generators]).to(latents.device)
    index = (second.steps - passes) * getattr(schedulers[0], "order", 1)
    return noised(schedulers, latents, noise, index), noise, index
