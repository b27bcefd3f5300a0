"""Who may call the server and how much they may send: API key (bearer or basic auth) and a body size bound.

Both are plain ASGI middleware so they run before any body is parsed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


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


class ApiKeyMiddleware:
    """Every request, the page included, must carry the API key (401 with a Basic challenge otherwise)."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if key_matches(authorization, self.api_key):
            return await self.app(scope, receive, send)
        await _send_json(send, 401, {"error": "unauthorized", "errors": [],
                                     "detail": "authorization: an API key is required, as 'Bearer KEY' or basic "
                                     "auth with KEY as the password"},
                         [(b"www-authenticate", b'Basic realm="avert"')])


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413, by Content-Length up front and by counting while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_json(send, 413, self._body(length.decode("latin-1")))
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
                await _send_json(send, 413, self._body(f"more than {self.max_bytes}"))

    def _body(self, size: str) -> dict:
        allowed = f"must be at most {self.max_bytes} bytes"
        return {"error": "body too large", "detail": f"body: {size} bytes is not allowed; {allowed}",
                "errors": [{"field": "body", "value": size, "allowed": allowed,
                            "message": f"body: {size} bytes is not allowed; {allowed}"}]}


class _TooLarge(Exception):
    pass
