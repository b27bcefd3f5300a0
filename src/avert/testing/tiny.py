"""Tiny random Stable Diffusion components for tests and benchmarks, built offline in about a second.

Seeded (torch.manual_seed(0)) so two builds give identical weights; building takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


TINY_WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "car", "tree", "house"]


def write_tiny_tokenizer_files(out_dir: Path) -> tuple[Path, Path]:
    """Write a tiny CLIP BPE vocab.json + merges.txt (under 200 tokens) and return their paths.

    Tokens: single letters and digits (plain and with `</w>`), the merges spelling TINY_WORDS,
    then `<|startoftext|>` and `<|endoftext|>` last, as in CLIP.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            pieces = ["".join(pair)] + pieces[2:]
            if pair not in merges:
                merges.append(pair)
                tokens.append("".join(pair))
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def tiny_unet(in_channels: int = 4):
    """A 2-block UNet2DConditionModel (32, 64 channels, cross-attention width 32, 8x8 latents); 9 input channels
    make it an inpainting UNet (latents, mask, masked image's latents)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )


def tiny_vae():
    """A 2-block AutoencoderKL (32, 64 channels, 4 latent channels, downscale 2)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), latent_channels=4, in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=16,
    )


def tiny_text_encoder():
    """A 2-layer CLIPTextModel (hidden 32, 4 heads, vocabulary 1000, 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=1000, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    return CLIPTextModel(config)


def tiny_scheduler(prediction_type: str = "epsilon"):
    """SD's DDIM scheduler settings with the given prediction type."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def build_tiny_sd_folder(root: Path, *, prediction_type: str = "epsilon", in_channels: int = 4) -> Path:
    """Build seeded tiny SD components, save them as a diffusers folder under `root`, return it (`in_channels` 9:
    an inpainting UNet, in the folder "tiny-sd-inpainting")."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    root = Path(root)
    vocab, merges = write_tiny_tokenizer_files(root / "tiny-bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(in_channels), vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tokenizer,
        scheduler=tiny_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = root / ("tiny-sd" if in_channels == 4 else "tiny-sd-inpainting")
    pipe.save_pretrained(folder)
    return folder
