"""Inpainting: the mask as A1111 prepares it, the latents it keeps, and the init image pasted back around it.

The mask (`avert.init_image.Mask`, white = re-draw) goes through A1111's steps (`StableDiffusionProcessingImg2Img`,
modules/masking.py), written here from their description:

1. read: from transparency, binarized at 128 when mask_round is on; else its grey levels. A mask of another size
   than the init image is first stretched to it (Lanczos). `inpainting_mask_invert` inverts it.
2. blur: a horizontal Gaussian of sigma `mask_blur`, then a vertical one of `mask_blur_y` (unset: `mask_blur`), as
   A1111's mask_blur_x and mask_blur_y (OpenCV's kernel width 2 int(2.5 sigma + 0.5) + 1,
   border reflected without repeating the edge pixel, as cv2.GaussianBlur's default).
3. whole picture: the mask is resized as the image is (`resize_mode`); the paste-back alpha is the mask times 2
   (clipped), so pixels of mask level 128 and above are fully re-drawn.
   only masked (`inpaint_full_res`): the mask's bounding box, grown by the padding and clamped to the image, then
   grown to width:height and shifted inside the image, is cut from mask and image and resized to width x height
   ("resize and fill"); the result is resized back ("crop and resize") and pasted at the box; an empty mask
   falls back to img2img of the whole image.
4. fill (masked content "fill"): the masked pixels are painted with the unmasked ones blurred at radii 256, 64,
   16 (twice), 4 (4 times), 2 (twice) and 0, each layer composited over the last.
5. latent mask m: the processed mask resized (bicubic) to the latent grid, in [0, 1], rounded with mask_round.
   "latent noise" sets the init latents to x0 (1 - m) + z m (z from the image's generator), "latent nothing" to
   x0 (1 - m).
6. sampling, on a UNet with 4 input channels, blends as diffusers' `StableDiffusionInpaintPipeline` does: after
   step i, x = (1 - m) add_noise(x0, noise, t_{i+1}) + m x, and after the last step x = (1 - m) x0 + m x. A1111
   blends the denoised prediction instead (x0 (1 - m) + m D(x) inside its k-diffusion denoiser): the two agree on
   what is kept and differ in how the boundary is re-noised. A UNet with 9 input channels (sd-v1-5-inpainting
   layout) takes [x, mask, latents of the image with the masked pixels at 0] instead and is not blended, as in
   diffusers; its mask is the processed mask rounded at 0.5 and resized to the latent grid by nearest neighbour.
7. paste-back (`overlay_inpaint`): the init image, with alpha 255 minus the paste-back mask, is composited over the
   result, so every pixel outside the blurred mask is the init image's own.

diffusers' pipeline encodes the masked image with each image's generator after drawing the noise, also for 4-channel
UNets that do not use it; avert draws the same number of values there, so that stochastic samplers see the same
noise stream (`Plan.apply`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps

from avert.init_image import Mask
from avert.request import GenerationRequest

FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))  # (blur radius, times composited)


@dataclass(frozen=True)
class Plan:
    """What an inpainting run encodes, keeps and pastes back.

    `image` and `mask` are at width x height (the image filled where the fill mode asks); `overlay` is the init
    image with the paste-back alpha, at the size of the result (the init image's own size when only the masked
    area is rendered, then `paste_to` = (left, top, width, height) of that area)."""

    image: Image.Image
    mask: Image.Image
    overlay: Image.Image
    paste_to: tuple[int, int, int, int] | None
    request: GenerationRequest

    def latent_mask(self, size: tuple[int, int]) -> torch.Tensor:
        """m as [1, 1, h, w] in [0, 1] at the latent grid (h, w): 1 where the image is re-drawn."""
        h, w = size
        mask = self.mask if self.mask.size == (w, h) else self.mask.resize((w, h), Image.BICUBIC)
        m = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
        return torch.round(m) if self.request.mask_round else m

    def apply(self, latents: torch.Tensor, pixels: torch.Tensor, components, generators: Sequence[torch.Generator],
              runtime) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The init latents after the fill mode, and the 9-channel UNet's extra input ([batch, 5, h, w]) or None.
        Called after the noise is drawn: each generator then draws the masked image's VAE sample (or, for a
        4-channel UNet, as many values), then the latent noise of that fill mode."""
        m = self.latent_mask(latents.shape[-2:]).to(latents.device)
        extra = image_conditioning(self.mask, pixels, components, generators, runtime, latents.shape[-2:])
        if extra is None and components.vae is not None:
            for g in generators:
                torch.randn((1, *latents.shape[1:]), generator=g)  # diffusers' unused masked-image sample
        fill = self.request.inpainting_fill
        if fill == "latent noise":
            z = torch.cat([torch.randn((1, *latents.shape[1:]), generator=g) for g in generators]).to(latents.device)
            latents = latents * (1 - m) + z * m
        elif fill == "latent nothing":
            latents = latents * (1 - m)
        return latents, extra

    def paste(self, result: Image.Image) -> Image.Image:
        """The result under the init image's overlay (A1111's `apply_overlay`)."""
        if not self.request.overlay_inpaint:
            return result
        if self.paste_to is not None:
            from avert.pipeline.img2img import resize

            left, top, width, height = self.paste_to
            canvas = Image.new("RGBA", self.overlay.size)
            canvas.paste(resize(result, width, height, "crop and resize"), (left, top))
            result = canvas
        result = result.convert("RGBA")
        result.alpha_composite(self.overlay)
        return result.convert("RGB")


@dataclass(frozen=True)
class Blend:
    """Step 6 on a 4-channel UNet: after step i, x = (1 - m) add_noise(x0, noise, t_{i+1}) + m x; after the last,
    x = (1 - m) x0 + m x (diffusers' `StableDiffusionInpaintPipeline`), each image with its own scheduler."""

    mask: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    schedulers: Sequence
    begin: int

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        timesteps = self.schedulers[0].timesteps[self.begin:]
        if i + 1 < len(timesteps):
            t = timesteps[i + 1 : i + 2]
            kept = torch.cat([s.add_noise(self.latents[j : j + 1], self.noise[j : j + 1], t)
                              for j, s in enumerate(self.schedulers)])
        else:
            kept = self.latents
        return (1 - self.mask) * kept + self.mask * x


def plan(request: GenerationRequest) -> Plan | None:
    """The inpainting plan of a request with an init image and a mask (at the request's width x height); None
    where only the masked area is to be rendered and the mask is empty (A1111 then runs img2img)."""
    from avert.pipeline.img2img import resize

    image = request.init_image.to_pil()
    mask = read_mask(request.mask, image.size, request)
    width, height = request.width, request.height
    if request.inpaint_full_res:
        box = crop_region(mask, request.inpaint_full_res_padding)
        if box is None:
            return None
        box = expand_to_ratio(box, width, height, image.size)
        overlay = with_alpha(image, ImageOps.invert(mask))
        image = resize(image.crop(box), width, height, "resize and fill")
        mask = resize(mask.crop(box), width, height, "resize and fill")
        paste_to = (box[0], box[1], box[2] - box[0], box[3] - box[1])
    else:
        image = resize(image, width, height, request.resize_mode)
        mask = resize(mask, width, height, request.resize_mode)
        doubled = Image.fromarray(np.clip(np.asarray(mask, dtype=np.int32) * 2, 0, 255).astype(np.uint8))
        overlay, paste_to = with_alpha(image, ImageOps.invert(doubled)), None
    if request.inpainting_fill != "original":
        image = fill(image, mask)
    return Plan(image, mask, overlay, paste_to, request)


def read_mask(mask: Mask, size: tuple[int, int], request: GenerationRequest) -> Image.Image:
    """Steps 1 and 2: the mask at the init image's size, binarized where it came from transparency, inverted,
    blurred."""
    image = mask.to_pil()
    if mask.from_alpha and request.mask_round:
        image = image.point(lambda v: 255 if v > 128 else 0)
    if image.size != size:
        image = image.resize(size, Image.LANCZOS)
    if request.inpainting_mask_invert:
        image = ImageOps.invert(image)
    return gaussian_blur(image, request.mask_blur, request.mask_blur_y)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's Gaussian kernel for a given sigma, of the width A1111 asks for: 2 int(2.5 sigma + 0.5) + 1 taps."""
    radius = int(2.5 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def reflect_101(n: int, pad: int) -> np.ndarray:
    """Indices of a length-n axis padded by `pad` on each side, mirrored without repeating the edge
    (OpenCV's BORDER_REFLECT_101: ... 2 1 | 0 1 2 ... n-1 | n-2 ...), folded again where pad > n."""
    index = np.arange(-pad, n + pad)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def gaussian_blur(image: Image.Image, sigma: float, sigma_y: float | None = None) -> Image.Image:
    """Step 2 on an 8-bit grey image: horizontal (sigma), then vertical (sigma_y, None: sigma), each rounded back to 8
    bits; a sigma of 0 leaves that axis alone."""
    array = np.asarray(image, dtype=np.float64)
    for axis, s in ((1, sigma), (0, sigma if sigma_y is None else sigma_y)):
        if s <= 0:
            continue
        kernel = gaussian_kernel(s)
        pad = len(kernel) // 2
        index = reflect_101(array.shape[axis], pad)
        padded = np.take(array, index, axis=axis)
        windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=axis)
        array = np.clip(np.rint(windows @ kernel), 0, 255)
    return Image.fromarray(array.astype(np.uint8))


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The bounding box (left, top, right, bottom; right and bottom exclusive) of the mask's non-zero pixels,
    grown by `padding` on every side and clamped to the image; None for an empty mask."""
    box = mask.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    return max(left - padding, 0), max(top - padding, 0), min(right + padding, mask.width), \
        min(bottom + padding, mask.height)


def expand_to_ratio(box: tuple[int, int, int, int], width: int, height: int,
                    size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box grown along its short side to the ratio width:height (the growth split evenly, the odd pixel
    after), shifted back inside the image where it passes an edge, and clamped to the image."""
    left, top, right, bottom = box
    if (right - left) / (bottom - top) > width / height:
        top, bottom = _grow(top, bottom, int((right - left) * height / width - (bottom - top)), size[1])
    else:
        left, right = _grow(left, right, int((bottom - top) * width / height - (right - left)), size[0])
    return left, top, right, bottom


def _grow(start: int, end: int, extra: int, limit: int) -> tuple[int, int]:
    start, end = start - extra // 2, end + extra - extra // 2
    if end > limit:
        start, end = start - (end - limit), limit
    if start < 0:
        start, end = 0, end - start
    return start, min(end, limit)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Step 4: the masked pixels painted with the unmasked ones, blurred ever less (`FILL_LAYERS`). Blurring the
    alpha-premultiplied unmasked pixels spreads their colours into the hole weighted by how much of each blur
    window is unmasked; each layer is composited over the coarser ones."""
    keep = with_alpha(image, ImageOps.invert(mask)).convert("RGBa")
    out = Image.new("RGBA", image.size)
    for radius, times in FILL_LAYERS:
        layer = keep.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            out.alpha_composite(layer)
    return out.convert("RGB")


def with_alpha(image: Image.Image, alpha: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


def image_conditioning(mask: Image.Image | None, pixels: torch.Tensor | None, components, generators, runtime,
                       size: tuple[int, int]) -> torch.Tensor | None:
    """None for an ordinary UNet; the extra input of a 9-channel (inpainting) UNet, [batch, 1 + C, h, w]: the mask rounded at 0.5 and resized
    to the latent grid by nearest neighbour, then the latents of the image with its masked pixels at 0 (mid-grey).
    Without a mask (txt2img, or img2img of the whole image) everything is masked and the image is all 0, as A1111
    conditions an inpainting model then; those latents are the VAE's mean (no generator is drawn from)."""
    from avert.pipeline.img2img import encode

    if not components.image_channels:
        return None
    batch = len(generators)
    if mask is None:
        h, w = size
        factor = components.vae_scale_factor
        grey = torch.zeros((1, 3, h * factor, w * factor))
        latents = components.vae.encode(grey.to(runtime.device, components.vae.dtype)).latent_dist.mode()
        latents = latents.float() * components.vae.config.scaling_factor
        ones = torch.ones((1, 1, h, w), device=latents.device)
        return torch.cat([ones, latents], dim=1).expand(batch, -1, -1, -1)
    m = torch.round(torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0))[None, None]
    latents = encode(pixels * (1 - m), components, generators, runtime)
    small = F.interpolate(m, size=tuple(size)).to(latents.device)
    return torch.cat([small.expand(batch, -1, -1, -1), latents], dim=1)
