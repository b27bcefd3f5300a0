"""Running a batch job: the shared steps (open, read, what is left, write a request's files and row) and the
local runner, which renders chunk after chunk in this process with a progress bar."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from avert.batch.jobs import BatchFile, BatchRequest, read_batch_file, sort_key
from avert.batch.render import Rendered, Renderer, Settings
from avert.batch.storage import IMAGES, Manifest, Storage
from avert.schema import Limits


@dataclass
class Summary:
    """What a run did: requests in the file, already done before it, done and failed by it, images, seconds."""

    requests: int
    skipped: int
    done: int = 0
    failed: int = 0
    images: int = 0
    seconds: float = 0.0
    duplicates: int = 0
    workers: int = 1

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds else 0.0
        return (f"{self.done} done, {self.failed} failed, {self.skipped} already done (of {self.requests} requests"
                f"{f', {self.duplicates} duplicate lines folded' if self.duplicates else ''}); {self.images} images "
                f"in {self.seconds:.1f} s ({rate:.2f} images/s, {self.workers} worker"
                f"{'s' if self.workers != 1 else ''})")


def write_rendered(rendered: Rendered, storage: Storage, worker: str, chunk: int) -> dict:
    """Write a request's PNGs (named by its hash, so a retry overwrites rather than adds) and return its row;
    `chunk` numbers the worker's chunks (the requests rendered together)."""
    from avert.output.pnginfo import png_bytes

    request = rendered.request
    row = {"hash": request.hash, "line": request.line, "model": request.model, "worker": worker, "chunk": chunk,
           "seconds": round(rendered.seconds, 4)}
    if len(request.lines) > 1:
        row["lines"] = list(request.lines)
    if rendered.error is not None:
        return {**row, "status": "failed", "error": rendered.error, "files": []}
    files = []
    for k, generated in enumerate(rendered.images):
        name = f"{IMAGES}/{request.hash[:24]}-{k:03d}.png"
        storage.write(name, png_bytes(generated.image, generated.infotext, generated.record))
        files.append(name)
    return {**row, "status": "done", "files": files, "seeds": [g.seed for g in rendered.images],
            "finished": round(time.time(), 3)}  # wall clock when its files were written


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def images_of(request: BatchRequest) -> int:
    value = json.loads(request.body).get("batch_size", 1)
    return value if isinstance(value, int) and value > 0 else 1


def chunks(requests: Sequence[BatchRequest], images: int) -> Iterator[list[BatchRequest]]:
    """Consecutive requests up to `images` images together (a request of more images is a chunk of its own)."""
    chunk, count = [], 0
    for request in requests:
        size = images_of(request)
        if chunk and count + size > images:
            yield chunk
            chunk, count = [], 0
        chunk.append(request)
        count += size
    if chunk:
        yield chunk


@dataclass
class Opened:
    """A job ready to run: its storage and manifest (locked), the file's requests, and those still to do."""

    storage: Storage
    manifest: Manifest
    batch: BatchFile
    pending: list[BatchRequest]


def open_job(jobs: Path, out: str, default_model: str, model_names, validate: Callable[[str, dict], None]) -> Opened:
    """Read and validate the file (every bad line reported, nothing made), lock the output, and list what the
    manifest does not already record as done (sorted so that requests that can share a loop are together)."""
    batch = read_batch_file(jobs, default_model, model_names, validate)
    storage = Storage(out)
    manifest = Manifest(storage)
    storage.remove_temporaries()
    done = manifest.done()
    pending = sorted((r for r in batch.requests if r.hash not in done), key=sort_key)
    return Opened(storage, manifest, batch, pending)


def run_local(jobs: Path, out: str, settings: Settings, *, limits: Limits = Limits(), progress: bool = True
              ) -> Summary:
    """Render every request of `jobs` not yet done under `out`, in this process."""
    renderer = Renderer(settings, limits)
    job = open_job(jobs, out, renderer.registry.default_name, renderer.registry.names(), renderer.validate)
    summary = Summary(len(job.batch.requests), len(job.batch.requests) - len(job.pending),
                      duplicates=job.batch.duplicates)
    started = time.perf_counter()
    worker = worker_name()
    try:
        with _bar(len(job.pending), progress) as bar:
            for number, chunk in enumerate(chunks(job.pending, settings.batch_images)):
                rows = [write_rendered(r, job.storage, worker, number) for r in renderer.render(chunk)]
                job.manifest.append(rows)
                count(summary, rows)
                bar.update(len(chunk))
    finally:
        job.manifest.close()
        summary.seconds = time.perf_counter() - started
    return summary


def count(summary: Summary, rows: list[dict]) -> None:
    for row in rows:
        if row["status"] == "done":
            summary.done += 1
            summary.images += len(row["files"])
        else:
            summary.failed += 1


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="Requests", unit="request", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True)
