"""Test builders: the tiny SD folder (from `avert.testing.tiny`) and the same weights as one SD-layout file."""

from __future__ import annotations

from pathlib import Path

from ldm_layout import diffusers_to_ldm, sdxl_to_ldm

from avert.testing.tiny import build_tiny_sd_folder, write_tiny_tokenizer_files  # noqa: F401  (re-exported)


def write_tiny_single_file(folder: Path, out: Path, *, text_layout: str = "clip") -> Path:
    """Convert the diffusers folder's UNet, VAE and text encoder to one SD-layout `.safetensors` file.

    `text_layout` "clip" gives the SD 1.x text-encoder keys, "open_clip" the SD 2.x ones.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(diffusers_to_ldm(unet, vae, text_encoder, text_layout=text_layout), str(out))
    return out


def write_tiny_sdxl_single_file(folder: Path, out: Path) -> Path:
    """The tiny SDXL folder's UNet, VAE and two text encoders as one original-SDXL-layout `.safetensors` file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    parts = (UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
             AutoencoderKL.from_pretrained(folder, subfolder="vae"),
             CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
             CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sdxl_to_ldm(*parts), str(out))
    return out



def beyond_size(warnings) -> list[str]:
    """The warnings but the one about a size far from the tiny model's native 16x16 (`avert.pipeline.advice`)."""
    from avert.pipeline.advice import SIZE_WARNING_START

    return [w for w in warnings if SIZE_WARNING_START not in w]
