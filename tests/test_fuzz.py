"""Fuzzing over the OpenAPI document: schemathesis generates over a thousand bodies (70 an operation), valid and invalid by the
document, for every operation of a real `avert serve` process; none may get a 5xx or take longer than a set
bound.

The server runs with a work budget too small for any image (`--max-work 0.001`), so every body that passes
validation is refused by the budget after it was fully checked, and the run stays fast.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from avert.testing.hostile import ServerProcess

RESPONSE_SECONDS = 2.0


@pytest.mark.slow
def test_fuzzing_every_operation_finds_no_server_error_and_no_slow_answer(tmp_path):
    with ServerProcess("--rate-limit", "0", "--max-work", "0.001") as server:
        done = subprocess.run([shutil.which("schemathesis") or "schemathesis", "run", server.url + "/openapi.json",
                               "--checks", "not_a_server_error", "--max-response-time", str(RESPONSE_SECONDS),
                               "--max-examples", "70", "--seed", "7",
                               "--workers", "2", "--request-timeout", "30", "--report-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        log = server.output()
    generated = re.search(r"(\d+) generated", done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + log[-2000:]
    assert generated and int(generated.group(1)) >= 1100, done.stdout[-2000:]
