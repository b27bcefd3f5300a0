"""The server's settings, fixed at start: one frozen value built from the `avert serve` flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avert.errors import AvertError
from avert.schema import Limits

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen, which models may be used, and the bounds every request is held to."""

    host: str = "127.0.0.1"
    port: int = 7860
    model: str | None = None  # a name in models_dir, or a path given by the operator; None: the default model
    models_dir: Path | None = None
    embeddings_dir: Path | None = None  # textual-inversion files, used by name (their file stem) in prompts
    api_key: str | None = None
    insecure: bool = False
    queue_size: int = 16  # jobs waiting (not yet running), over all models
    max_body_bytes: int = 16 * 1024 * 1024
    job_history: int = 64  # finished jobs kept for GET /v1/jobs/{id}
    cors_origins: tuple[str, ...] = field(default=())
    limits: Limits = Limits()
    device: str = "cpu"
    precision: str = "fp32"

    def check_bind(self) -> None:
        """Refuse to listen beyond this machine without an API key, unless --insecure says so."""
        if self.host not in LOOPBACK_HOSTS and not self.api_key and not self.insecure:
            raise AvertError(
                f"host: {self.host!r} would expose the server beyond this machine without an API key; "
                "give --api-key KEY (or --insecure to serve without one), or bind to 127.0.0.1"
            )
