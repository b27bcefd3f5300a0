"""img2img: the init image, resized and encoded, noised to where the run starts.

The step rule is A1111's (`setup_img2img_steps` with `img2img_fix_steps` off): with strength d and `steps`,
t_enc = int(min(d, 0.999) * steps), and the last t_enc + 1 steps of the full `steps`-step schedule run, from the
init latent noised to that schedule's level: x = add_noise(x0, z, t_begin) (for sigma samplers x0 + sigma z).
diffusers' `StableDiffusionImg2ImgPipeline` runs the last int(steps * d) steps instead, so A1111's strength d is
diffusers' strength (t_enc + 1) / steps: one step more, from one noise level higher (at d 1 both run all steps).
As in diffusers, each image's generator draws the VAE's latent sample first and then the noise.

Resize modes (A1111's `resize_image`, Lanczos): "just resize" stretches to width x height; "crop and resize"
scales to cover and crops the centre; "resize and fill" scales to fit and fills the bands by stretching the
image's edge rows or columns; "latent upscale" encodes the image at its own size (rounded down to the latent
grid) and interpolates the latent bilinearly to the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from avert.models.components import Components
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest


def steps_to_run(steps: int, strength: float) -> int:
    """A1111's t_enc + 1: the steps an img2img run takes, from the end of a `steps`-step schedule."""
    return int(min(strength, 0.999) * steps) + 1


def resize(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """The init image at width x height by one of the pixel resize modes (not "latent upscale")."""
    if mode == "just resize" or image.size == (width, height):
        return image.resize((width, height), Image.LANCZOS)
    ratio, source_ratio = width / height, image.width / image.height
    cover = mode == "crop and resize"
    wide = (ratio > source_ratio) == cover  # scale by width: cover a wider frame, or fit a taller one
    if wide:
        w, h = width, max(1, image.height * width // image.width)
    else:
        w, h = max(1, image.width * height // image.height), height
    scaled = image.resize((w, h), Image.LANCZOS)
    canvas = Image.new(image.mode, (width, height))
    left, top = width // 2 - w // 2, height // 2 - h // 2  # A1111's centring
    canvas.paste(scaled, (left, top))
    if not cover:
        _stretch_edges(canvas, scaled, left, top)
    return canvas


def _stretch_edges(canvas: Image.Image, scaled: Image.Image, left: int, top: int) -> None:
    """Fill the bands around a fitted image with its first and last rows (or columns), stretched."""
    width, height = canvas.size
    if top > 0:
        canvas.paste(scaled.crop((0, 0, width, 1)).resize((width, top)), (0, 0))
        bottom = top + scaled.height
        canvas.paste(scaled.crop((0, scaled.height - 1, width, scaled.height)).resize((width, height - bottom)),
                     (0, bottom))
    elif left > 0:
        canvas.paste(scaled.crop((0, 0, 1, height)).resize((left, height)), (0, 0))
        right = left + scaled.width
        canvas.paste(scaled.crop((scaled.width - 1, 0, scaled.width, height)).resize((width - right, height)),
                     (right, 0))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB pixels as [1, 3, H, W] in [-1, 1] (diffusers' `VaeImageProcessor.normalize`)."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1


def encode(pixels: torch.Tensor, components: Components, generators: Sequence[torch.Generator],
           runtime: Runtime) -> torch.Tensor:
    """[batch, C, h, w] latents of the image, one VAE sample per image from its generator (diffusers'
    `retrieve_latents` in "sample" mode), times the VAE's scaling factor; the pixels for a pixel-space model."""
    pixels = pixels.to(runtime.device)
    if components.vae is None:
        return pixels.expand(len(generators), -1, -1, -1).clone()
    dist = components.vae.encode(pixels.to(components.vae.dtype)).latent_dist
    latents = torch.cat([dist.sample(generator=g) for g in generators])
    return latents.float() * components.vae.config.scaling_factor


@dataclass(frozen=True)
class Start:
    """Where an img2img run begins: `x` the noised init latents at the schedule's index `begin` (each scheduler's
    begin index is set to it), `latents` the clean init latents and `noise` what noised them (an inpainting run
    blends with both), the per-image generators past their draws, and a 9-channel UNet's extra input."""

    x: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    generators: list[torch.Generator]
    begin: int
    image_conditioning: torch.Tensor | None = None


def start(request: GenerationRequest, components: Components, runtime: Runtime, schedulers: Sequence,
          seeds: Sequence[int], shape: tuple[int, int, int], plan=None) -> Start:
    """Encode the init image (the inpainting `plan`'s, when there is one), draw the noise, apply the plan's fill,
    and noise the latents to the level where the run begins."""
    if plan is not None:
        image = plan.image
    elif request.resize_mode == "latent upscale":
        image = request.init_image.to_pil()
        factor = components.vae_scale_factor
        grid = (max(factor, image.width // factor * factor), max(factor, image.height // factor * factor))
        image = image.resize(grid, Image.LANCZOS) if grid != image.size else image
    else:
        image = resize(request.init_image.to_pil(), request.width, request.height, request.resize_mode)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    pixels = to_tensor(image)
    latents = encode(pixels, components, generators, runtime)
    if latents.shape[-2:] != shape[-2:]:
        latents = F.interpolate(latents, size=shape[-2:], mode="bilinear", align_corners=False)
    noise = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
    if request.initial_noise_multiplier != 1.0:  # A1111: x *= initial_noise_multiplier before noising
        noise = noise * request.initial_noise_multiplier
    if plan is not None:
        latents, extra = plan.apply(latents, pixels, components, generators, runtime)
    else:
        from avert.pipeline.inpaint import image_conditioning

        extra = image_conditioning(None, None, components, generators, runtime, shape[-2:])
    begin = (request.steps - steps_to_run(request.steps, request.strength)) * getattr(schedulers[0], "order", 1)
    noise = noise.to(latents.device)
    return Start(noised(schedulers, latents, noise, begin), latents, noise, generators, begin, extra)


def noised(schedulers: Sequence, latents: torch.Tensor, noise: torch.Tensor, begin: int) -> torch.Tensor:
    """Set each scheduler's begin index and noise each image's latents to the level of timestep `begin` (diffusers'
    img2img: `set_begin_index`, then `add_noise`)."""
    for s in schedulers:
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(begin)
    t = schedulers[0].timesteps[begin : begin + 1]
    return torch.cat([s.add_noise(latents[j : j + 1], noise[j : j + 1], t) for j, s in enumerate(schedulers)])
