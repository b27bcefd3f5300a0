"""`avert bench scale`: `avert batch` on a local Ray cluster of one and of two worker nodes, against one process.

The same job (the embedded model at its defaults: 32x32, 20 steps, a prompt and a negative) runs three ways: in
this process with one torch thread (`avert batch` without Ray), then on a local Ray cluster (a head without CPUs and
one, then two, worker nodes of 1 CPU, each actor with 1 torch thread; loopback only). The steady rate counts the
images written after every actor has written its first chunk, by the actors' own clocks (actor start-up,
which loads torch and the model, is reported apart). Overhead per request, on one worker: the steady wall time per
request minus the model time per request that the actors measure (conditioning, sampling, decoding): what Ray
scheduling, serialization, PNG encoding and writing, and the manifest add.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from avert.bench import publish
from avert.evaluation.common import machine

PROMPT = {"prompt": "a red house on a hill", "negative_prompt": "clouds"}


@dataclass(frozen=True)
class Run:
    """One way of running the job: images, seconds end to end, steady images/s, model seconds per request."""

    name: str
    workers: int
    images: int
    seconds: float
    steady: float
    model_seconds: float
    first_row: float


def run_scale_benchmark(requests: int = 96, docs: Path = Path("docs"), batch_images: int = 8) -> list[Run]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        jobs.write_text("".join(json.dumps({**PROMPT, "seed": i}) + "\n" for i in range(requests)))
        runs = [_local(jobs, Path(tmp) / "local", batch_images)]
        for workers in (1, 2):  # each cluster from a fresh process: Ray keeps a stopped cluster's state in-process
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                runs.append(pool.submit(_on_ray, jobs, Path(tmp) / f"ray{workers}", workers, batch_images).result())
    publish(table(runs, requests, batch_images), docs / "benchmarks" / "scale-out.md")
    return runs


def _local(jobs: Path, out: Path, batch_images: int) -> Run:
    from avert.batch.local import run_local
    from avert.batch.render import Settings

    summary = run_local(jobs, str(out), Settings(batch_images=batch_images, threads=1), progress=False)
    rows = _manifest(out)
    model = sum(r["seconds"] for r in rows) / len(rows)
    return Run("one process (no Ray)", 1, summary.images, summary.seconds, steady_rate(rows), model, 0.0)


def _on_ray(jobs: Path, out: Path, workers: int, batch_images: int) -> Run:
    import ray
    from ray.cluster_utils import Cluster

    from avert.batch.on_ray import run_on_ray
    from avert.batch.render import Settings

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["OMP_NUM_THREADS"] = "1"
    from avert.cli import _quiet_libraries

    _quiet_libraries()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    arrivals: list[tuple[float, dict]] = []
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        started = time.perf_counter()
        summary = run_on_ray(jobs, str(out), Settings(batch_images=batch_images, threads=1), address=cluster.address,
                             workers=workers, progress=False,
                             on_rows=lambda rows: arrivals.extend((time.perf_counter(), r) for r in rows))
        ended = time.perf_counter()
    finally:
        ray.shutdown()
        cluster.shutdown()
    rows = [r for _, r in arrivals]
    rate = steady_rate(rows)
    model = sum(r["seconds"] for r in rows) / len(rows)
    first_arrival = min(at for at, _ in arrivals)
    return Run(f"Ray, {workers} worker node{'s' if workers > 1 else ''}", workers, summary.images,
               ended - started, rate, model, first_arrival - started)


def steady_rate(rows: list[dict]) -> float:
    """Images per second after every worker's first chunk: from the last write of the last first chunk to the last
    write, counting the images of the later chunks written in that span (the workers' own clocks, the rows'
    `finished`; on one machine they share a clock)."""
    firsts = [r for r in rows if r["chunk"] == 0]
    begin = max(r["finished"] for r in firsts)
    after = [r for r in rows if r["chunk"] > 0 and r["finished"] > begin]
    span = max(r["finished"] for r in rows) - begin
    return sum(len(r["files"]) for r in after) / span if span > 0 else float("nan")


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def table(runs: list[Run], requests: int, batch_images: int) -> str:
    local, one, two = runs
    overhead = 1.0 / one.steady - one.model_seconds
    return "\n".join([
        "# Scale-out benchmark: `avert batch` locally and on a local Ray cluster",
        "",
        f"Measured {date.today().isoformat()} by `avert bench scale` on {machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}: {requests} requests of the embedded model at its defaults (32x32, 20 "
        f"steps, Euler a, a prompt and a negative), up to {batch_images} images per UNet batch; every worker has "
        "1 CPU and 1 torch thread. On Ray the head node has no CPUs and the worker nodes run on this machine "
        "(loopback), so the driver, Ray's daemons and the workers share its cores. Steady: images/s from the moment "
        "every worker had written its first chunk to the last write (the workers' clocks, the rows' `finished` and "
        "`chunk`); first result: seconds from the start of the run (validation, scheduling, actor start-up with the "
        "model load) until the driver had the first manifest row.",
        "",
        "| run | images | seconds end to end | steady images/s | model s / request | first result (s) |",
        "|---|---|---|---|---|---|",
        *[f"| {r.name} | {r.images} | {r.seconds:.1f} | {r.steady:.2f} | {r.model_seconds:.3f} | "
          f"{r.first_row:.1f} |" for r in runs],
        "",
        f"- Two workers against one: **{two.steady / one.steady:.2f}x** the steady images/s (target at least 1.7x); "
        f"end to end {one.seconds / two.seconds:.2f}x.",
        f"- Overhead per request on Ray (one worker: steady wall time per request {1000 / one.steady:.0f} ms minus "
        f"model time {1000 * one.model_seconds:.0f} ms): **{1000 * overhead:.0f} ms** (target under 50 ms).",
        f"- One worker on Ray against one process without Ray: {one.steady / local.steady:.2f}x the steady "
        "images/s.",
    ])
