"""The server's settings, fixed at start: one frozen value built from the `avert serve` flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avert.errors import AvertError
from avert.schema import Limits

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
MIN_KEY_CHARS = 16
DEFAULT_MAX_WORK = 16.0  # megapixel steps: about 6 minutes at the embedded model's slowest rate (docs/security.md)


@dataclass(frozen=True)
class ServerConfig:
    """Where to listen, which models may be used, and the bounds every request is held to."""

    host: str = "127.0.0.1"
    port: int = 7860
    model: str | None = None  # a name in models_dir, or a path given by the operator; None: the default model
    models_dir: Path | None = None
    embeddings_dir: Path | None = None  # textual-inversion files, used by name (their file stem) in prompts
    lora_dir: Path | None = None  # LoRA files, named by a prompt's <lora:NAME:WEIGHT> (file stem), never by path
    api_keys: tuple[str, ...] = ()  # each key is a client of its own: jobs belong to the key that made them
    insecure: bool = False
    insecure_key: bool = False  # accept keys shorter than MIN_KEY_CHARS
    allowed_hosts: tuple[str, ...] = ()  # Host header names besides the bound address ("*": any)
    rate_limit: int = 120  # POST requests a client may make per minute (0: no limit)
    queue_size: int = 16  # jobs waiting (not yet running), over all models
    max_body_bytes: int = 16 * 1024 * 1024
    job_history: int = 64  # finished jobs kept for GET /v1/jobs/{id}
    cors_origins: tuple[str, ...] = field(default=())
    limits: Limits = Limits(max_work=DEFAULT_MAX_WORK)
    device: str = "cpu"
    precision: str = "fp32"
    styles: tuple = ()  # avert.prompts.styles.Style values, from --styles FILE
    presets_file: Path | None = None  # the clients' presets of negatives (`avert.server.presets`); None: in memory

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @property
    def owned_jobs(self) -> bool:
        """Jobs belong to the key or session that made them, except on loopback without keys (one user)."""
        return bool(self.api_keys) or not self.loopback

    def host_names(self) -> frozenset[str] | None:
        """Host header names this server answers to (None: any): the bound address, the loopback names when
        bound to loopback, and --allowed-host; a wildcard bind without --allowed-host answers any name (the API
        key guards it). Anything else is refused, so a DNS-rebound name cannot reach a loopback server."""
        if "*" in self.allowed_hosts or (self.host in WILDCARD_HOSTS and not self.allowed_hosts):
            return None
        names = {self.host, *self.allowed_hosts} | (LOOPBACK_HOSTS if self.loopback else set())
        return frozenset(n.lower().strip("[]") for n in names)

    def check_bind(self) -> None:
        """Refuse to listen beyond this machine without an API key (unless --insecure), and weak keys."""
        if not self.loopback and not self.api_keys and not self.insecure:
            raise AvertError(
                f"host: {self.host!r} would expose the server beyond this machine without an API key; "
                "give a key in $AVERT_API_KEY or --api-key-file FILE (or --insecure to serve without one), "
                "or bind to 127.0.0.1"
            )
        short = [k for k in self.api_keys if len(k) < MIN_KEY_CHARS]
        if short and not self.insecure_key:
            raise AvertError(f"api-key: a key of {len(short[0])} characters is not allowed; must have at least "
                             f"{MIN_KEY_CHARS} characters (e.g. python3 -c 'import secrets; "
                             "print(secrets.token_urlsafe(24))'), or give --insecure-key")
