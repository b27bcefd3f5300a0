"""`avert bench nag`: what a negative costs per image with NAG against CFG, on the embedded model.

NAG (`avert.guidance.attention`) carries the negative in cross-attention: at CFG 1 the UNet runs one branch, and
each attn2 layer attends once more to the negative's keys and values. CFG carries it as a second UNet branch. The
same seed, prompt and negative run in every case, interleaved, after a warm-up; the table gives seconds per image
(median), UNet forwards and branch evaluations per image (from the run's own counts), and the ratio to the run
without a negative.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from avert.bench import publish
from avert.evaluation.common import machine

PROMPT, NEGATIVE = "a red house on a hill", "clouds"
CASES = (
    ("cfg 1, no negative", {"cfg_scale": 1.0}),
    ("cfg 7, negative (two branches)", {"cfg_scale": 7.0, "negative_prompt": NEGATIVE}),
    ("cfg 1 + NAG 3, negative", {"cfg_scale": 1.0, "negative_prompt": NEGATIVE, "nag_scale": 3.0}),
    ("cfg 7 + NAG 3, negative", {"cfg_scale": 7.0, "negative_prompt": NEGATIVE, "nag_scale": 3.0}),
)


@dataclass(frozen=True)
class Row:
    case: str
    seconds: float  # per image, median
    forwards: int
    branches: int


def run_nag_benchmark(repeats: int = 5, docs: Path = Path("docs"), steps: int = 20) -> list[Row]:
    from avert import GenerationRequest
    from avert.api import load
    from avert.pipeline.generate import generate

    components = load()
    requests = [GenerationRequest(PROMPT, seed=1, steps=steps, guidance="cfg", **fields) for _, fields in CASES]
    for request in requests:
        generate(request, components)  # warm-up
    times: list[list[float]] = [[] for _ in CASES]
    counts = [(0, 0)] * len(CASES)
    for _ in range(repeats):
        for k, request in enumerate(requests):
            started = time.perf_counter()
            result = generate(request, components)
            times[k].append(time.perf_counter() - started)
            counts[k] = (result.unet_forwards, result.branch_evaluations)
    rows = [Row(name, statistics.median(t), *c) for (name, _), t, c in zip(CASES, times, counts)]
    publish(table(rows, repeats, steps), docs / "benchmarks" / "nag.md")
    return rows


def table(rows: list[Row], repeats: int, steps: int) -> str:
    base = rows[0].seconds
    return "\n".join([
        "# NAG benchmark: the cost of a negative in attention against a second branch",
        "",
        f"Measured {date.today().isoformat()} by `avert bench nag` on {machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}: the embedded model at 32x32, {steps} steps, Euler a, guidance cfg, seed 1, "
        f"prompt \"{PROMPT}\", negative \"{NEGATIVE}\"; median of {repeats} interleaved runs after a warm-up.",
        "",
        "| case | s / image | UNet forwards | branch evaluations | against no negative |",
        "|---|---|---|---|---|",
        *[f"| {r.case} | {r.seconds:.3f} | {r.forwards} | {r.branches} | {r.seconds / base:.2f}x |" for r in rows],
    ])
