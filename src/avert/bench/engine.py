"""`avert bench engine`: avert's time per image against diffusers' on the same tiny components, same run.

Both pipelines use the same folder of seeded tiny SD components, the same scheduler, steps, size, cfg
scale, prompt and negative. Runs are interleaved and the median of `repeats` is reported, per image.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from avert.bench import publish

import torch

from avert.evaluation.common import machine
from avert.models.loader import load_model
from avert.pipeline.generate import generate
from avert.request import GenerationRequest
from avert.sampling.samplers import sampler_spec

CASES = (("Euler a", 1), ("DPM++ 2M Karras", 1), ("DDIM", 1), ("Heun", 1), ("Euler a", 4))
PROMPT, NEGATIVE = "a red house", "blue tree"


@dataclass(frozen=True)
class Row:
    sampler: str
    batch: int
    avert_s: float  # seconds per image, median
    diffusers_s: float
    max_pixel_diff: int  # 0..255, avert vs diffusers on image 0


def run_engine_benchmark(repeats: int = 5, docs: Path = Path("docs"), steps: int = 20, size: int = 64) -> list[Row]:
    """Measure, print the table and write it to docs/benchmarks/engine.md."""
    from avert.testing.tiny import build_tiny_sd_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_sd_folder(Path(tmp))
        components = load_model(folder)
        pipe = _diffusers_pipeline(folder)
        rows = [_measure(components, pipe, s, b, repeats, steps, size) for s, b in CASES]
    table = _table(rows, repeats, steps, size)
    publish(table, docs / "benchmarks" / "engine.md")
    return rows


def _diffusers_pipeline(folder: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _measure(components, pipe, sampler: str, batch: int, repeats: int, steps: int, size: int) -> Row:
    request = GenerationRequest(PROMPT, NEGATIVE, seed=1, steps=steps, cfg_scale=7.5, width=size, height=size,
                                sampler=sampler, batch_size=batch)
    ours = lambda: generate(request, components).images[0].image  # noqa: E731
    theirs = lambda: _run_diffusers(pipe, components, request)  # noqa: E731
    ours(), theirs()  # warm-up
    times_ours, times_theirs = [], []
    for _ in range(repeats):
        times_ours.append(_timed(ours))
        times_theirs.append(_timed(theirs))
    import numpy as np

    diff = int(np.abs(np.asarray(ours(), dtype=int) - np.asarray(theirs(), dtype=int)).max())
    return Row(sampler, batch, statistics.median(times_ours) / batch, statistics.median(times_theirs) / batch, diff)


def _run_diffusers(pipe, components, request: GenerationRequest):
    pipe.scheduler = sampler_spec(request.sampler).build(components.scheduler_config, request.seed, request.eta,
                                                       request.schedule_type)
    generators = [torch.Generator("cpu").manual_seed(request.seed + i) for i in range(request.batch_size)]
    return pipe([request.prompt] * request.batch_size, negative_prompt=[request.negative_prompt] * request.batch_size,
                num_inference_steps=request.steps, guidance_scale=request.cfg_scale, width=request.width,
                height=request.height, generator=generators).images[0]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _table(rows: list[Row], repeats: int, steps: int, size: int) -> str:
    head = [
        "# Engine benchmark: avert vs diffusers on the same tiny components",
        "",
        f"Measured {date.today().isoformat()} by `avert bench engine` on {machine()}; "
        f"{size}x{size}, {steps} steps, cfg 7.5, prompt and negative, fp32; median of {repeats} interleaved runs.",
        "",
        "| sampler | batch | avert s/image | diffusers s/image | avert / diffusers | max pixel diff |",
        "|---|---|---|---|---|---|",
    ]
    body = [f"| {r.sampler} | {r.batch} | {r.avert_s:.4f} | {r.diffusers_s:.4f} | {r.avert_s / r.diffusers_s:.2f} | "
            f"{r.max_pixel_diff} |" for r in rows]
    return "\n".join(head + body)
