"""The embedded model's architecture and its Stable-Diffusion-format folder.

A pixel-space `UNet2DConditionModel` (32x32 RGB, values in [-1, 1]) conditioned on the hidden states of the
frozen all-MiniLM-L6-v2 encoder through cross-attention at 8x8 and 4x4 and, as SDXL does with pooled text,
through the time embedding (`addition_embed_type="text"`: attention-pooled text added to the timestep
embedding), so that global properties such as a tone grade reach every resolution. v-prediction
(Salimans & Ho 2022) on a linear DDPM schedule (Ho et al. 2020).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from avert.models.defaults import DEFAULTS_FILE, defaults_file_text
from avert.models.minilm import EXTERNAL_FILE, external_reference, minilm_folder

SIZE = 32
TRAINING_FILE = "training.json"
TEXT_TOKENS = 32

UNET_CONFIG = dict(
    sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1,
    block_out_channels=(32, 64, 128, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=384, attention_head_dim=4, norm_num_groups=32,
    addition_embed_type="text", addition_embed_type_num_heads=4,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
    prediction_type="v_prediction", clip_sample=False, steps_offset=1, timestep_spacing="leading",
)

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": [None, None],
    "text_encoder": ["transformers", "BertModel"],
    "tokenizer": ["transformers", "BertTokenizerFast"],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
}


def new_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def new_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def load_text_encoder():
    """The frozen MiniLM encoder and its tokenizer (padding to TEXT_TOKENS), configured as exported."""
    from transformers import BertModel

    config, tokenizer = text_encoder_config()
    encoder = BertModel.from_pretrained(minilm_folder(), config=config, use_safetensors=True)
    return encoder.eval().requires_grad_(False), tokenizer


def text_encoder_config():
    """MiniLM's config with `use_attention_mask` (diffusers then passes the mask) and its tokenizer."""
    from transformers import AutoTokenizer, BertConfig

    folder = minilm_folder()
    config = BertConfig.from_pretrained(folder)
    config.use_attention_mask = True
    return config, AutoTokenizer.from_pretrained(folder, model_max_length=TEXT_TOKENS)


def export_folder(unet, out: Path, training: dict | None = None, default_guidance: str | None = None) -> Path:
    """Write a diffusers-format model folder: UNet weights, scheduler, tokenizer, text-encoder reference,
    what the weights were trained with (`training.json`) and, given `default_guidance`, the guidance method
    the model recommends (`avert.json`, read by `avert.models.defaults`)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    half = copy.deepcopy(unet).to(torch.float16)  # 15 MB instead of 30; loading casts back to float32
    half.save_pretrained(tmp / "unet", safe_serialization=True)
    new_scheduler().save_pretrained(tmp / "scheduler")
    config, tokenizer = text_encoder_config()
    tokenizer.save_pretrained(tmp / "tokenizer")
    config.save_pretrained(tmp / "text_encoder")
    (tmp / "text_encoder" / EXTERNAL_FILE).write_text(json.dumps(external_reference(), indent=2) + "\n")
    (tmp / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    if training is not None:
        (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n")
    if default_guidance is not None:
        (tmp / DEFAULTS_FILE).write_text(defaults_file_text(default_guidance))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
