"""The FastAPI application: routers, security middleware, error handlers, the page, and `serve`."""

from __future__ import annotations

import copy
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import FileResponse, JSONResponse

from avert import __version__
from avert.conditioning.embeddings import load_embeddings
from avert.errors import AvertError, ValidationError
from avert.models.lora import load_loras
from avert.pipeline.generate import generate
from avert.pipeline.runtime import Runtime
from avert.server import a1111, a1111_img2img, a1111_info, native, openapi, presets
from avert.server.config import ServerConfig
from avert.server.http import error_response, problems_response, queue_full_response
from avert.server.jobs import JobQueue, QueueFull, Render, is_out_of_memory
from avert.server.presets_store import PresetStore
from avert.server.registry import ModelRegistry
from avert.server.docs import add_docs
from avert.server.guards import (HostGuardMiddleware, OriginGuardMiddleware, RateLimitMiddleware,
                                 SecurityHeadersMiddleware)
from avert.server.security import ApiKeyMiddleware, BodyLimitMiddleware, SessionMiddleware
from avert.server.state import ServerState

log = logging.getLogger("avert.server")
STATIC = Path(__file__).parent / "static"
# a fixed list: no path from the request
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}


def create_app(config: ServerConfig = ServerConfig(), *, render: Render = generate) -> FastAPI:
    """The app for `config`; `render` is the engine call (a test may wrap it to inject failures)."""
    registry = ModelRegistry(config.model, config.models_dir)
    runtime = Runtime(device=config.device, precision=config.precision)
    for warning in runtime.warnings():
        log.warning(warning)
    queue = JobQueue(registry, size=config.queue_size, history=config.job_history, limits=config.limits,
                     runtime=runtime, render=render,
                     embeddings=load_embeddings(config.embeddings_dir), loras=load_loras(config.lora_dir))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()

    app = FastAPI(title="avert", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text-to-image with the negative prompt as a first-class control: an "
                  "AUTOMATIC1111-compatible API under /sdapi/v1 and avert's own API under /v1.")
    app.state.avert = ServerState(config, registry, queue, registry.default_name,
                                  presets=PresetStore(config.presets_file))
    app.include_router(a1111.router)
    app.include_router(a1111_img2img.router)
    app.include_router(a1111_info.router)
    app.include_router(native.router)
    app.include_router(presets.router)
    _add_page(app)
    policies = add_docs(app)
    _live_openapi(app)
    _add_error_handlers(app)
    _add_middleware(app, config, policies)
    return app


def _add_middleware(app: FastAPI, config: ServerConfig, policies: dict[str, str]) -> None:
    """Outermost first: CORS (so a preflight is answered before any key is asked for), headers, Host, the key or
    session, the rate, Origin and content type, the body size."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(OriginGuardMiddleware, cors_origins=config.cors_origins)
    app.add_middleware(RateLimitMiddleware, per_minute=config.rate_limit)
    if config.api_keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=config.api_keys)
    elif config.owned_jobs:
        app.add_middleware(SessionMiddleware)
    app.add_middleware(HostGuardMiddleware, names=config.host_names())
    app.add_middleware(SecurityHeadersMiddleware, page_policies=policies)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST",
                           "DELETE"], allow_headers=["Authorization", "Content-Type"])


def _live_openapi(app: FastAPI) -> None:
    """The document with what changes while the server runs: the models `sd_model_checkpoint` may name."""
    def document() -> dict:
        schema = copy.deepcopy(FastAPI.openapi(app))  # FastAPI builds it once and caches it
        state: ServerState = app.state.avert
        body = openapi.options_body(a1111_info.FIXED_OPTIONS, state.registry.names())
        schema["paths"]["/sdapi/v1/options"]["post"]["requestBody"] = body["requestBody"]
        return schema

    app.openapi = document


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)  # what browsers and other clients ask for by default
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/static/{name}", include_in_schema=False)
    async def page_file(name: str):
        if name not in PAGE_FILES:
            return error_response(404, "not found", f"name: {name[:64]!r} is not a page file")
        return FileResponse(STATIC / name, media_type=PAGE_FILES[name])


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ValidationError)
    async def invalid(request: Request, error: ValidationError) -> JSONResponse:
        return problems_response(error.problems)

    @app.exception_handler(QueueFull)
    async def full(request: Request, error: QueueFull) -> JSONResponse:
        return queue_full_response(error)

    @app.exception_handler(AvertError)
    async def avert_error(request: Request, error: AvertError) -> JSONResponse:
        return error_response(422, "invalid request", str(error))

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        if is_out_of_memory(error):
            return error_response(503, "out of memory", f"out of memory: {error}; try a smaller size or batch",
                                  headers={"Retry-After": "30"})
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error", f"{type(error).__name__}: {error}")


def serve(config: ServerConfig) -> None:
    """Check the bind address, load the default model, and run uvicorn until interrupted."""
    import uvicorn

    config.check_bind()
    app = create_app(config)
    state: ServerState = app.state.avert
    state.registry.components(state.current_model)  # fail now, with one line, if the model does not load
    print(f"avert serve: http://{config.host}:{config.port}/  model {state.current_model!r}, "
          f"models {', '.join(state.registry.names())}; API docs at /docs", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", limit_concurrency=512,
                timeout_graceful_shutdown=5)
