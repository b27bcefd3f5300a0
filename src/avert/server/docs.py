"""The API's documentation page (/docs, Swagger UI) served from this machine: its script and style come from the
`fastapi-offline` package's copy of Swagger UI, never from a CDN (the machine may be offline, and a page that
loads third-party scripts is a page a third party controls).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse, Response

DOCS_FILES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}


def _assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def docs_html(app: FastAPI) -> str:
    return get_swagger_ui_html(openapi_url=app.openapi_url, title="avert API", swagger_js_url="/docs/swagger-ui-bundle.js",
                               swagger_css_url="/docs/swagger-ui.css", swagger_favicon_url="/docs/favicon.png",
                               swagger_ui_parameters=app.swagger_ui_parameters).body.decode()


def inline_policy(html: str) -> str:
    """A Content-Security-Policy that allows this server's files and exactly the page's own inline scripts."""
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
                      for s in re.findall(r"<script>(.*?)</script>", html, re.S))
    return (f"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' {hashes}; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def add_docs(app: FastAPI) -> dict[str, str]:
    """Add /docs and its files; return the page's Content-Security-Policy by path."""
    html = docs_html(app)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(html)

    @app.get("/docs/{name}", include_in_schema=False)
    async def docs_file(name: str) -> Response:
        if name not in DOCS_FILES:  # a fixed list: no path from the request reaches the file system
            return Response(status_code=404)
        return FileResponse(_assets() / name, media_type=DOCS_FILES[name])

    return {"/docs": inline_policy(html)}
