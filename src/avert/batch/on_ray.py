"""`avert batch --ray-address`: the same job on a Ray cluster, through Ray Data.

The driver (this process) reads and validates the file, locks the output and lists what is left, exactly as a
local run does. The requests still to do go into a Ray dataset, sorted so that requests that can share a
sampling loop are neighbours; `map_batches` runs them on an actor pool, one model-holding `RayRenderer` per slot
(`cpus` CPUs, `gpus` GPUs), each writing its PNGs to the shared output (a folder every node sees, or a pyarrow
filesystem URI) and returning the requests' manifest rows; the driver appends the rows as they arrive.

Failures: Ray Data restarts a dead actor and retries its batch elsewhere (actors are created with
max_restarts=-1, max_task_retries=-1); files are named by the request's hash and written atomically, so a batch
done twice leaves the same files, and the driver records each hash once. A killed driver loses at most the
batches in flight: the next run skips what its manifest holds.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from avert.batch.jobs import BatchRequest
from avert.batch.local import Summary, count, open_job, worker_name, write_rendered, _bar
from avert.batch.render import Renderer, Settings
from avert.errors import AvertError
from avert.schema import Limits

INSTALL = "pip install 'avert[ray]'"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is an extra of Ray
    except ImportError:
        raise AvertError(f"ray-address: running on Ray needs Ray and Ray Data; install them with {INSTALL}") from None
    return ray


class RayRenderer:
    """A Ray Data actor: loads the job's models once, renders each batch of requests, writes their files."""

    def __init__(self, settings: Settings, out: str, limits: Limits):
        from avert.batch.storage import Storage

        self.renderer = Renderer(settings, limits)
        self.storage = Storage(out)
        self.worker = worker_name()
        self.chunks = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests = [BatchRequest(h, tuple(json.loads(lines)), m, b) for h, lines, m, b in
                    zip(batch["hash"], batch["lines"], batch["model"], batch["body"])]
        rows = [write_rendered(r, self.storage, self.worker, self.chunks) for r in self.renderer.render(requests)]
        self.chunks += 1
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object)}


def run_on_ray(jobs: Path, out: str, settings: Settings, *, address: str, workers: int | None = None,
               cpus: float = 1.0, gpus: float = 0.0, limits: Limits = Limits(), progress: bool = True,
               on_rows: Callable[[list[dict]], None] | None = None) -> Summary:
    """Render every request of `jobs` not yet done under `out` on the Ray cluster at `address`; `on_rows` sees
    the manifest rows as they arrive (the scale-out benchmark times them)."""
    ray = import_ray()
    validator = Renderer(settings, limits)  # validates every line before the cluster is asked for anything
    job = open_job(jobs, out, validator.registry.default_name, validator.registry.names(), validator.validate)
    summary = Summary(len(job.batch.requests), len(job.batch.requests) - len(job.pending),
                      duplicates=job.batch.duplicates)
    started = time.perf_counter()
    try:
        if job.pending:
            _connect(ray, address)
            summary.workers = workers or _slots(ray, cpus, gpus)
            seen: set[str] = set()
            with _bar(len(job.pending), progress) as bar:
                for batch in _dataset(ray, job.pending, settings, out, limits, summary.workers, cpus, gpus
                                      ).iter_batches(batch_size=None, batch_format="numpy"):
                    rows = [r for r in (json.loads(t) for t in batch["row"]) if r["hash"] not in seen]
                    seen.update(r["hash"] for r in rows)
                    job.manifest.append(rows)
                    count(summary, rows)
                    bar.update(len(rows))
                    if on_rows is not None:
                        on_rows(rows)
    finally:
        job.manifest.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _connect(ray, address: str) -> None:
    """Join the cluster (unless this process already has), quietly: avert's bar reports progress."""
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise AvertError(f"ray-address: {address!r}: no Ray cluster could be reached ({str(error)[:200]}); "
                             "start one with `ray start --head` or give its address") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # avert's own bar counts requests
    context.execution_options.preserve_order = False
    context.print_on_execution_start = False


def _slots(ray, cpus: float, gpus: float) -> int:
    """Actors that fit the cluster: its CPUs (and GPUs) over each actor's share; at least one."""
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) // cpus)
    if gpus:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    if slots < 1:
        raise AvertError(f"workers: the cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} "
                         f"GPUs, not enough for one worker of {cpus:g} CPUs and {gpus:g} GPUs")
    return slots


def _dataset(ray, pending: list[BatchRequest], settings: Settings, out: str, limits: Limits, workers: int,
             cpus: float, gpus: float):
    items = [{"hash": r.hash, "lines": json.dumps(list(r.lines)), "model": r.model, "body": r.body} for r in pending]
    blocks = max(1, math.ceil(len(items) / settings.batch_images))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    return dataset.map_batches(RayRenderer, batch_size=settings.batch_images, num_cpus=cpus,
                               compute=ray.data.ActorPoolStrategy(size=workers),
                               num_gpus=gpus or None, batch_format="numpy",
                               fn_constructor_kwargs={"settings": settings, "out": out, "limits": limits})
