"""Single-file SD 1.x/2.x loading: family detection, shipped configs, and weights identical to diffusers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from avert.errors import ModelLoadError, ValidationError
from avert.models.single_file import (
    CROSS_ATTN_KEY,
    FAMILIES,
    detect_family,
    load_single_file,
    shipped_config_dir,
)
from tiny_models import build_tiny_sd_folder, write_tiny_single_file

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
VAE_KEY = "first_stage_model.encoder.conv_in.weight"
SD1_KEYS = [UNET_KEY, VAE_KEY, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
SD2_KEYS = [UNET_KEY, VAE_KEY, "cond_stage_model.model.token_embedding.weight",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
SDXL_KEYS = [UNET_KEY, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
             "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny diffusers folder, its SD 1.x-layout file and its SD 2.x (OpenCLIP) layout file."""
    root = tmp_path_factory.mktemp("tiny")
    folder = build_tiny_sd_folder(root)
    sd1 = write_tiny_single_file(folder, root / "tiny-sd1.safetensors")
    sd2 = write_tiny_single_file(folder, root / "tiny-sd2.safetensors", text_layout="open_clip")
    return folder, sd1, sd2


@pytest.fixture(scope="module")
def reference(tiny):
    """The tiny folder loaded the ordinary diffusers way."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny[0], safety_checker=None, requires_safety_checker=False)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Both modules have the same parameter names and bit-identical values."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(
    ("keys", "shapes", "family"),
    [
        (SD1_KEYS, None, "sd15"),
        (SD1_KEYS + [CROSS_ATTN_KEY], {CROSS_ATTN_KEY: (320, 768), UNET_KEY: (320, 4, 3, 3)}, "sd15"),
        (SD2_KEYS, None, "sd2-v"),
        (SD2_KEYS + [CROSS_ATTN_KEY], {CROSS_ATTN_KEY: (320, 1024)}, "sd2-v"),
        (SDXL_KEYS, None, "sdxl"),
        (SDXL_KEYS, {UNET_KEY: (320, 4, 3, 3)}, "sdxl"),
    ],
)
def test_detect_family(keys, shapes, family):
    assert detect_family(keys, shapes) == family


@pytest.mark.parametrize(
    ("keys", "shapes", "message"),
    [
        (SDXL_KEYS, {UNET_KEY: (320, 9, 3, 3)}, "an SDXL UNet with 9 input channels"),
        ([UNET_KEY, "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight"], None,
         "an SDXL refiner"),
        (SDXL_KEYS[:2], None, "some are missing"),
        (["foo.weight", "bar.bias"], None, "expected original Stable Diffusion"),
        ([UNET_KEY, VAE_KEY], None, "cond_stage_model.transformer.text_model"),
        (SD1_KEYS, {UNET_KEY: (320, 8, 3, 3)}, "8 input channels"),
    ],
)
def test_detect_family_refuses_other_layouts(keys, shapes, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        detect_family(keys, shapes, name="model.safetensors")
    assert "model.safetensors" in str(info.value)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "sdxl"])  # sdxl: tests/test_sdxl.py
def test_shipped_configs_load_offline(family):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTokenizer

    folder = shipped_config_dir(family)
    unet = UNet2DConditionModel.load_config(folder, subfolder="unet")
    text = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = DDIMScheduler.load_config(folder, subfolder="scheduler")
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert tok.model_max_length == 77 and len(tok) == 49408
    sd2 = family != "sd15"
    assert unet["cross_attention_dim"] == (1024 if sd2 else 768)
    assert unet["use_linear_projection"] is sd2
    assert unet["sample_size"] == (96 if family == "sd2-v" else 64)
    assert (text.hidden_size, text.num_hidden_layers) == ((1024, 23) if sd2 else (768, 12))
    assert scheduler["prediction_type"] == ("v_prediction" if family == "sd2-v" else "epsilon")
    if sd2:
        assert unet["attention_head_dim"] == [5, 10, 20, 20]
        assert (tok.pad_token, tok.pad_token_id) == ("!", 0)
        assert (text.hidden_act, text.intermediate_size, text.num_attention_heads) == ("gelu", 4096, 16)
    else:
        assert tok.pad_token == "<|endoftext|>"
        assert scheduler["_class_name"] == "PNDMScheduler"


def test_single_file_weights_equal_diffusers_folder(tiny, reference):
    folder, sd1, _ = tiny
    pipe = load_single_file(sd1, config_dir=folder)
    assert pipe.safety_checker is None
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(pipe, name), getattr(reference, name))
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_sd2_layout_text_encoder_loads_identically(tiny, reference):
    folder, _, sd2 = tiny
    from safetensors import safe_open

    with safe_open(str(sd2), framework="pt") as f:
        assert detect_family(f.keys()) == "sd2-v"
    pipe = load_single_file(sd2, config_dir=folder)
    assert_same_weights(pipe.text_encoder, reference.text_encoder)
    assert_same_weights(pipe.vae, reference.vae)


def test_prediction_type_overrides_scheduler(tiny):
    folder, sd1, _ = tiny
    pipe = load_single_file(sd1, config_dir=folder, prediction_type="v_prediction")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    with pytest.raises(ValidationError, match="prediction_type"):
        load_single_file(sd1, config_dir=folder, prediction_type="x0")


def test_unreadable_files_are_model_load_errors(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ModelLoadError, match="missing.safetensors"):
        load_single_file(missing)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="junk.safetensors"):
        load_single_file(junk)


def test_mismatching_shipped_config_is_a_model_load_error(tiny):
    _, sd1, _ = tiny
    with pytest.raises(ModelLoadError, match="tiny-sd1.safetensors.*sd15"):
        load_single_file(sd1)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "sdxl"])  # sdxl: tests/test_sdxl.py
def test_shipped_index_scheduler_and_tokenizer_work_through_from_single_file(tiny, tmp_path, family):
    """The shipped folder, with only the model configs swapped for tiny ones, loads the tiny file."""
    import shutil

    folder, sd1, _ = tiny
    config = shutil.copytree(shipped_config_dir(family), tmp_path / family)
    for sub in ("unet", "vae", "text_encoder"):
        shutil.copy(folder / sub / "config.json", config / sub / "config.json")
    pipe = load_single_file(sd1, config_dir=config)
    assert pipe.tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    expected = ("DDIMScheduler", "v_prediction") if family == "sd2-v" else ("PNDMScheduler", "epsilon")
    assert (type(pipe.scheduler).__name__, pipe.scheduler.config.prediction_type) == expected


def test_epsilon_sd2_file_uses_the_base_configs(tiny):
    _, _, sd2 = tiny
    with pytest.raises(ModelLoadError, match="tiny-sd2.safetensors: cannot load as sd2-base"):
        load_single_file(sd2, prediction_type="epsilon")
