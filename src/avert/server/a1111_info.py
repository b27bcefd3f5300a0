"""AUTOMATIC1111's web API, the lists, options and PNG info (`/sdapi/v1/...`): what clients call to fill their
menus, switch the model and read a PNG's parameters. txt2img, progress and interrupt are in `a1111`.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from avert.errors import AvertError, FieldProblem, ValidationError
from avert.output.pnginfo import parse_parameters, read_png_metadata
from avert.sampling.samplers import SAMPLERS
from avert.server import bodies, openapi
from avert.server.state import ServerState, get_state

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])

SCHEDULERS = ({"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0,
               "need_inner_model": False},
              {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False})
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


@router.get("/prompt-styles")
async def prompt_styles() -> list:
    return []


@router.get("/scripts")
async def scripts() -> dict:
    return {"txt2img": [], "img2img": []}


def options(state: ServerState) -> dict[str, Any]:
    """The options avert has, with A1111's names and (fixed) values; only sd_model_checkpoint can change."""
    return {"sd_model_checkpoint": state.current_model, "sd_checkpoint_hash": None, "CLIP_stop_at_last_layers": 1,
            "avert_guidance": None,
            "eta_ancestral": ANCESTRAL_ETA, "eta_ddim": DDIM_ETA, "samples_format": "png", "sd_vae": "None",
            "enable_pnginfo": True, "samples_save": False, "grid_save": False}


@router.get("/options")
async def get_options(request: Request) -> dict:
    return options(get_state(request))


@router.post("/options", summary="Set options; sd_model_checkpoint switches the model (by name)",
             openapi_extra=openapi.options_body({}, ()))
async def set_options(request: Request) -> None:
    state = get_state(request)
    body = await run_in_threadpool(bodies.parse_json, await request.body())
    current = options(state)
    problems = [FieldProblem(k, v, "unknown option or not settable; settable: sd_model_checkpoint (others must "
                             "equal their current value)") for k, v in body.items()
                if k != "sd_model_checkpoint" and current.get(k, object()) != v]
    if problems:
        raise ValidationError(problems)
    if "sd_model_checkpoint" in body:
        name = state.registry.entry(model_name(body["sd_model_checkpoint"]), "sd_model_checkpoint").name
        await run_in_threadpool(state.registry.components, name)  # A1111 loads on switch; errors surface here
        with state.lock:
            state.current_model = name


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
        meta = read_png_metadata(_decode_image(body.get("image")))
    except ValidationError:
        raise
    except AvertError as error:
        raise ValidationError([FieldProblem("image", "(base64 data)", f"must be a readable PNG: {error}")]) from None
    text = meta.parameters or ""
    items = {"avert": meta.record} if meta.record is not None else {}
    return {"info": text, "items": items, "parameters": _parameters_dict(text)}


def _decode_image(value: Any) -> bytes:
    allowed = "must be a PNG as base64 (optionally a data: URL); URLs are never fetched"
    if not isinstance(value, str) or not value.strip():
        raise ValidationError([FieldProblem("image", value, allowed)])
    text = value.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        raise ValidationError([FieldProblem("image", text, allowed)])
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError([FieldProblem("image", value, allowed)]) from None


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
