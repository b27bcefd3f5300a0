"""Helpers for the server tests: a real uvicorn server on a free port, in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app):
    """Serve `app` with uvicorn on 127.0.0.1 and a free port; yield the base URL; stop it afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.get(url + "/v1/status", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


def wait_until(condition, timeout: float = 30.0, every: float = 0.02):
    """Poll `condition` until it returns something true; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")
