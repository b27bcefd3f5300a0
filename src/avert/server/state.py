"""The running server's shared state: settings, models, queue, and A1111's current checkpoint."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from starlette.requests import Request

from avert.server.config import ServerConfig
from avert.server.jobs import JobQueue
from avert.server.presets_store import PresetStore
from avert.server.registry import ModelRegistry
from avert.server.security import client_of


@dataclass
class ServerState:
    """`current_model` is what A1111's `sd_model_checkpoint` option selects (POST /sdapi/v1/options);
    `option_fields` the request fields other acting options set (CLIP_stop_at_last_layers -> clip_skip);
    `kept_options` the options avert does not act on, kept so that a client's read-change-write works, and
    eta_ancestral / eta_ddim, which A1111 requests with a null `eta` read."""

    config: ServerConfig
    registry: ModelRegistry
    queue: JobQueue
    current_model: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    option_fields: dict = field(default_factory=dict)
    kept_options: dict = field(default_factory=dict)
    presets: PresetStore = field(default_factory=lambda: PresetStore(None))


def get_state(request: Request) -> ServerState:
    return request.app.state.avert


def owner(request: Request) -> str | None:
    """The client a new job belongs to, where jobs have owners (`ServerConfig.owned_jobs`), else None."""
    return client_of(request.scope) if get_state(request).config.owned_jobs else None
