"""Presets of negatives: named sets of negatives (each with its weight and window), the rule that adds them up and
the guidance method, saved on the server per client (per API key; one client where the server has no keys).

`GET /v1/presets` lists the caller's presets, `PUT /v1/presets/{name}` saves one (replacing a preset of that name),
`DELETE /v1/presets/{name}` removes one. Names are checked against `NAME_PATTERN` and never reach the file system:
every preset lives in one JSON file (`ServerConfig.presets_file`, written atomically, readable by its owner only),
or in memory where the server has none (`avert.server.presets_store`: each client holds at most 64, the server
1024, each at most `MAX_PRESET_CHARS` as stored).
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from avert.errors import FieldProblem, ValidationError
from avert.request import GenerationRequest
from avert.schema import PARAMS_BY_NAME, Limits
from avert.server import bodies
from avert.server.http import problem_json
from avert.server.security import client_of
from avert.server.state import get_state
from avert.validation import check_field, check_negatives

NAME_PATTERN = re.compile(r"[\w][\w .,()+-]{0,63}")
NAME_RULE = "must be 1 to 64 letters, digits, spaces or . , ( ) + - _, starting with a letter, digit or _"
PRESET_FIELDS = ("negatives", "negatives_rule", "guidance")
MAX_PRESET_CHARS = 16384  # a preset as stored (JSON): with 1024 presets in all, the file stays under 20 MB
LOCAL = "local"  # the client of a server without keys on loopback (one user)

router = APIRouter(prefix="/v1", tags=["avert API"])


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValidationError([FieldProblem("name", name[:100], NAME_RULE)])
    return name


def check_preset(body: dict, limits: Limits) -> dict:
    """The preset of a PUT body: 1 to `max_negatives` negatives (texts or {text, weight, start, end}), a rule and a
    method (each null or one of the schema's choices); a plain value, as stored and as listed."""
    problems = bodies.unknown_fields(body, PRESET_FIELDS)
    negatives = body.get("negatives")
    if not isinstance(negatives, list) or not negatives:
        problems.append(FieldProblem("negatives", negatives, f"must be a list of 1 to {limits.max_negatives} "
                                     "negatives (texts or {text, weight, start, end})"))
    else:
        hint = typing.get_type_hints(GenerationRequest)["negatives"]
        converted = bodies.convert(negatives, hint, "negatives", problems)
        if not problems:
            problems += check_negatives(converted, limits)
    for name in ("negatives_rule", "guidance"):
        value = body.get(name)
        if value is not None:
            problem = check_field(PARAMS_BY_NAME[name], value, limits)
            problems += [problem] if problem else []
    if problems:
        raise ValidationError(problems)
    preset = {"negatives": [{"text": n.text, "weight": n.weight, "start": n.start, "end": n.end} for n in converted],
              "negatives_rule": body.get("negatives_rule"), "guidance": body.get("guidance")}
    size = len(json.dumps(preset, ensure_ascii=False))
    if size > MAX_PRESET_CHARS:
        raise ValidationError([FieldProblem("negatives", f"{size} characters as stored", f"must take at most "
                                            f"{MAX_PRESET_CHARS} characters in all (a preset's texts, as JSON)")])
    return preset


def _client(request: Request) -> str:
    return client_of(request.scope) or LOCAL


@router.get("/presets", summary="Your saved presets of negatives, by name")
async def list_presets(request: Request) -> dict[str, Any]:
    return {"presets": get_state(request).presets.list(_client(request))}


@router.put("/presets/{name:path}", summary="Save a preset of negatives (negatives, negatives_rule, guidance) under a name")
async def put_preset(name: str, request: Request) -> dict[str, Any]:
    state = get_state(request)
    preset = check_preset(bodies.parse_json(await request.body()), state.config.limits)
    await run_in_threadpool(state.presets.put, _client(request), check_name(name), preset)
    return {"name": name, "preset": preset}


@router.delete("/presets/{name:path}", summary="Delete one of your presets")
async def delete_preset(name: str, request: Request) -> JSONResponse:
    state = get_state(request)
    if not await run_in_threadpool(state.presets.delete, _client(request), check_name(name)):
        problem = FieldProblem("name", name, "must be the name of one of your presets")
        return JSONResponse({"error": "not found", "detail": str(problem), "errors": [problem_json(problem)]},
                            status_code=404)
    return JSONResponse({"deleted": name})
