"""AUTOMATIC1111's web API (`/sdapi/v1/...`): its field names, defaults and response shapes.

Clients written against A1111 (the `webuiapi` package among them) work unchanged. Fields avert does not
implement are accepted only at values where they have no effect (A1111's defaults, mostly), and refused by
name otherwise; fields A1111 does not have are ignored, as A1111 ignores them, and named in `info`. One extension: `negative_prompt` may be a list with one
negative per image (A1111's API has one negative per request). This module has txt2img, progress, interrupt
and skip; `a1111_info` the lists, options and PNG info.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from avert import __version__
from avert.errors import FieldProblem, ValidationError
from avert.sampling.samplers import AUTOMATIC, SAMPLERS
from avert.server import bodies, openapi
from avert.server.a1111_info import ETA_OPTIONS, SCHEDULERS, eta_option_problems, model_name, options
from avert.server.a1111_styles import styled_fields
from avert.server.http import error_response, failure_response, wait_for
from avert.server.infotext import apply_infotext
from avert.server.jobs import CANCELLED, FAILED, Job
from avert.server.security import client_of
from avert.server.results import job_images, job_warnings, negative_text, png_base64, preview_base64
from avert.server.state import ServerState, get_state, owner

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])

# StableDiffusionTxt2ImgProcessingAPI's fields and defaults (A1111 1.10).
TXT2IMG_DEFAULTS: dict[str, Any] = {
    "prompt": "", "negative_prompt": "", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": None, "scheduler": None,
    "batch_size": 1, "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512,
    "restore_faces": None, "tiling": None, "do_not_save_samples": False, "do_not_save_grid": False,
    "eta": None, "denoising_strength": None, "s_min_uncond": None, "s_churn": None, "s_tmax": None,
    "s_tmin": None, "s_noise": None, "override_settings": None, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False,
    "firstpass_image": None, "comments": None, "enable_hr": False, "firstphase_width": 0,
    "firstphase_height": 0, "hr_scale": 2.0, "hr_upscaler": None, "hr_second_pass_steps": 0,
    "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
    "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": None,
    "sampler_index": "Euler", "script_name": None, "script_args": [], "send_images": True,
    "save_images": False, "alwayson_scripts": {}, "infotext": None,
    **{name: None for name in ("nag_scale", "nag_tau", "nag_alpha", "nag_end")},  # avert's NAG (null: its defaults)
}


@dataclass(frozen=True)
class _OneOf:
    """A value among `values` (booleans only as themselves: False is not 0); `schema` is the JSON Schema."""

    values: tuple

    def __call__(self, value: Any) -> bool:
        return any(value == a and type(value) is not bool or value is a for a in self.values)

    def schema(self) -> dict:
        unique = {json.dumps(float(v) if type(v) is int else v): v for v in self.values}  # 0 and 0.0: one number
        return {"enum": list(unique.values())}


def _one_of(*allowed: Any) -> _OneOf:
    return _OneOf(allowed)


_empty = _OneOf((None, "", [], {}))


# Fields avert does not implement: accepted where they have no effect, else refused (never ignored).
NO_EFFECT: dict[str, tuple[Callable[[Any], bool], str]] = {
    "subseed": (lambda value: True, ""),
    "subseed_strength": (_one_of(None, 0, 0.0), "must be 0: variation seeds are not supported"),
    "seed_resize_from_h": (_one_of(None, 0, -1), "must be -1 or 0: seed resizing is not supported"),
    "seed_resize_from_w": (_one_of(None, 0, -1), "must be -1 or 0: seed resizing is not supported"),
    "restore_faces": (_one_of(None, False), "must be false or null: face restoration is not supported"),
    "s_min_uncond": (_one_of(None, 0, 0.0), "must be 0 or null in this version"),
    "s_churn": (_one_of(None, 0, 0.0), "must be 0 or null: churn is not supported"),
    "s_noise": (_one_of(None, 1, 1.0), "must be 1 or null: the noise multiplier is not supported"),
    "refiner_checkpoint": (_empty, "must be null: refiners are not supported"),
    "refiner_switch_at": (_one_of(None), "must be null: refiners are not supported"),
    "firstpass_image": (_empty, "must be null: txt2img takes no image"),
    "comments": (_empty, "must be null or empty"),
    "script_name": (_empty, "must be null: scripts are not supported"),
    "script_args": (_empty, "must be empty: scripts are not supported"),
    "alwayson_scripts": (_empty, "must be empty: scripts are not supported (GET /sdapi/v1/scripts)"),
    "save_images": (_one_of(None, False), "must be false: the server returns images and writes no files"),
}
# Accepted whatever their value: they change nothing here (never saved); the hires fields act with enable_hr
# (`avert.server.a1111_hires`), and are ignored without it, as in A1111.
IGNORED = ("do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards", "s_tmax", "s_tmin",
           "disable_extra_networks", "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
           "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
           "hr_scheduler", "hr_prompt", "hr_negative_prompt", "force_task_id", "denoising_strength", "send_images",
           "infotext")  # infotext: merged into the body before it is read (`avert.server.infotext`)



# ---------------------------------------------------------------- txt2img


@router.post("/txt2img", summary="Text to image (A1111 fields, defaults and response)",
             openapi_extra=openapi.txt2img_body(TXT2IMG_DEFAULTS, {k: rule[0].schema() for k, rule in NO_EFFECT.items()
                                                                   if isinstance(rule[0], _OneOf)}, IGNORED))
async def txt2img(request: Request) -> JSONResponse:
    return await run_a1111(request, txt2img_job, TXT2IMG_DEFAULTS, "txt2img")


async def run_a1111(request: Request, build: Callable, defaults: dict, endpoint: str,
                    echo: Callable[[dict], dict] = lambda parameters: parameters) -> JSONResponse:
    """Parse, queue and wait for an A1111 job; answer as A1111 does (`echo` shapes the echoed parameters)."""
    state = get_state(request)
    raw = await request.body()
    body, job, inpainting_model = await run_in_threadpool(_parse, state, raw, owner(request), build)
    state.queue.submit(job)
    if not await wait_for(job, request, state.queue):
        return error_response(409, "cancelled", "the client disconnected; the job was cancelled")
    if job.status == FAILED:
        return failure_response(job.failure)
    if job.status == CANCELLED:
        return error_response(409, "interrupted", f"job {job.id} was interrupted before it finished")
    known = {k: v for k, v in body.items() if k in defaults}
    return JSONResponse(txt2img_response(job, echo({**defaults, **known}), ignored_fields(body, defaults), endpoint,
                                         inpainting_model))


def _parse(state: ServerState, raw: bytes, client: str | None, build: Callable) -> tuple[dict, Job, bool]:
    """The body after the infotext merge (A1111 echoes it), its job, and whether the job's model is a 9-channel
    inpainting model (read here, off the event loop, while the model the job was checked on is loaded)."""
    body = apply_infotext(bodies.parse_json(raw))
    job = build(state, body, client)
    return body, job, bool(state.registry.components(job.model).image_channels)


# A1111 fields that avert reads itself, with the JSON types they may have (null: the default)
A1111_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "sampler_name": ((str, type(None)), "must be a sampler name (GET /sdapi/v1/samplers) or null"),
    "sampler_index": ((str, type(None)), "must be a sampler name (GET /sdapi/v1/samplers) or null"),
    "scheduler": ((str, type(None)), "must be one of: automatic, uniform, karras, exponential, sgm_uniform, or null"),
    "override_settings": ((dict, type(None)), "must be an object of options, or null"),
    "send_images": ((bool,), "must be true or false"),
    "enable_hr": ((bool, type(None)), "must be true, false or null"),
    "eta": ((int, float, type(None)), "must be a finite number or null"),
}


def _type_problems(body: dict) -> list[FieldProblem]:
    """Fields of the wrong JSON type, and numbers that are not finite (1e309 parses as infinity)."""
    return [FieldProblem(k, body[k], rule) for k, (kinds, rule) in A1111_TYPES.items()
            if k in body and (not isinstance(body[k], kinds) or (isinstance(body[k], bool) and bool not in kinds)
                              or (isinstance(body[k], float) and not math.isfinite(body[k])))]


def txt2img_job(state: ServerState, body: dict, client: str | None = None) -> Job:
    """Check an A1111 txt2img body and build its job (one part per negative run and n_iter round)."""
    from avert.server.a1111_hires import hires_fields

    return a1111_job(state, body, client, TXT2IMG_DEFAULTS, NO_EFFECT, "txt2img", hires_fields)


# avert request fields that an A1111 body does not pass through by name: A1111 has no such field (init_image), or
# its own under another name or meaning (eta per sampler, denoising_strength, an integer resize_mode), or it is
# read only with another field (the hires fields with enable_hr, the mask's with a mask), or its null means an option
NOT_SHARED = ("init_image", "strength", "resize_mode", "eta", "enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y",
              "hr_upscaler", "hr_second_pass_steps", "hr_prompt", "hr_negative_prompt", "mask", "mask_blur",
              "mask_blur_y", "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
              "initial_noise_multiplier", "inpainting_mask_invert", "overlay_inpaint")


INIT_IMAGES = "init_images"  # the per-image init images an img2img body's fields may carry besides the request's


def a1111_job(state: ServerState, body: dict, client: str | None, defaults: dict, no_effect: dict, kind: str,
              image_fields: Callable[[dict], dict] | None = None) -> Job:
    """An A1111 body (txt2img, or img2img with `image_fields` giving the init image's request fields) as a job."""
    problems: list[FieldProblem] = []  # fields A1111 does not have are ignored, as A1111 does (`ignored_fields`)
    if _type_problems(body):  # the checks below read these fields
        raise ValidationError(_type_problems(body))
    problems += [FieldProblem(k, body[k], rule[1]) for k, rule in no_effect.items()
                 if k in body and k not in bodies.REQUEST_FIELDS and not rule[0](body[k])]
    settings = styled_fields(state.config.styles, {**defaults, **body}, problems)
    model, overrides, override_problems = _override(state, settings.get("override_settings"))
    problems += override_problems
    sampler, schedule = _sampler(settings, problems)
    rounds = settings["n_iter"]
    limits = state.config.limits
    if not (type(rounds) is int and 1 <= rounds <= limits.max_batch_size):
        problems.append(FieldProblem("n_iter", rounds, f"must be an integer from 1 to {limits.max_batch_size}"))
    try:  # the request's own fields are validated too, so that every bad field is named at once
        fields = {k: settings[k] for k in ("prompt", "seed", "steps", "cfg_scale", "width", "height", "batch_size")}
        fields["seed"] = -1 if fields["seed"] is None else fields["seed"]  # A1111: a null seed is a random one
        fields["eta"] = _eta(settings.get("eta"), sampler, {**options(state), **overrides.pop("eta_options", {})})
        fields.update(image_fields(settings) if image_fields is not None else {})  # k init images: a batch of k
        size = fields["batch_size"]
        count = size * rounds if type(rounds) is int and type(size) is int else 0
        negative, per_image = bodies.split_negatives(settings["negative_prompt"], count)
        inits = fields.pop(INIT_IMAGES, None)
        if fields.get("mask") is None:
            overrides.pop("overlay_inpaint", None)  # an option for inpainting only
        if fields.get("init_image") is None:
            overrides.pop("initial_noise_multiplier", None)  # an option for img2img only
        # avert's own fields under the same name (s_min_uncond, ...); A1111's null means the default
        shared = {k: v for k, v in body.items() if k in bodies.REQUEST_FIELDS and k not in fields
                  and k not in NOT_SHARED and v is not None}
        request = _renamed(lambda: bodies.request_from_fields({**shared, **overrides, **fields,
                                                               "negative_prompt": negative, "sampler": sampler,
                                                               "schedule_type": schedule}))
        components = state.registry.components(model)
        _renamed(lambda: bodies.check(request, limits, components, per_image))
    except ValidationError as error:
        raise ValidationError(problems + list(error.problems)) from None
    if problems:
        raise ValidationError(problems)
    parts = bodies.batch_parts(request, per_image, rounds)
    if inits:
        parts = bodies.one_init_image_each(parts, inits)
    bodies.check_work(parts, components, limits)
    return Job(model, parts, kind=kind, owner=client)



A1111_NAMES = {"sampler": "sampler_name", "strength": "denoising_strength", "hr_sampler": "hr_sampler_name",
               "schedule_type": "scheduler",
               "init_image": "init_images[0]",
               "clip_skip": "override_settings.CLIP_stop_at_last_layers",
               "guidance": "override_settings.avert_guidance"}


def _renamed(build: Callable[[], Any]) -> Any:
    """Run `build`, naming problems by A1111's field names (`sampler` is `sampler_name` there)."""
    try:
        return build()
    except ValidationError as error:
        raise ValidationError([FieldProblem(A1111_NAMES.get(p.field, p.field), p.value, p.allowed)
                               for p in error.problems]) from None


def _sampler(settings: dict, problems: list[FieldProblem]) -> tuple[str | None, str]:
    """A1111's sampler_name (or sampler_index) and scheduler, as avert's sampler and schedule type: karras with a
    sampler that has a Karras name is that sampler (as A1111 before 1.9 named it), any other scheduler the
    schedule type (validation then checks it goes with the sampler)."""
    name = settings.get("sampler_name") or settings.get("sampler_index") or "Euler"
    scheduler = settings.get("scheduler")
    labels = {s["name"]: s["label"] for s in SCHEDULERS} | {s["label"]: s["label"] for s in SCHEDULERS}
    if scheduler in (None, ""):
        return name, AUTOMATIC
    if scheduler not in labels:
        problems.append(FieldProblem("scheduler", scheduler,
                                     "must be one of: " + ", ".join(s["name"] for s in SCHEDULERS)))
        return name, AUTOMATIC
    label = labels[scheduler]
    if label == "Karras" and isinstance(name, str) and f"{name} Karras" in SAMPLERS:
        return f"{name} Karras", AUTOMATIC
    return name, label


def _eta(eta: Any, sampler: Any, eta_options: dict[str, Any]) -> Any:
    """A1111's eta for the sampler: the request's, else its option (eta_ancestral, or eta_ddim for DDIM); None
    for samplers that take no eta, which A1111 runs without one whatever the request says."""
    spec = SAMPLERS.get(sampler) if isinstance(sampler, str) else None
    if spec is None or spec.eta_option is None:
        return None
    return eta if eta is not None else eta_options.get(spec.eta_option)


# override_settings keys that map to request fields (A1111 option name -> avert field)
# avert_guidance is avert's: null (the option's value) is the model's default method, so an A1111 client can
# ask for plain "cfg" on a model that recommends another (the embedded model: gated).
OVERRIDE_FIELDS = {"CLIP_stop_at_last_layers": "clip_skip", "avert_guidance": "guidance",
                   "overlay_inpaint": "overlay_inpaint", "initial_noise_multiplier": "initial_noise_multiplier"}


def _override(state: ServerState, override: Any) -> tuple[str, dict[str, Any], list[FieldProblem]]:
    """override_settings for one request: the model (sd_model_checkpoint, else the current checkpoint) and
    request fields (CLIP_stop_at_last_layers -> clip_skip); other options must equal their current value."""
    defaults = {k: v for k, v in state.option_fields.items() if v is not None}  # POST /sdapi/v1/options
    if override in (None, {}):
        return state.current_model, defaults, []
    if not isinstance(override, dict):
        return state.current_model, defaults, [FieldProblem("override_settings", override, "must be an object")]
    problems, fields = [], dict(defaults)
    model = state.current_model
    for key, value in override.items():
        if key == "sd_model_checkpoint":
            try:
                model = state.registry.entry(model_name(value), "override_settings.sd_model_checkpoint").name
            except ValidationError as error:
                problems += error.problems
        elif key in ETA_OPTIONS:
            problems += [FieldProblem(f"override_settings.{key}", p.value, p.allowed) for p in eta_option_problems(key, value)]
            fields.setdefault("eta_options", {})[key] = value
        elif OVERRIDE_FIELDS.get(key) in bodies.REQUEST_FIELDS:
            fields[OVERRIDE_FIELDS[key]] = value
            if value is None:
                fields.pop(OVERRIDE_FIELDS[key])  # null: the request field's own default
        elif options(state).get(key, object()) != value:
            problems.append(FieldProblem(f"override_settings.{key}", value, "can be overridden: sd_model_checkpoint, "
                                         + ", ".join([*OVERRIDE_FIELDS, *ETA_OPTIONS]) + "; other options must equal their current value"))
    return model, fields, problems


MAX_IGNORED_SHOWN = 32


def ignored_fields(body: dict, defaults: dict = TXT2IMG_DEFAULTS) -> list[str]:
    """Fields of the body that A1111's txt2img (img2img) does not have: A1111 ignores them silently, and clients
    rely on that; avert ignores them too, and names them in `info` (up to MAX_IGNORED_SHOWN, then how many more)."""
    names = [k for k in body if k not in defaults]
    shown = [name[:64] for name in names[:MAX_IGNORED_SHOWN]]
    return shown + ([f"... and {len(names) - MAX_IGNORED_SHOWN} more"] if len(names) > MAX_IGNORED_SHOWN else [])


def txt2img_response(job: Job, parameters: dict, ignored: list[str] = (), endpoint: str = "txt2img",
                     inpainting_model: bool = False) -> dict:
    """A1111's response: base64 PNGs, the request echoed (A1111's fields only), and `info` as a JSON string, with
    avert's `ignored_fields` and `warnings`; `is_using_inpainting_conditioning` says whether the model is a
    9-channel inpainting model (A1111: its conditioning key is hybrid or concat)."""
    made = [g for _, g in job_images(job)]
    first = job.parts[0].request
    components_source = made[0].record.get("model", {}) if made else {}
    info = {
        "prompt": first.prompt, "all_prompts": [first.prompt] * len(made),
        "negative_prompt": negative_text(made[0]) if made else first.negative_prompt,
        "all_negative_prompts": [negative_text(g) for g in made],
        "seed": made[0].seed if made else first.seed, "all_seeds": [g.seed for g in made],
        "subseed": parameters.get("subseed"), "all_subseeds": [parameters.get("subseed")] * len(made),
        "subseed_strength": 0, "width": made[0].image.width if made else first.width,
        "height": made[0].image.height if made else first.height, "sampler_name": first.sampler,
        "cfg_scale": first.cfg_scale, "steps": first.steps, "batch_size": parameters["batch_size"],
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": components_source.get("name"),
        "sd_model_hash": components_source.get("hash"), "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": parameters.get("denoising_strength"),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": [g.infotext for g in made],
        "styles": parameters.get("styles") or [], "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started or job.created)),
        "clip_skip": first.clip_skip, "is_using_inpainting_conditioning": inpainting_model,
        "version": f"avert {__version__}",
        "warnings": job_warnings(job) + ([f"ignored fields A1111's {endpoint} does not have: {', '.join(ignored)}"]
                                         if ignored else []),
        "ignored_fields": list(ignored),
    }
    images = [png_base64(g) for g in made] if parameters.get("send_images", True) else []
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}


# ---------------------------------------------------------------- progress, interrupt, skip


@router.get("/progress", summary="Progress of the running job (A1111 shape; current_image: a live preview, unless "
            "skip_current_image)")
async def progress(request: Request, skip_current_image: bool = False) -> dict:
    state = get_state(request)
    running = state.queue.running()
    own = _own_running(request)
    job = max(own, key=lambda j: j.started or 0.0) if own else None
    waiting = state.queue.waiting()
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                "state": _state(False, False, "", waiting, 0, 0, 0, "0")}
    fraction = job.progress
    elapsed = time.time() - (job.started or time.time())
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    done, total = job.step
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(job.started))
    image = None if skip_current_image else await run_in_threadpool(preview_base64, job)
    return {"progress": fraction, "eta_relative": eta, "current_image": image, "textinfo": None,
            "state": _state(False, job.interrupted, job.id, waiting + len(running), len(job.results), done, total,
                            stamp)}


def _state(skipped: bool, interrupted: bool, job: str, count: int, number: int, step: int, steps: int, stamp: str):
    return {"skipped": skipped, "interrupted": interrupted, "job": job, "job_count": count, "job_no": number,
            "sampling_step": step, "sampling_steps": steps, "job_timestamp": stamp}


@router.post("/interrupt", summary="Stop the caller's running jobs at their next model evaluation")
async def interrupt(request: Request) -> dict:
    for job in _own_running(request):
        job.cancel()
    return {}


@router.post("/skip", summary="Skip the batch being sampled; the job goes on with its next batch")
async def skip(request: Request) -> dict:
    for job in _own_running(request):
        job.skip()
    return {}


def _own_running(request: Request) -> list[Job]:
    """The running jobs a client may stop: its own, or all where jobs have no owners."""
    state = get_state(request)
    return state.queue.running(client_of(request.scope), everyone=not state.config.owned_jobs)
