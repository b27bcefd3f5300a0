"""Running hostile inputs for real: files that attack readers of PNGs, `avert serve` as a child process, one
HTTP request sent exactly as given, one invocation of the command (see `avert.testing.hostile`)."""

from __future__ import annotations

import base64
import io
import os
import struct
import subprocess
import sys
import time
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avert.testing.hostile import CliCase, HttpCase


# ---------------------------------------------------------------- files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG header announcing width x height pixels, with a tiny compressed stream (a decompression bomb)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + png_chunk(b"IEND", b"")


def apng(frames: int = 2000, size: int = 128) -> bytes:
    """An animated PNG of `frames` frames of size x size: Pillow decodes them all to reach late text chunks."""
    from PIL import Image

    images = [Image.new("RGB", (size, size), (i % 256, 0, 0)) for i in range(min(frames, 4))]
    out = io.BytesIO()
    images[0].save(out, format="PNG", save_all=True, append_images=images[1:], loop=0)
    data = out.getvalue()
    # announce many frames in acTL: the pixel count Pillow would decode is what is checked
    i = data.index(b"acTL")
    return data[: i - 4] + png_chunk(b"acTL", struct.pack(">II", frames, 0)) + data[i + 12 + 4:]


def small_png(text: dict[str, str] | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------- sending and running


def send(base_url: str, case: HttpCase, timeout: float = 60.0) -> tuple[int, float, str]:
    """Send one case with `requests` (headers exactly as given); return status, seconds and the body's text."""
    import requests

    started = time.perf_counter()
    request = requests.Request(case.method, base_url + case.path, data=case.data(), headers=case.headers).prepare()
    if case.body is None:
        request.headers.pop("Content-Type", None)
    for name, value in case.headers.items():
        request.headers[name] = value  # e.g. a Content-Length or a Host that requests would otherwise set
    try:
        with requests.Session() as session:
            response = session.send(request, timeout=timeout)
    except requests.RequestException as error:
        return -1, time.perf_counter() - started, f"{type(error).__name__}: {error}"
    return response.status_code, time.perf_counter() - started, response.text


def run_cli(case: CliCase, timeout: float = 120.0, env: dict | None = None) -> tuple[int, float, str]:
    """Run the real command; return its exit status (-1 on a time-out), seconds and stderr."""
    started = time.perf_counter()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("AVERT_DEBUG", None)
    try:
        done = subprocess.run([sys.executable, "-m", "avert.cli", *case.argv], capture_output=True, text=True,
                              timeout=timeout, env=environment, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - started, "timed out"
    return done.returncode, time.perf_counter() - started, done.stderr


def run_cli_many(cases: list[CliCase], timeout: float = 120.0, env: dict | None = None) -> list[tuple[int, float, str]]:
    """`run_cli` for each case, each in its own process forked from one that has imported avert's command
    (`avert.testing.cli_forks`); one process per case where the platform cannot fork."""
    import json

    if not hasattr(os, "fork"):
        return [run_cli(c, timeout, env) for c in cases]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("AVERT_DEBUG", None)
    request = json.dumps({"timeout": timeout, "cases": [list(c.argv) for c in cases]})
    done = subprocess.run([sys.executable, "-m", "avert.testing.cli_forks"], input=request, capture_output=True,
                          text=True, env=environment, timeout=timeout * len(cases) + 120)
    if done.returncode != 0:
        raise RuntimeError(f"avert.testing.cli_forks failed: {done.stderr[-2000:]}")
    return [tuple(r) for r in json.loads(done.stdout)]


# ---------------------------------------------------------------- a real server process


class ServerProcess:
    """`avert serve` as a child process on 127.0.0.1 and a free port (`flags` added), stopped on exit."""

    def __init__(self, *flags: str, env: dict | None = None):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.flags, self.env = flags, env

    def __enter__(self) -> "ServerProcess":
        import requests

        import tempfile

        environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(self.env or {})}
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: an unread pipe would fill and stall the server
        self.process = subprocess.Popen([sys.executable, "-m", "avert.cli", "serve", "--port", str(self.port),
                                         *self.flags], stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=environment, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"avert serve exited: {self.output()}")
            try:
                requests.get(self.url + "/v1/status", timeout=2, headers=self.auth())
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("avert serve did not answer within 120 s")

    def output(self) -> str:
        """What the server printed so far (its log)."""
        self.log.seek(0)
        return self.log.read()

    def auth(self) -> dict:
        key = (self.env or {}).get("AVERT_API_KEY")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()
