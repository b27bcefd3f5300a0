"""Live previews: a step's estimate of the clean latents as a small picture, without the VAE's decoder.

Decoding every step with the VAE would cost as much as a step or more (an SD 1.5 decode at 512 pixels takes
seconds on a CPU), so a preview maps each latent pixel to a colour with one linear map and a bias, the approach of
A1111's "Approx cheap" live preview. A1111 ships fixed coefficients for SD's VAE; avert fits them once per VAE, by
least squares, on the VAE's own encodings of smooth random colour images (`rgb ~ W z + b`), so every VAE, SDXL's
included, gets its own. Pixel-space models (the embedded one) need no map: their latents are the pixels.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FIT_IMAGES = 16  # smooth colour fields the map is fitted on
FIT_SIZE = 64  # their side in pixels

_fits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE -> (W, b)
_lock = threading.Lock()


@torch.no_grad()
def latent_colours(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [3, C], b [3]) with rgb in [-1, 1] ~ W z + b for the VAE's scaled latents z, fitted once per VAE."""
    with _lock:
        if vae not in _fits:
            _fits[vae] = _fit(vae)
        return _fits[vae]


def _fit(vae) -> tuple[torch.Tensor, torch.Tensor]:
    parameter = next(vae.parameters())
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(FIT_IMAGES, 3, 4, 4, generator=generator) * 2 - 1
    images = F.interpolate(coarse, size=(FIT_SIZE, FIT_SIZE), mode="bilinear", align_corners=False)
    latents = vae.encode(images.to(parameter)).latent_dist.mean.float().cpu() * vae.config.scaling_factor
    rgb = F.adaptive_avg_pool2d(images, latents.shape[-2:])
    z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    target = rgb.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([z, torch.ones(len(z), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, target.double()).solution.float()  # [C + 1, 3]
    return solution[:-1].T.contiguous(), solution[-1].contiguous()


def preview_image(latents: torch.Tensor, vae) -> Image.Image:
    """The first image of a batch of (denoised) latents as a picture: through the fitted map for a latent model,
    as they are for a pixel-space one (vae None); values in [-1, 1] as the decoder's output."""
    z = latents[0].detach().float().cpu()
    if vae is not None:
        weights, bias = latent_colours(vae)
        z = torch.einsum("rc,chw->rhw", weights, z) + bias[:, None, None]
    pixels = ((z[:3] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels)
