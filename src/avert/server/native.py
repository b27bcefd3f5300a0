"""avert's own API (`/v1/...`): every request field by name, a negative per image, comparisons, and jobs.

`POST /v1/generate` and `POST /v1/compare` wait for the result by default; with `?wait=false` they answer 202
with the job, whose progress, images and metadata `GET /v1/jobs/{id}` reports and which `DELETE /v1/jobs/{id}`
(or `POST /v1/jobs/{id}/cancel`) stops at its next step.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from avert.errors import AvertError, FieldProblem, ValidationError
from avert.output.pnginfo import parse_parameters
from avert.pipeline.compare import NO_NEGATIVE
from avert.models.scope import read_scope
from avert.pipeline.generate import check_maps
from avert.pipeline.metadata import request_from_a1111
from avert.request import GenerationRequest, Negative
from avert.sampling.noise import resolve_seed
from avert.schema import GUIDANCE_METHODS, PARAMS, SDXL_ONLY
from avert.server import bodies, openapi
from avert.server.http import error_response, failure_response, wait_for
from avert.server.infotext import MAX_INFOTEXT_CHARS
from avert.server.jobs import CANCELLED, FAILED, Job, Part
from avert.server.results import job_json
from avert.server.security import client_of
from avert.server.state import ServerState, get_state, owner
from avert.validation import HIRES_ONLY, MASK_ONLY, METHOD_ONLY, NAG_OPTIONS, ONE_SCALE

router = APIRouter(prefix="/v1", tags=["avert API"])

MAX_COLUMNS = 8


@router.post("/generate", summary="Generate images (waits unless ?wait=false)", openapi_extra=openapi.native_body({}))
async def generate(request: Request, wait: bool = True) -> JSONResponse:
    state = get_state(request)
    job = await run_in_threadpool(_job, generate_job, state, await request.body(), owner(request))
    return await _submit(state, job, request, wait)


@router.post("/compare", summary="The same seed without a negative and with each negative in `columns`",
             openapi_extra=openapi.compare_body(MAX_COLUMNS))
async def compare(request: Request, wait: bool = True) -> JSONResponse:
    state = get_state(request)
    job = await run_in_threadpool(_job, compare_job, state, await request.body(), owner(request))
    return await _submit(state, job, request, wait)


def _job(build, state: ServerState, raw: bytes, client: str | None) -> Job:
    """Parse a body and build its job (off the event loop: parsing and validation take time)."""
    job = build(state, bodies.parse_json(raw))
    job.owner = client
    return job


async def _submit(state: ServerState, job: Job, request: Request, wait: bool) -> JSONResponse:
    state.queue.submit(job)
    if not wait:
        return JSONResponse(job_json(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})
    if not await wait_for(job, request, state.queue):
        return error_response(409, "cancelled", "the client disconnected; the job was cancelled")
    if job.status == FAILED:
        return failure_response(job.failure, {"job": job_json(job, images=False)})
    return JSONResponse(job_json(job), status_code=409 if job.status == CANCELLED else 200)


def _request(state: ServerState, body: dict, extra: tuple[str, ...]) -> tuple[str, GenerationRequest, Any]:
    """The model name, the request (every field of `GenerationRequest` by name) and the raw negative."""
    problems = bodies.unknown_fields(body, (*bodies.REQUEST_FIELDS, "model", *extra))
    if problems:
        raise ValidationError(problems)
    model = state.registry.entry(body["model"]).name if "model" in body else state.current_model
    values = {k: v for k, v in body.items() if k in bodies.REQUEST_FIELDS}
    negative = values.pop("negative_prompt", "")
    return model, bodies.request_from_fields(values), negative


def generate_job(state: ServerState, body: dict) -> Job:
    model = state.registry.entry(body["model"]).name if "model" in body else state.current_model
    parts = bodies.generate_parts(body, state.config.limits, lambda: state.registry.components(model))
    bodies.check_work(parts, state.registry.components(model), state.config.limits)
    return Job(model, parts, kind="generate")


def compare_job(state: ServerState, body: dict) -> Job:
    """Column 0 has no negative, column k the k-th of `columns` (a text or {text, weight, start, end}) alone;
    every column has the same resolved seed; with `map`, each negative's images come with their maps."""
    model, request, negative = _request(state, body, ("columns", "map"))
    maps = body.get("map", False)
    if not isinstance(maps, bool):
        raise ValidationError([FieldProblem("map", maps, "must be true or false")])
    columns = body.get("columns")
    if not (isinstance(columns, list) and 1 <= len(columns) <= MAX_COLUMNS):
        raise ValidationError([FieldProblem("columns", columns, f"must be a list of 1 to {MAX_COLUMNS} negatives "
                                            "(texts or {text, weight, start, end}), one column each")])
    if negative not in ("", None) or request.negatives:
        field = "negatives" if request.negatives else "negative_prompt"
        raise ValidationError([FieldProblem(field, body.get(field), "must be empty in a comparison; put each "
                                            "negative in `columns`")])
    negatives = _columns(columns)
    components = state.registry.components(model)
    base = bodies.check(request, state.config.limits, components, None)
    for i, n in enumerate(negatives):
        try:
            bodies.check(base.replace(negatives=(n,)), state.config.limits, components, None)
        except ValidationError as error:
            raise ValidationError([dataclasses.replace(p, field=p.field.replace("negatives[0]", f"columns[{i}]"))
                                   for p in error.problems]) from None
    if maps:
        check_maps(base)
    base = base.replace(seed=resolve_seed(base.seed))
    parts = [Part(base, NO_NEGATIVE)] + [Part(base.replace(negatives=(n,)), _label(n), maps) for n in negatives]
    bodies.check_work(parts, components, state.config.limits)
    return Job(model, parts, kind="compare")


def _columns(columns: list) -> tuple[Negative, ...]:
    problems: list[FieldProblem] = []
    hint = typing.get_type_hints(GenerationRequest)["negatives"]
    negatives = bodies.convert(columns, hint, "columns", problems)
    bad = [FieldProblem(f"columns[{i}]", c, "must be a text or {text, weight, start, end}")
           for i, (c, n) in enumerate(zip(columns, negatives)) if not isinstance(n, Negative)]
    if problems or bad:
        raise ValidationError(problems + bad)
    return negatives


def _label(negative: Negative) -> str:
    """The column label as the guide writes it; weight and window only where they are not the defaults."""
    extras = ([f"weight {negative.weight:g}"] if negative.weight != 1 else []) + (
        [f"steps {negative.start:g}-{negative.end:g}"] if (negative.start, negative.end) != (0, 1) else [])
    return f"Negative prompt: {negative.text}" + (f" ({', '.join(extras)})" if extras else "")


@router.get("/jobs/{job_id}", summary="A job's status and progress (with ?preview=true, a live preview of the image "
            "being sampled); images, seeds and metadata once done")
async def get_job(job_id: str, request: Request, images: bool = True, preview: bool = False) -> JSONResponse:
    job = get_state(request).queue.get(job_id, client_of(request.scope))
    if job is None:
        return _no_job(job_id)
    return JSONResponse(await run_in_threadpool(job_json, job, images, preview))


@router.delete("/jobs/{job_id}", summary="Cancel a job (it stops at its next step)")
async def delete_job(job_id: str, request: Request) -> JSONResponse:
    return _cancel(job_id, request)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job (it stops at its next step)")
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    return _cancel(job_id, request)


def _cancel(job_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    job = state.queue.get(job_id, client_of(request.scope))
    if job is None:
        return _no_job(job_id)
    state.queue.cancel(job)
    return JSONResponse(job_json(job, images=False), status_code=202)


def _no_job(job_id: str) -> JSONResponse:
    problem = FieldProblem("job_id", job_id[:64], "must be the id of a job of yours this server still holds")
    return JSONResponse({"error": "not found", "detail": str(problem),
                         "errors": [{"field": "job_id", "value": problem.value, "allowed": problem.allowed,
                                     "message": str(problem)}]}, status_code=404)


@router.post("/infotext", summary="The request an infotext (A1111's parameters text, or avert's) describes: the "
             "fields it sets that differ from the defaults (paste an infotext to fill a form)")
async def read_infotext(request: Request) -> dict:
    body = bodies.parse_json(await request.body())
    problems = bodies.unknown_fields(body, ("infotext",))
    text = body.get("infotext")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_INFOTEXT_CHARS:
        shown = text[:100] + "..." if isinstance(text, str) and len(text) > 100 else text
        problems.append(FieldProblem("infotext", shown, f"must be the text of an infotext, 1 to {MAX_INFOTEXT_CHARS} "
                                     "characters (prompt, a Negative prompt: line, then Steps: ..., Seed: ...)"))
    if problems:
        raise ValidationError(problems)
    try:
        made = request_from_a1111(parse_parameters(text))
    except AvertError as error:
        raise ValidationError([FieldProblem("infotext", text[:100], str(error))]) from None
    defaults, fields = GenerationRequest().to_dict(), made.to_dict()
    return {"fields": {k: v for k, v in fields.items() if v != defaults[k]}}


@router.get("/models", summary="The served models, by name, and the default; `about`: what each model is, where "
            "its folder says (scope.json: the embedded model), else null")
async def models(request: Request) -> dict:
    state = get_state(request)
    names = list(state.registry.names())
    return {"models": names, "default": state.current_model,
            "about": {name: _about(state.registry.entry(name).path) for name in names}}


def _about(path) -> dict | None:
    """A model's scope, read from its folder without loading it (None: it says nothing, or it is a file)."""
    try:
        scope = read_scope(path) if path.is_dir() else None
    except AvertError:
        return None
    return None if scope is None else {"about": scope.about, "concepts": list(scope.concepts)}


@router.get("/schema", summary="Every request field: type, default, bounds, choices and help (drives the page)")
async def schema(request: Request) -> dict:
    limits = get_state(request).config.limits
    params = [{"name": p.name, "type": p.type.__name__, "default": p.default, "unset": p.unset or None,
               "help": p.help,
               "allowed": p.describe_allowed(limits), "choices": list(p.choices),
               "min": p.low(limits) if p.low else None, "max": p.high(limits) if p.high else None,
               "multiple_of": p.multiple_of} for p in PARAMS]
    return {"params": params, "fields": list(bodies.REQUEST_FIELDS), "limits": dataclasses.asdict(limits),
            "max_columns": MAX_COLUMNS, "groups": GROUPS,
            "method_options": {m: [n for methods, names in METHOD_ONLY.items() if m in methods for n in names]
                               for m in GUIDANCE_METHODS},
            "one_scale": list(ONE_SCALE)}


# the page's sections (the prompt, negatives, model, sampler, schedule type, steps, CFG, seed, size, batch and eta are
# its first section)
GROUPS = {
    "guidance": ["guidance", "negatives_rule", "negative_scale", "guidance_rescale", "guidance_start", "guidance_end",
                 "guidance_sigma_min", "guidance_sigma_max", "s_min_uncond", "s_min_uncond_all", "guidance_reuse",
                 *dict.fromkeys(n for names in METHOD_ONLY.values() for n in names)],
    "nag": ["nag_scale", *NAG_OPTIONS],
    "img2img": ["strength", "resize_mode", "initial_noise_multiplier"],
    "mask": list(MASK_ONLY),
    "hires": ["enable_hr", *HIRES_ONLY],
    "text": ["clip_skip", "emphasis", "tiling"],
    "sdxl": list(SDXL_ONLY),
}


@router.get("/status", summary="Queue length, running jobs, worker health and resident memory")
async def status(request: Request) -> dict:
    queue = get_state(request).queue
    return {"waiting": queue.waiting(), "running": [j.id for j in queue.running()],
            "queue_size": queue.size, "workers": queue.workers_alive(), "rss_bytes": _rss_bytes(),
            "process": os.getpid()}  # which process answered (replicas of `avert serve --ray` differ)


def _rss_bytes() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
