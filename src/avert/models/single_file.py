"""Offline loading of single-file Stable Diffusion 1.x / 2.x and SDXL checkpoints (original SD key layout).

A `.safetensors` file in the original (LDM) layout holds the UNet (`model.diffusion_model.*`), the
VAE (`first_stage_model.*`) and the text encoder (`cond_stage_model.*`), but no configs. The family
is detected from its keys (and shapes, where known) and the matching diffusers config folder shipped
in `avert/models/configs/` is used, so nothing is fetched from a hub.

Detection rule (`detect_family`):

1. `conditioner.embedders.*` keys: SDXL. A base-type model has CLIP-L at `conditioner.embedders.0.transformer.*` and
   OpenCLIP bigG at `conditioner.embedders.1.model.*` ("sdxl", the shipped `configs/sdxl`, base 1.0's configs); a
   refiner has only bigG, at `conditioner.embedders.0.model.*`, and an SDXL inpainting UNet 9 input channels: both
   are refused by name. A v-prediction fine-tune that marks itself with a `v_pred` key (as NoobAI's v-pred files
   do) is loaded as v-prediction, and one with a `ztsnr` key with a zero-terminal-SNR schedule.
2. No `model.diffusion_model.*` keys, or no text encoder of a known layout: refused.
3. SD 2.x when the UNet's cross-attention key
   `model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight` has a last
   dimension of 1024 (diffusers' `infer_diffusers_model_type` "v2" test). Without shapes (or without
   that key, as in tiny models), the text encoder decides: OpenCLIP keys
   (`cond_stage_model.model.*`) mean SD 2.x, CLIP keys (`cond_stage_model.transformer.text_model.*`)
   mean SD 1.x.
4. SD 2.x is reported as "sd2-v" (768 px, v-prediction): the weights do not tell v-prediction from
   epsilon, and diffusers maps every "v2" file to `stabilityai/stable-diffusion-2-1` (768, v) too; its
   only other hint, `global_step == 875000` in legacy `.ckpt` files, does not exist in `.safetensors`.
   Pass `prediction_type="epsilon"` to `load_single_file` for a 512 SD 2.x base model.
5. A UNet taking 9 input channels (`input_blocks.0.0.weight` of shape [320, 9, 3, 3], the sd-v1-5-inpainting and
   512-inpainting layout) is an inpainting model: it loads with the family's configs, the UNet's `in_channels`
   set to 9. Other input widths (8: instruct-pix2pix) are refused by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import FieldProblem, ModelLoadError, ValidationError

CONFIG_ROOT = Path(__file__).parent / "configs"
FAMILIES = ("sd15", "sd2-base", "sd2-v", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")

UNET_PREFIX = "model.diffusion_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer.text_model."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_PREFIX = "conditioner.embedders."
SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SDXL_BIG_G = "conditioner.embedders.1.model."
SDXL_REFINER = "conditioner.embedders.0.model."
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
CROSS_ATTN_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
CONV_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
EXPECTED = (
    f"expected original Stable Diffusion 1.x/2.x keys: '{UNET_PREFIX}*' (UNet), "
    f"'first_stage_model.*' (VAE) and '{SD1_TEXT_PREFIX}*' (SD 1.x CLIP) "
    f"or '{SD2_TEXT_PREFIX}transformer.resblocks.*' (SD 2.x OpenCLIP)"
)


def shipped_config_dir(family: str) -> Path:
    """Return the diffusers config folder shipped for `family` ("sd15", "sd2-base" or "sd2-v")."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return CONFIG_ROOT / family


def _is_sd2(has_open_clip_text: bool, shapes: Mapping[str, tuple] | None) -> bool:
    """Decide SD 2.x vs 1.x: by cross-attention width when its shape is known, else by the text encoder."""
    if shapes is not None and CROSS_ATTN_KEY in shapes:
        return tuple(shapes[CROSS_ATTN_KEY])[-1] == 1024
    return has_open_clip_text


def detect_family(keys: Iterable[str], tensors_shapes: Mapping[str, tuple] | None = None, *,
                  name: str = "checkpoint") -> str:
    """Return the family of an original-layout SD state dict: "sd15" or "sd2-v" (rule in the module doc).

    Weights cannot tell an SD 2.x 512 epsilon model ("sd2-base") from a 768 v-prediction one, so, as in
    diffusers, SD 2.x is reported as "sd2-v"; callers choose "sd2-base" from the user's prediction type.
    `name` (usually the file name) is used in the ModelLoadError raised for any other layout.
    """
    keys = set(keys)
    if any(k.startswith(SDXL_PREFIX) for k in keys):
        return _sdxl_family(keys, tensors_shapes, name)
    has_sd1_text = any(k.startswith(SD1_TEXT_PREFIX) for k in keys)
    has_sd2_text = any(k.startswith(SD2_TEXT_PREFIX + "transformer.resblocks.") for k in keys)
    if not any(k.startswith(UNET_PREFIX) for k in keys) or not (has_sd1_text or has_sd2_text):
        raise ModelLoadError(f"{name}: not a Stable Diffusion 1.x/2.x checkpoint; {EXPECTED}")
    channels = unet_in_channels(tensors_shapes)
    if channels not in (4, 9):
        raise ModelLoadError(f"{name}: the UNet takes {channels} input channels (an instruct-pix2pix or other "
                             "special model); supported: 4 (text to image) and 9 (inpainting)")
    return "sd2-v" if _is_sd2(has_sd2_text, tensors_shapes) else "sd15"


def _sdxl_family(keys: set[str], shapes: Mapping[str, tuple] | None, name: str) -> str:
    """"sdxl" for a base-type SDXL file; a refiner, an inpainting UNet or a partial file is named and refused."""
    has = {prefix: any(k.startswith(prefix) for k in keys) for prefix in (SDXL_CLIP_L, SDXL_BIG_G, SDXL_REFINER)}
    if has[SDXL_REFINER] and not has[SDXL_CLIP_L]:
        raise ModelLoadError(f"{name}: this is an SDXL refiner (only OpenCLIP bigG, at '{SDXL_REFINER}*'); load an "
                             "SDXL base-type model")
    if not (has[SDXL_CLIP_L] and has[SDXL_BIG_G]) or not any(k.startswith(UNET_PREFIX) for k in keys):
        raise ModelLoadError(f"{name}: an SDXL checkpoint needs '{UNET_PREFIX}*' (UNet), '{SDXL_CLIP_L}*' (CLIP-L) "
                             f"and '{SDXL_BIG_G}*' (OpenCLIP bigG) keys; some are missing")
    channels = unet_in_channels(shapes)
    if channels != 4:
        raise ModelLoadError(f"{name}: an SDXL UNet with {channels} input channels (an inpainting or edit model); "
                             "avert runs SDXL base-type models")
    return "sdxl"


def unet_in_channels(shapes: Mapping[str, tuple] | None) -> int:
    """The UNet's input channels from its first convolution's weight (4 where the shape is not known)."""
    if shapes is None or CONV_IN_KEY not in shapes:
        return 4
    return int(tuple(shapes[CONV_IN_KEY])[1])


def read_key_shapes(path: Path) -> dict[str, tuple]:
    """Return {key: shape} of a `.safetensors` file without loading any tensor data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FileNotFoundError:
        raise ModelLoadError(f"{path.name}: file not found ({path})") from None
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ModelLoadError(f"{path.name}: not a readable .safetensors file ({exc}); "
                             "only .safetensors single files are supported") from exc


def _check_prediction_type(prediction_type: str | None) -> None:
    """Raise ValidationError unless `prediction_type` is None or a supported value."""
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValidationError([FieldProblem("prediction_type", prediction_type,
                                            f"one of {', '.join(PREDICTION_TYPES)} (or none)")])


def _choose_family(family: str, prediction_type: str | None) -> str:
    """An SD 2.x file declared epsilon uses the 512 base configs; otherwise keep the detected family."""
    if family == "sd2-v" and prediction_type == "epsilon":
        return "sd2-base"
    return family


def _override_prediction(pipe, prediction_type: str) -> None:
    """Replace the pipeline's scheduler by the same class configured for `prediction_type`."""
    scheduler = pipe.scheduler
    if scheduler.config.get("prediction_type") != prediction_type:
        pipe.scheduler = type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


def load_single_file(path: Path, config_dir: Path | None = None, prediction_type: str | None = None):
    """Load an original-layout SD 1.x/2.x `.safetensors` file as a `diffusers.StableDiffusionPipeline` (SDXL: a
    `StableDiffusionXLPipeline`).

    Configs come from `config_dir` (a diffusers folder; only its configs and tokenizer are read) or
    from the shipped folder of the detected family. `prediction_type` ("epsilon" or "v_prediction")
    overrides the scheduler's; for SD 2.x, "epsilon" selects the 512 base configs. No safety checker,
    no hub access. Every failure is a ModelLoadError naming the file and the cause.
    """
    path = Path(path)
    _check_prediction_type(prediction_type)
    shapes = read_key_shapes(path)
    family = detect_family(shapes.keys(), shapes, name=path.name)
    family = _choose_family(family, prediction_type)
    if prediction_type is None and V_PRED_KEY in shapes:
        prediction_type = "v_prediction"  # the file says so (NoobAI's v-pred files carry an empty `v_pred` key)
    config = Path(config_dir) if config_dir is not None else shipped_config_dir(family)
    if not (config / "model_index.json").is_file():
        raise ModelLoadError(f"{path.name}: config folder {config} has no model_index.json")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    try:
        with _configs_for(config, unet_in_channels(shapes)) as folder:
            if family == "sdxl":
                pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(folder),
                                                                  local_files_only=True)
            else:
                pipe = StableDiffusionPipeline.from_single_file(
                    str(path), config=str(folder), local_files_only=True,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                )
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: cannot load as {family} with configs from {config}: "
                             f"{type(exc).__name__}: {exc}") from exc
    if prediction_type is not None:
        _override_prediction(pipe, prediction_type)
    if ZTSNR_KEY in shapes:  # the file says its schedule was trained to zero terminal SNR
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                                          timestep_spacing="trailing")
    return pipe


@contextlib.contextmanager
def _configs_for(config: Path, in_channels: int) -> Iterator[Path]:
    """The config folder, or for an inpainting file a temporary copy whose UNet takes `in_channels` inputs."""
    import json
    import shutil
    import tempfile

    unet_config = json.loads((config / "unet" / "config.json").read_text())
    if unet_config.get("in_channels", 4) == in_channels:
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="avert-config-") as temporary:
        copy = Path(shutil.copytree(config, Path(temporary) / config.name))
        (copy / "unet" / "config.json").write_text(json.dumps({**unet_config, "in_channels": in_channels}))
        yield copy
