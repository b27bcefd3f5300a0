"""HTTP shapes of avert's errors: every 4xx names the field, the value and what is allowed; no tracebacks."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse

from avert.errors import FieldProblem
from avert.server.jobs import Job, JobFailure, JobQueue, QueueFull

FAILURE_STATUS = {"validation": 422, "model": 422, "out_of_memory": 503, "internal": 500}
MAX_VALUE_CHARS = 200
OUT_OF_MEMORY_RETRY = 30  # seconds: the memory is freed when the job ends; a smaller request may fit at once
_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s'\"/:]+){2,}/?")


def redact(text: str) -> str:
    """`text` with every absolute path cut to its last part (`/home/op/models/x.safetensors` -> `.../x.safetensors`):
    a client learns which file, never where the server keeps it."""
    return _PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def problem_json(problem: FieldProblem) -> dict[str, Any]:
    """One field problem as JSON; long values are cut (the message already says what is allowed)."""
    value = problem.value
    if isinstance(value, (str, list, dict)) and len(str(value)) > MAX_VALUE_CHARS:
        value = str(value)[:MAX_VALUE_CHARS] + "..."
    value = redact(value) if isinstance(value, str) else value
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        value = repr(value)[:MAX_VALUE_CHARS]  # JSON has no infinity (1e309 parses to it), at any depth
    shown = FieldProblem(problem.field, value, redact(problem.allowed))
    return {"field": problem.field, "value": value, "allowed": shown.allowed, "message": str(shown)}


def problems_response(problems: Sequence[FieldProblem], status: int = 422) -> JSONResponse:
    items = [problem_json(p) for p in problems]
    return JSONResponse({"error": "invalid request", "detail": "; ".join(i["message"] for i in items),
                         "errors": items}, status_code=status)


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": redact(detail), "errors": []}, status_code=status, headers=headers)


def failure_json(failure: JobFailure) -> dict[str, Any]:
    return {"kind": failure.kind, "detail": redact(failure.message),
            "errors": [problem_json(p) for p in failure.problems]}


def failure_response(failure: JobFailure, extra: dict[str, Any] | None = None) -> JSONResponse:
    body = {"error": failure.kind.replace("_", " "), **failure_json(failure), **(extra or {})}
    headers = {"Retry-After": str(OUT_OF_MEMORY_RETRY)} if failure.kind == "out_of_memory" else None
    return JSONResponse(body, status_code=FAILURE_STATUS.get(failure.kind, 500), headers=headers)


def queue_full_response(error: QueueFull) -> JSONResponse:
    return error_response(503, "queue full", str(error), headers={"Retry-After": str(error.retry_after)})


async def wait_for(job: Job, request: Request, queue: JobQueue) -> bool:
    """Wait until the job ends; if the client goes away first, cancel the job and return False."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    job.on_finish(lambda: loop.call_soon_threadsafe(_resolve, done))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        finished, _ = await asyncio.wait({done, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if done in finished:
        return True
    queue.cancel(job)
    return False


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
