"""Guards against requests a browser can be tricked into sending, and against clients that send too many.

- Host: only the names this server is reached by (`ServerConfig.host_names`), so that a DNS-rebound name
  (attacker.example resolving to 127.0.0.1) is refused before it reaches anything (400).
- Origin: a state-changing request (POST, PUT, PATCH, DELETE) from a browser page of another origin is refused
  unless `--cors-origin` allows that origin (403); a page can send such a request without CORS's consent.
- Content type: a body is read as JSON only when it is declared `application/json` (415 otherwise): a cross-site
  form or `text/plain` fetch cannot make a "simple" request that the server would parse.
- Rate: each client (its key, session or address) may make `per_minute` POST, PUT, PATCH and DELETE requests a minute (429 with
  Retry-After beyond).
- Headers: every response says nosniff, no framing and no referrer; pages get a Content-Security-Policy that
  allows only this server's own files (`PAGE_POLICY`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avert.server.security import client_of, header, problem_body, send_json

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ("application/json",)
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def host_name(value: str) -> str:
    """The name part of a Host header (`[::1]:7860` -> `::1`, `Example.org:80` -> `example.org`)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuardMiddleware:
    """Refuse requests whose Host header names another server (`names` None: any name)."""

    def __init__(self, app: ASGIApp, names: Iterable[str] | None):
        self.app, self.names = app, None if names is None else frozenset(names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.names is None:
            return await self.app(scope, receive, send)
        given = header(scope, b"host") or ""
        if host_name(given) in self.names:
            return await self.app(scope, receive, send)
        allowed = "must be one of: " + ", ".join(sorted(self.names)) + " (the operator adds names with --allowed-host)"
        await send_json(send, 400, problem_body("bad host", "host", given[:100], allowed))


class OriginGuardMiddleware:
    """Refuse cross-origin state-changing requests that CORS did not allow, and bodies that are not JSON."""

    def __init__(self, app: ASGIApp, cors_origins: Iterable[str]):
        self.app, self.cors_origins = app, frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
            return await self.app(scope, receive, send)
        origin = header(scope, b"origin")
        if origin is not None and not self._allowed(origin, header(scope, b"host") or ""):
            return await send_json(send, 403, problem_body(
                "cross-origin request", "origin", origin[:100], "must be this server's own page, or an origin the "
                "operator allows with --cors-origin"))
        kind = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if _has_body(scope) and kind not in JSON_TYPES:
            return await send_json(send, 415, problem_body(
                "unsupported media type", "content-type", kind or "(none)", "must be application/json"))
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        if origin.rstrip("/").lower() in self.cors_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def _has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    return (length is not None and length.strip() not in ("", "0")) or header(scope, b"transfer-encoding") is not None


class RateLimitMiddleware:
    """A token bucket per client for state-changing requests (POST, PUT, PATCH, DELETE: jobs, presets): `per_minute`
    a minute, bursts up to that many.

    Clients are told apart by key or session (`client_of`), else by address; at most `clients` buckets are
    kept (the least recently seen dropped), so a flood of addresses cannot grow memory."""

    def __init__(self, app: ASGIApp, per_minute: int, clients: int = 4096):
        self.app, self.rate, self.clients = app, per_minute / 60.0, clients
        self.capacity = float(per_minute)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING or self.rate <= 0:
            return await self.app(scope, receive, send)
        wait = self._take(client_of(scope) or f"address:{(scope.get('client') or ('?',))[0]}")
        if wait <= 0:
            return await self.app(scope, receive, send)
        allowed = f"must be at most {self.capacity:g} POST, PUT or DELETE requests a minute per client"
        await send_json(send, 429, problem_body("too many requests", "rate", "over the limit", allowed),
                        [(b"retry-after", str(math.ceil(wait)).encode())])

    def _take(self, client: str) -> float:
        """Take a token; 0 when one was there, else the seconds until one will be."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        self._buckets[client] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
        while len(self._buckets) > self.clients:
            self._buckets.popitem(last=False)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


class SecurityHeadersMiddleware:
    """Headers on every response: no MIME sniffing, no framing, no referrer; a CSP on pages (HTML)."""

    def __init__(self, app: ASGIApp, page_policies: dict[str, str] | None = None):
        self.app, self.page_policies = app, page_policies or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = self.page_policies.get(scope.get("path", ""), PAGE_POLICY)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer"), (b"content-security-policy", policy.encode())]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
