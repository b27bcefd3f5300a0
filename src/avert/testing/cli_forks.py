"""Many invocations of the command from one warm process: `python -m avert.testing.cli_forks` imports avert's
command and the libraries it loads once, then runs each invocation in a child made by `os.fork`, so each still has
its own process, exit status, stderr (a file), stdin (/dev/null) and time-out, without paying the imports again
(about 5 s per invocation on 2 cores). The cases come as a JSON list of argv lists on stdin; the answer is a JSON
list of [exit status (-1: timed out), seconds, stderr] on stdout. POSIX only (`run_cli_many` falls back to one
process per case elsewhere)."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time

WARM = ("avert.cli", "avert.pipeline.generate", "avert.models.loader", "avert.evaluation.cli", "avert.server.app",
        "avert.output.pnginfo", "diffusers", "transformers", "diffusers.models.unets.unet_2d_condition",
        "diffusers.models.autoencoders.autoencoder_kl", "transformers.models.clip.modeling_clip")


def run_one(argv: list[str], timeout: float) -> tuple[int, float, str]:
    started = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: the command, as the console script runs it
            _child(argv, err.fileno())
        code = _wait(pid, timeout)
        err.seek(0)
        return code, time.perf_counter() - started, err.read().decode("utf-8", "replace")


def _child(argv: list[str], err: int) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        sys.stdin, sys.stdout = open(0, closefd=False), open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        from avert.cli import main

        code = main(argv)
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback here is what the red-team tests look for
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def main() -> None:
    import importlib

    for name in WARM:
        importlib.import_module(name)
    request = json.loads(sys.stdin.read())
    results = [run_one(argv, request["timeout"]) for argv in request["cases"]]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
