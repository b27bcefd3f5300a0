"""The loaded parts of a Stable-Diffusion-format model, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avert.schema import FALLBACK_GUIDANCE


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from: shown in results and PNG metadata (A1111 `Model`, `Model hash`)."""

    path: Path
    name: str  # A1111 shows the file stem (or folder name)
    hash: str  # first 10 hex digits of the SHA-256 (A1111's "Model hash")
    kind: str  # "diffusers-folder" | "single-file"


@dataclass(frozen=True)
class Components:
    """Model parts used by the engine.

    `vae` is None for a pixel-space model (the UNet works on the image itself, values in [-1, 1]).
    `scheduler_config` is the model's own scheduler config; samplers are built from it.
    `default_guidance` is the guidance method a request that names none gets: A1111's "cfg", unless the
    model's folder recommends another in its `avert.json` (`avert.models.defaults`).
    An SDXL model has a second text encoder and tokenizer (OpenCLIP bigG, with its pooled projection) and says
    whether an empty negative is the zero tensor (its pipeline's `force_zeros_for_empty_prompt`).
    """

    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any | None  # diffusers.AutoencoderKL
    text_encoder: Any  # transformers.PreTrainedModel (CLIPTextModel, BertModel, ...)
    tokenizer: Any  # transformers tokenizer
    scheduler_config: dict
    source: ModelSource
    default_guidance: str = FALLBACK_GUIDANCE
    scope: Any | None = None  # avert.models.scope.ModelScope: what the model knows, where its folder says (scope.json)
    text_encoder_2: Any | None = None  # SDXL: transformers.CLIPTextModelWithProjection
    tokenizer_2: Any | None = None
    force_zeros_for_empty_prompt: bool = False

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders and a UNet that takes pooled text and size conditioning (`text_time`)."""
        return self.text_encoder_2 is not None

    @property
    def family(self) -> str:
        return "sdxl" if self.is_sdxl else "sd"

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the UNet denoises (its output)."""
        return int(self.unet.config.out_channels)

    @property
    def image_channels(self) -> int:
        """Extra input channels of an inpainting UNet (9 in, 4 out: a mask and the masked image's latents), else 0."""
        return int(self.unet.config.in_channels) - self.latent_channels
