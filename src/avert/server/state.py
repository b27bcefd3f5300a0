"""The running server's shared state: settings, models, queue, and A1111's current checkpoint."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from starlette.requests import Request

from avert.server.config import ServerConfig
from avert.server.jobs import JobQueue
from avert.server.registry import ModelRegistry
from avert.server.security import client_of


@dataclass
class ServerState:
    """`current_model` is what A1111's `sd_model_checkpoint` option selects (POST /sdapi/v1/options)."""

    config: ServerConfig
    registry: ModelRegistry
    queue: JobQueue
    current_model: str
    lock: threading.Lock = field(default_factory=threading.Lock)


def get_state(request: Request) -> ServerState:
    return request.app.state.avert


def owner(request: Request) -> str | None:
    """The client a new job belongs to, where jobs have owners (`ServerConfig.owned_jobs`), else None."""
    return client_of(request.scope) if get_state(request).config.owned_jobs else None
