"""`avert bench startup`: wall time of the README's main command on the embedded model, in fresh processes.

Each run is a new `avert generate` process (imports, model loading, text encoding, 20 steps, PNG writing),
which is what a user on a fresh install waits for. The page cache is warm after the first run; the first
run is reported apart.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from avert.bench import publish
from avert.evaluation.common import machine

COMMAND = ["generate", "a house on a hill", "-n", "green tones", "--seed", "1", "-q"]


def run_startup_benchmark(repeats: int = 3, docs: Path = Path("docs")) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "avert.cli", *COMMAND, "-o", f"{tmp}/{i}.png"], check=True,
                           capture_output=True)
            times.append(time.perf_counter() - start)
    publish(table(times), docs / "benchmarks" / "startup.md")
    return times


def table(times: list[float]) -> str:
    """The page: how it was measured (date, machine and CPU flags) and the seconds of each run."""
    return "\n".join([
        "# Startup benchmark: first image on the embedded model",
        "",
        f"Measured {date.today().isoformat()} by `avert bench startup` on {machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}: the README's main command "
        f"`avert {' '.join(COMMAND[:1])} \"a house on a hill\" -n \"green tones\"` as a fresh process, "
        "including imports, loading and 20 steps. Target: under 10 s.",
        "",
        "| run | seconds |",
        "|---|---|",
        *[f"| {i + 1}{' (cold page cache)' if i == 0 else ''} | {t:.2f} |" for i, t in enumerate(times)],
        f"| median | {statistics.median(times):.2f} |",
    ])
