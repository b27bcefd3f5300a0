"""Tiny random Stable Diffusion components for tests and benchmarks, built offline in about a second.

Seeded (torch.manual_seed(0)) so two builds give identical weights; building takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


TINY_WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "car", "tree", "house"]


def write_tiny_tokenizer_files(out_dir: Path, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write a tiny CLIP BPE vocab.json + merges.txt (under 200 tokens) and return their paths.

    Tokens: single letters and digits (plain and with `</w>`), the merges spelling TINY_WORDS,
    then `<|startoftext|>` and `<|endoftext|>`, as in CLIP, then `extra` (e.g. "!", OpenCLIP's padding).
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
    tokens += ["<|startoftext|>", "<|endoftext|>", *extra]
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


# The tiny SDXL, near diffusers' own test shapes (tests/pipelines/stable_diffusion_xl): text encoders 32 and 40
# wide (unequal, as CLIP-L and bigG are, so that a single file's two encoders are told apart by width), so
# cross-attention 72 = 32 + 40, and 80 = 6 size values x 8 + the 32-wide pooled projection.
SDXL_TIME_DIM = 8
SDXL_WIDTHS = (32, 40)


def tiny_sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * SDXL_TIME_DIM + 32, cross_attention_dim=sum(SDXL_WIDTHS),
    )


def tiny_sdxl_text_encoders(eos_2: int):
    """A CLIPTextModel and a CLIPTextModelWithProjection (`SDXL_WIDTHS` wide, 3 layers, so the penultimate layer is
    not the first; a 32-wide projection); the second pools at its end token `eos_2` (its tokenizer pads with "!")."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = dict(intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, vocab_size=1000,
                  max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=32)
    first = CLIPTextModel(CLIPTextConfig(**common, hidden_size=SDXL_WIDTHS[0], bos_token_id=0, eos_token_id=2,
                                         pad_token_id=1))
    second = CLIPTextModelWithProjection(CLIPTextConfig(**common, hidden_size=SDXL_WIDTHS[1], bos_token_id=eos_2 - 1,
                                                        eos_token_id=eos_2, pad_token_id=eos_2 + 1))
    return first, second


def tiny_sdxl_scheduler(prediction_type: str = "epsilon"):
    """SDXL's scheduler settings (Euler, leading spacing)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading", prediction_type=prediction_type)


def build_tiny_sdxl_folder(root: Path, *, force_zeros_for_empty_prompt: bool = True) -> Path:
    """Seeded tiny SDXL components saved as a diffusers folder ("tiny-sdxl") under `root`; returns it."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    root = Path(root)
    vocab, merges = write_tiny_tokenizer_files(root / "tiny-bpe")
    vocab_2, merges_2 = write_tiny_tokenizer_files(root / "tiny-bpe-2", extra=("!",))
    tokenizer = CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=str(vocab_2), merges=str(merges_2), model_max_length=77, pad_token="!")
    torch.manual_seed(0)
    text_encoder, text_encoder_2 = tiny_sdxl_text_encoders(tokenizer_2.convert_tokens_to_ids("<|endoftext|>"))
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=tiny_sdxl_unet(), scheduler=tiny_sdxl_scheduler(),
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
    )
    folder = root / "tiny-sdxl"
    pipe.save_pretrained(folder)
    return folder
