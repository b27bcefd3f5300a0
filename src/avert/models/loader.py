"""Loading models offline: diffusers folders and single-file checkpoints, never touching a hub.

- A diffusers folder (`model_index.json`) is loaded component by component with diffusers' and
  transformers' own classes, safetensors only unless pickles are explicitly allowed.
- A single `.safetensors` in the original SD layout goes through `avert.models.single_file`.
- `.ckpt` / `.pt` / `.pth` / `.bin` are pickles: refused unless `allow_pickle`, and then read with
  `torch.load(weights_only=True)` and converted to safetensors before diffusers sees them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from avert.errors import ModelLoadError  # noqa: E402
from avert.models.components import Components, ModelSource  # noqa: E402
from avert.models.defaults import read_default_guidance  # noqa: E402
from avert.models.hashing import model_hash  # noqa: E402
from avert.models.scope import read_scope  # noqa: E402

ZERO_TERMINAL_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection", "BertModel")
SDXL_SECOND_ENCODERS = ("CLIPTextModelWithProjection",)
TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast", "BertTokenizer", "BertTokenizerFast", "AutoTokenizer")


def load_model(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    config_dir: Path | None = None,
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
) -> Components:
    """Load a model from a diffusers folder or a single checkpoint file, offline.

    `prediction_type` ("epsilon" or "v_prediction") overrides the model's scheduler config; for an SD 2.x
    single file it also picks the 512 base (epsilon) or 768-v configs. `zero_terminal_snr` rescales the noise
    schedule to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed":
    diffusers' `rescale_betas_zero_snr`, with the "trailing" timesteps it recommends), as the fine-tunes trained
    that way need; a single file that carries a `ztsnr` key asks for it itself.
    """
    components = _load_any(Path(path).expanduser(), allow_pickle, config_dir, prediction_type)
    config = dict(components.scheduler_config)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    if zero_terminal_snr:
        config.update(ZERO_TERMINAL_SNR)
    return dataclasses.replace(components, scheduler_config=config)


def _load_any(path: Path, allow_pickle: bool, config_dir: Path | None, prediction_type: str | None) -> Components:
    if not path.exists():
        raise ModelLoadError(f"model: {str(path)!r} does not exist; give a diffusers folder or a .safetensors file")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model: {str(path)!r} is not readable")
    if path.is_dir():
        return _load_folder(path, allow_pickle)
    if not path.is_file():  # a FIFO or a device would block or never end
        raise ModelLoadError(f"model: {str(path)!r} is neither a folder nor a regular file")
    if path.suffix == ".safetensors":
        return _load_single(path, path, config_dir, prediction_type)
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, allow_pickle, config_dir, prediction_type)
    raise ModelLoadError(
        f"model: {str(path)!r} has an unknown type; expected a diffusers folder (with model_index.json) "
        "or a .safetensors checkpoint"
    )


def _load_folder(path: Path, allow_pickle: bool) -> Components:
    index = _read_index(path)
    _check_family(path, index)
    guidance = read_default_guidance(path)  # a bad avert.json is reported before any weights are read
    scope = read_scope(path)
    try:
        # with allow_pickle, safetensors are still preferred where present (None), pickles read where not
        components = _folder_components(path, index, use_safetensors=None if allow_pickle else True)
    except (OSError, ValueError, KeyError, TypeError, EnvironmentError) as exc:
        hint = "" if allow_pickle else " (only .safetensors weights are read unless --allow-pickle is given)"
        raise ModelLoadError(f"model: cannot load {str(path)!r}: {exc}{hint}") from exc
    return dataclasses.replace(components, default_guidance=guidance, scope=scope)


def _check_family(path: Path, index: dict) -> None:
    """SD 1.x/2.x (one text encoder) or SDXL base type (two); a refiner, an SDXL inpainting UNet or another
    pipeline is named and refused."""
    name = index.get("_class_name", "a pipeline")
    if "unet" not in index:
        raise ModelLoadError(f"model: {str(path)!r} is {name} without a UNet; avert runs Stable Diffusion 1.x/2.x "
                             "and SDXL models")
    if "text_encoder_2" in index and (index.get("text_encoder") or [None])[0] is None:
        raise ModelLoadError(f"model: {str(path)!r} is an SDXL refiner ({name}: only the second text encoder); "
                             "load an SDXL base-type model")
    if "text_encoder_2" in index:
        try:
            channels = json.loads((path / "unet" / "config.json").read_text()).get("in_channels", 4)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model: cannot read {str(path / 'unet' / 'config.json')!r}: {exc}") from exc
        if channels != 4:
            raise ModelLoadError(f"model: {str(path)!r} is an SDXL UNet with {channels} input channels (an "
                                 "inpainting or edit model); avert runs SDXL base-type models")


def _read_index(path: Path) -> dict:
    try:
        return json.loads((path / "model_index.json").read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"model: folder {str(path)!r} has no model_index.json; is it a diffusers model?")
    except ValueError as exc:
        raise ModelLoadError(f"model: {str(path / 'model_index.json')!r} is not valid JSON: {exc}") from exc


def _folder_components(path: Path, index: dict, use_safetensors: bool | None) -> Components:
    import diffusers
    import transformers

    text_cls = _allowed_class(index, "text_encoder", TEXT_ENCODERS)
    tok_cls = _allowed_class(index, "tokenizer", TOKENIZERS)
    fp32 = dict(use_safetensors=use_safetensors, torch_dtype=torch.float32)  # fp16 files are upcast (fp16 is
    unet = diffusers.UNet2DConditionModel.from_pretrained(path / "unet", **fp32)  # unusable on CPUs)
    vae = None
    if index.get("vae", [None])[0] is not None:
        vae = diffusers.AutoencoderKL.from_pretrained(path / "vae", **fp32)
    text_encoder = _text_encoder(path / "text_encoder", text_cls, use_safetensors)
    tokenizer = getattr(transformers, tok_cls).from_pretrained(path / "tokenizer")
    scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    components = _assemble(unet, vae, text_encoder, tokenizer, scheduler_config, path, "diffusers-folder")
    if "text_encoder_2" not in index:
        return components
    second = _text_encoder(path / "text_encoder_2", _allowed_class(index, "text_encoder_2", SDXL_SECOND_ENCODERS),
                           use_safetensors).eval().requires_grad_(False)
    tokenizer_2 = getattr(transformers, _allowed_class(index, "tokenizer_2", TOKENIZERS)).from_pretrained(
        path / "tokenizer_2")
    return dataclasses.replace(components, text_encoder_2=second, tokenizer_2=tokenizer_2,
                               force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)))


def _text_encoder(folder: Path, class_name: str, use_safetensors: bool | None):
    """The folder's text encoder, or the installed package weights its `external.json` points at."""
    import transformers

    from avert.models.minilm import EXTERNAL_FILE, load_external_text_encoder

    if (folder / EXTERNAL_FILE).exists():
        return load_external_text_encoder(folder)
    return getattr(transformers, class_name).from_pretrained(folder, use_safetensors=use_safetensors)


def _allowed_class(index: dict, component: str, allowed: tuple[str, ...]) -> str:
    entry = index.get(component) or [None, None]
    if entry[1] not in allowed:
        raise ModelLoadError(f"model: {component} class {entry[1]!r} is not supported; allowed: {', '.join(allowed)}")
    return entry[1]


def _load_single(path: Path, source: Path, config_dir: Path | None, prediction_type: str | None) -> Components:
    from avert.models.single_file import load_single_file

    pipe = load_single_file(path, config_dir=config_dir, prediction_type=prediction_type)
    components = _assemble(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config),
                           source, "single-file")
    if getattr(pipe, "text_encoder_2", None) is None:
        return components
    return dataclasses.replace(components, text_encoder_2=pipe.text_encoder_2.eval().requires_grad_(False),
                               tokenizer_2=pipe.tokenizer_2,
                               force_zeros_for_empty_prompt=bool(pipe.config.force_zeros_for_empty_prompt))


def _load_pickle(path: Path, allow_pickle: bool, config_dir: Path | None, prediction_type: str | None) -> Components:
    if not allow_pickle:
        raise ModelLoadError(
            f"model: {str(path)!r} is a pickle file ({path.suffix}), which can run arbitrary code when loaded; "
            "convert it to .safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for unsafe or broken files
        raise ModelLoadError(f"model: {str(path)!r} could not be read safely (weights_only=True): {exc}") from exc
    state = state.get("state_dict", state)
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / (path.stem + ".safetensors")
        save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, str(converted))
        return _load_single(converted, path, config_dir, prediction_type)


EMBEDDED_NAME = "embedded"


def model_name(path: Path) -> str:
    """The name results, infotexts and the server's model list show: A1111's (the file stem, or the folder's
    name); "embedded" for the shipped default model."""
    from avert.models.default import EMBEDDED_MODEL

    if path.resolve() == EMBEDDED_MODEL.resolve():
        return EMBEDDED_NAME
    return path.stem if path.is_file() else path.name


def _assemble(unet, vae, text_encoder, tokenizer, scheduler_config, path: Path, kind: str) -> Components:
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.eval().requires_grad_(False)
    source = ModelSource(path=path, name=model_name(path), hash=model_hash(path), kind=kind)
    return Components(unet, vae, text_encoder, tokenizer, dict(scheduler_config), source)
