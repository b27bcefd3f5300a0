"""AUTOMATIC1111's web API, the lists, options and PNG info (`/sdapi/v1/...`): what clients call to fill their
menus, switch the model and read a PNG's parameters. txt2img, progress and interrupt are in `a1111`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from avert.conditioning.embeddings import load_embeddings
from avert.errors import AvertError, FieldProblem, ValidationError
from avert.init_image import decode_base64
from avert.schema import HR_UPSCALERS, LATENT_UPSCALERS
from avert.output.pnginfo import parse_parameters, read_png_metadata
from avert.sampling.samplers import SAMPLERS, SCHEDULE_TYPES
from avert.server import bodies, openapi
from avert.server.state import ServerState, get_state

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])

# A1111's schedulers by name and label (its /sdapi/v1/schedulers), those avert has (`SCHEDULE_TYPES`)
SCHEDULERS = tuple({"name": label.lower().replace(" ", "_"), "label": label, "aliases": None,
                    "default_rho": {"Karras": 7.0, "Exponential": 1.0}.get(label, -1.0), "need_inner_model": False}
                   for label in SCHEDULE_TYPES)
ANCESTRAL_ETA = 1.0  # diffusers' ancestral and SDE samplers, like A1111's default eta_ancestral
DDIM_ETA = 0.0  # avert's DDIM, like A1111's default eta_ddim


# ---------------------------------------------------------------- lists and options


@router.get("/samplers")
async def samplers() -> list[dict]:
    return [{"name": s.name, "aliases": [], "options": dict(s.options)} for s in SAMPLERS.values()]


@router.get("/schedulers")
async def schedulers() -> list[dict]:
    return list(SCHEDULERS)


@router.get("/sd-models")
async def sd_models(request: Request) -> list[dict]:
    registry = get_state(request).registry
    return [{"title": name, "model_name": name, "hash": None, "sha256": None,
             "filename": registry.entry(name).filename, "config": None} for name in registry.names()]


@router.post("/refresh-checkpoints")
async def refresh_checkpoints(request: Request) -> None:
    await run_in_threadpool(get_state(request).registry.refresh)


@router.get("/embeddings", summary="Textual-inversion embeddings of the configured folder, by name")
async def embeddings(request: Request) -> dict:
    library = get_state(request).queue.embeddings
    loaded = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                     "shape": int(e.vectors.shape[1]), "vectors": e.length} for name, e in library.embeddings.items()}
    skipped = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                      "vectors": None, "reason": reason} for name, reason in library.problems.items()}
    return {"loaded": loaded, "skipped": skipped}


@router.post("/refresh-embeddings", summary="Read the embeddings folder again")
async def refresh_embeddings(request: Request) -> None:
    queue = get_state(request).queue
    queue.embeddings = await run_in_threadpool(load_embeddings, get_state(request).config.embeddings_dir)


@router.get("/prompt-styles", summary="The styles of the server's --styles file (A1111's styles.csv), in its order")
async def prompt_styles(request: Request) -> list:
    return [style.as_a1111() for style in get_state(request).config.styles]


@router.get("/scripts")
async def scripts() -> dict:
    return {"txt2img": [], "img2img": []}


@router.get("/script-info")
async def script_info() -> list:
    return []


# Lists of things avert does not have (A1111 fills them from model folders and extensions): clients call them to
# fill their menus, so they answer in A1111's shape, empty.
@router.get("/upscalers", summary="The hires fix's pixel upscalers (A1111's built-in Lanczos and Nearest)")
async def upscalers() -> list[dict]:
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in HR_UPSCALERS if name not in LATENT_UPSCALERS]


@router.get("/latent-upscale-modes", summary="The hires fix's latent upscale modes")
async def latent_upscale_modes() -> list[dict]:
    return [{"name": name} for name in LATENT_UPSCALERS]


@router.get("/loras", summary="The LoRA files of --lora-dir, by name (a prompt's <lora:NAME:WEIGHT>)")
async def loras(request: Request) -> list[dict]:
    library = get_state(request).queue.loras
    return [{"name": name, "alias": name, "path": path.name, "metadata": {}} for name, path in library.files.items()]


@router.post("/refresh-loras", summary="Read the LoRA folder again")
async def refresh_loras(request: Request) -> None:
    from avert.models.lora import load_loras

    state = get_state(request)
    state.queue.loras = await run_in_threadpool(load_loras, state.config.lora_dir)


for _path in ("/sd-vae", "/hypernetworks", "/face-restorers", "/realesrgan-models"):
    router.add_api_route(_path, lambda: [], methods=["GET"], summary="None in avert (an empty list, A1111's shape)")
for _path in ("/refresh-vae",):
    router.add_api_route(_path, lambda: None, methods=["POST"], summary="Nothing to refresh in avert (null)")


@router.get("/cmd-flags", summary="avert serve's settings under A1111's flag names where they match, and its own")
async def cmd_flags(request: Request) -> dict:
    """A1111 answers with every argparse destination; clients read a few (api, listen, port, ...). Neither the API
    keys nor the server's folders are shown (errors redact paths too), only whether there are any."""
    config = get_state(request).config
    return {"api": True, "nowebui": False, "listen": not config.loopback, "server_name": config.host,
            "port": config.port, "ckpt_dir": None, "embeddings_dir": None, "api_auth": bool(config.api_keys),
            "cors_allow_origins": ",".join(config.cors_origins) or None, "use_cpu": ["all"] if config.device == "cpu"
            else [], "precision": config.precision, "avert_queue_size": config.queue_size,
            "avert_rate_limit": config.rate_limit, "avert_max_work": config.limits.max_work}


# A1111 options avert acts on (besides sd_model_checkpoint): each sets a request field for every A1111 request that
# does not set it itself (override_settings wins). avert_guidance is avert's: null is the model's default method.
ACTING_OPTIONS = {"CLIP_stop_at_last_layers": ("clip_skip", 1), "avert_guidance": ("guidance", None),
                  "overlay_inpaint": ("overlay_inpaint", True),
                  "initial_noise_multiplier": ("initial_noise_multiplier", 1.0)}
# Options whose value avert cannot change (it would act in A1111): they must keep the value shown.
# eta's options: the eta of the samplers that take one when a request's `eta` is null (A1111's meaning)
ETA_OPTIONS = {"eta_ancestral": ANCESTRAL_ETA, "eta_ddim": DDIM_ETA}
FIXED_OPTIONS = {"sd_checkpoint_hash": None, "samples_format": "png", "sd_vae": "None", "enable_pnginfo": True, "samples_save": False,
                 "grid_save": False}
MAX_KEPT_OPTIONS = 512  # other options are kept as given (no effect here), within these bounds
MAX_OPTION_BYTES = 8192
_OPTION_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def options(state: ServerState) -> dict[str, Any]:
    """The options: kept ones, the fixed ones, the acting ones and the checkpoint (A1111's names)."""
    acting = {key: default if state.option_fields.get(name) is None else state.option_fields[name]
              for key, (name, default) in ACTING_OPTIONS.items()}
    return {**ETA_OPTIONS, **state.kept_options, **FIXED_OPTIONS, **acting, "sd_model_checkpoint": state.current_model}


@router.get("/options")
async def get_options(request: Request) -> dict:
    return options(get_state(request))


@router.post("/options", summary="Set options: sd_model_checkpoint switches the model, CLIP_stop_at_last_layers and "
             "avert_guidance set the default clip skip and guidance, eta_ancestral and eta_ddim the default eta; others are kept", openapi_extra=openapi.options_body(
                 {}, ()))
async def set_options(request: Request) -> None:
    state = get_state(request)
    body = await run_in_threadpool(bodies.parse_json, await request.body())
    fields, kept, problems = _option_changes(state, body)
    if problems:
        raise ValidationError(problems)
    name = None
    if "sd_model_checkpoint" in body:
        name = state.registry.entry(model_name(body["sd_model_checkpoint"]), "sd_model_checkpoint").name
        await run_in_threadpool(state.registry.components, name)  # A1111 loads on switch; errors surface here
    with state.lock:
        state.current_model = name or state.current_model
        state.option_fields.update(fields)
        state.kept_options.update(kept)


def _option_changes(state: ServerState, body: dict) -> tuple[dict, dict, list[FieldProblem]]:
    """The request fields the acting options set, the options to keep, and every problem, all checked before
    anything changes (A1111 sets the keys one by one and keeps what it set before an error)."""
    fields, kept, problems = {}, {}, []
    for key, value in body.items():
        if key == "sd_model_checkpoint":
            continue
        if key in ACTING_OPTIONS:
            name, default = ACTING_OPTIONS[key]
            fields[name] = value
            problems += _acting_problems(key, name, value, default)
        elif key in ETA_OPTIONS:
            problems += eta_option_problems(key, value)
            kept[key] = value
        elif key in FIXED_OPTIONS:
            if value != FIXED_OPTIONS[key]:
                problems.append(FieldProblem(key, value, f"must be {FIXED_OPTIONS[key]!r}: avert does not change it "
                                             "(options that act: sd_model_checkpoint, " + ", ".join([*ACTING_OPTIONS, *ETA_OPTIONS])
                                             + "; others are kept without effect)"))
        elif not _OPTION_KEY.fullmatch(key):
            problems.append(FieldProblem("options", key, "option names must be 1 to 128 letters, digits, '_', '.' "
                                         "or '-'"))
        elif len(json.dumps(value)) > MAX_OPTION_BYTES:
            problems.append(FieldProblem(key, value, f"must be at most {MAX_OPTION_BYTES} bytes of JSON"))
        else:
            kept[key] = value
    if len({**state.kept_options, **kept}) > MAX_KEPT_OPTIONS:
        problems.append(FieldProblem("options", f"{len({**state.kept_options, **kept})} options",
                                     f"must keep at most {MAX_KEPT_OPTIONS} options avert does not act on"))
    return fields, kept, problems


def eta_option_problems(key: str, value: Any) -> list[FieldProblem]:
    """eta_ancestral / eta_ddim: a number that the request field `eta` allows."""
    from avert.schema import PARAMS_BY_NAME, Limits
    from avert.validation import check_field

    param = PARAMS_BY_NAME["eta"]
    if value is not None and check_field(param, value, Limits()) is None:
        return []
    return [FieldProblem(key, value, param.describe_allowed(Limits()))]


def _acting_problems(key: str, name: str, value: Any, default: Any) -> list[FieldProblem]:
    """An acting option's value, checked as the request field it sets, alone (null: that field's default)."""
    from avert.schema import PARAMS_BY_NAME, Limits
    from avert.validation import check_field

    if value is None or value == default:
        return []
    problem = check_field(PARAMS_BY_NAME[name], value, Limits())
    return [FieldProblem(key, problem.value, problem.allowed)] if problem is not None else []


def model_name(value: Any) -> Any:
    """A1111 titles read `name [hash]`; the name is what is looked up."""
    return re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", value) if isinstance(value, str) else value


# ---------------------------------------------------------------- png-info


@router.post("/png-info", summary="The generation parameters stored in a PNG (sent as base64; URLs are refused)",
             openapi_extra=openapi.png_info_body())
async def png_info(request: Request) -> dict:
    return await run_in_threadpool(_png_info, await request.body())  # decoding never blocks the event loop


def _png_info(raw: bytes) -> dict:
    body = bodies.parse_json(raw)
    problems = bodies.unknown_fields(body, ("image",))
    if problems:
        raise ValidationError(problems)
    try:
        meta = read_png_metadata(decode_base64(body.get("image"), "image", "a PNG"))
    except ValidationError:
        raise
    except AvertError as error:
        raise ValidationError([FieldProblem("image", "(base64 data)", f"must be a readable PNG: {error}")]) from None
    text = meta.parameters or ""
    items = {"avert": meta.record} if meta.record is not None else {}
    return {"info": text, "items": items, "parameters": _parameters_dict(text)}


def _parameters_dict(text: str) -> dict[str, str]:
    """A1111's parse_generation_parameters shape: Prompt, Negative prompt, each key, Size-1 and Size-2."""
    if not text:
        return {}
    parsed = parse_parameters(text)
    result = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt}
    for key, value in parsed.params:
        result[key] = value
        if key == "Size" and "x" in value:
            result["Size-1"], _, result["Size-2"] = value.partition("x")
    return result
