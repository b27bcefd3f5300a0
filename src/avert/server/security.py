"""Who may call the server and how much they may send: API keys (bearer or basic auth), the client each
request belongs to, and a body size bound.

All are plain ASGI middleware, so they run before any body is parsed. The client (`client_of`) is the key a
request carried, else a session cookie the server issues, else (loopback without keys: one user) nobody in
particular; jobs belong to it (`avert.server.jobs.Job.owner`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from typing import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "avert_session"


async def send_json(send: Send, status: int, body: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def problem_body(error: str, field: str, value: str, allowed: str) -> dict:
    """The JSON of a refusal made before routing, shaped like every other error of the server."""
    message = f"{field}: {value!r} is not allowed; {allowed}"
    return {"error": error, "detail": message,
            "errors": [{"field": field, "value": value, "allowed": allowed, "message": message}]}


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def client_of(scope: Scope) -> str | None:
    """The client a request belongs to (set by `ApiKeyMiddleware` or `SessionMiddleware`), or None."""
    return (scope.get("state") or {}).get("avert_client")


def _set_client(scope: Scope, client: str) -> None:
    scope.setdefault("state", {})["avert_client"] = client


def key_matches(authorization: str, api_key: str) -> bool:
    """True for `Bearer KEY` or `Basic base64(USER:KEY)` (any user name), compared in constant time."""
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(credentials.encode(), api_key.encode())
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(decoded.partition(":")[2].encode(), api_key.encode())
    return False


def key_id(api_key: str) -> str:
    """A key's name in job records and logs: a short hash, never the key."""
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


class ApiKeyMiddleware:
    """Every request, the page included, must carry one of the API keys (401 with a Basic challenge
    otherwise); the request then belongs to that key's client."""

    def __init__(self, app: ASGIApp, api_keys: Sequence[str]):
        self.app, self.api_keys = app, tuple(api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        authorization = header(scope, b"authorization") or ""
        matched = [k for k in self.api_keys if key_matches(authorization, k)]  # every key compared: no timing
        if matched:
            _set_client(scope, key_id(matched[0]))
            return await self.app(scope, receive, send)
        await send_json(send, 401, {"error": "unauthorized", "errors": [],
                                    "detail": "authorization: an API key is required, as 'Bearer KEY' or basic "
                                    "auth with KEY as the password"},
                        [(b"www-authenticate", b'Basic realm="avert"')])


class SessionMiddleware:
    """Without keys on a non-loopback address, each browser or client is told apart by a session cookie the
    server issues (HttpOnly, SameSite=Strict); a client that keeps no cookies gets a new one each time."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or client_of(scope):
            return await self.app(scope, receive, send)
        session = _cookie(header(scope, b"cookie") or "", SESSION_COOKIE)
        fresh = session is None or len(session) != 32 or not session.isalnum()
        session = secrets.token_hex(16) if fresh else session
        _set_client(scope, "session:" + session)

        async def with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                cookie = f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        await self.app(scope, receive, with_cookie)


def _cookie(text: str, name: str) -> str | None:
    for item in text.split(";"):
        key, _, value = item.strip().partition("=")
        if key == name:
            return value
    return None


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413, by Content-Length up front and by counting while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_json(send, 413, self._body(length))
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if not started:
                await send_json(send, 413, self._body(f"more than {self.max_bytes}"))

    def _body(self, size: str) -> dict:
        return problem_body("body too large", "body", f"{size[:32]} bytes", f"must be at most {self.max_bytes} bytes")


class _TooLarge(Exception):
    pass
