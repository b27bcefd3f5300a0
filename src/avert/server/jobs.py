"""The job queue: FIFO and bounded, one worker thread per model, progress and cancellation between steps.

A job is a list of parts, each one engine call (a batch split by negative, an A1111 `n_iter` round, a column
of a comparison). Its worker reports progress from the sampling loop's step events and stops at the next
step once the job is cancelled (`should_stop`). A failure in one job (bad input found late, a model that does
not load, out of memory, a bug) is recorded on that job; the worker goes on with the next.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from avert.conditioning.embeddings import EmbeddingLibrary
from avert.models.lora import LoraLibrary
from avert.errors import AvertError, FieldProblem, ModelLoadError, ValidationError
from avert.pipeline.generate import generate
from avert.pipeline.result import GenerationResult
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest
from avert.sampling.loop import Cancelled, StepEvent
from avert.schema import Limits
from avert.server.registry import ModelRegistry

log = logging.getLogger("avert.server")

Render = Callable[..., GenerationResult]  # the signature of `avert.pipeline.generate.generate`

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = frozenset({DONE, FAILED, CANCELLED})


@dataclass(frozen=True)
class Part:
    """One engine call of a job: a validated request with its seed resolved, and a label (compare columns)."""

    request: GenerationRequest
    label: str = ""
    maps: bool = False  # record where its negatives acted (`avert.guidance.attribution`)


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed: `kind` is validation, model, out_of_memory or internal."""

    kind: str
    message: str
    problems: tuple[FieldProblem, ...] = ()


class QueueFull(AvertError):
    """The queue holds as many waiting jobs as it may; try again after `retry_after` seconds."""

    def __init__(self, size: int, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"the queue is full ({size} jobs waiting); retry after {retry_after} s")


OUT_OF_MEMORY_TEXT = ("can't allocate memory", "out of memory", "not enough memory", "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError, Python's MemoryError, and the RuntimeError torch's CPU allocator raises
    ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(t in str(error).lower() for t in OUT_OF_MEMORY_TEXT)


class Job:
    """A job's state, written by its worker and read by request handlers (guarded by a lock)."""

    def __init__(self, model: str, parts: Sequence[Part], kind: str = "generate", owner: str | None = None):
        self.id = uuid.uuid4().hex
        self.owner = owner  # the client (key or session) that made it; None where the server has one user
        self.model = model
        self.parts = tuple(parts)
        self.kind = kind
        self.created = time.time()
        self.started: float | None = None
        self.ended: float | None = None
        self.status = QUEUED
        self.results: list[GenerationResult | None] = []  # one per part; None for a skipped part
        self.failure: JobFailure | None = None
        self.step = (0, 0)  # (done, total) of the part being sampled
        self.denoised = None  # the last step's `StepEvent.denoised` (computed only for a preview)
        self.vae = None  # the model's VAE while a part runs (None: a pixel-space model), for previews
        self.finished = threading.Event()
        self._cancel = threading.Event()
        self._skip = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def progress(self) -> float:
        """Fraction of the job done, 0 to 1, over all parts."""
        if self.status == DONE:
            return 1.0
        done, total = self.step
        return min(1.0, (len(self.results) + (done / total if total else 0.0)) / max(1, len(self.parts)))

    @property
    def interrupted(self) -> bool:
        return self._cancel.is_set()

    def should_stop(self) -> bool:
        return self._cancel.is_set() or self._skip.is_set()

    def on_step(self, event: StepEvent) -> None:
        self.step = (event.done, event.total)
        self.denoised = event.denoised

    def preview(self):
        """A picture of the running part's last denoised estimate (its first image), or None: nothing sampled yet,
        or the job has ended (its images are the result)."""
        from avert.output.preview import preview_image

        denoised = self.denoised
        latents = denoised() if denoised is not None and self.status not in FINISHED else None
        return preview_image(latents, self.vae) if latents is not None else None

    def cancel(self) -> None:
        """Ask the job to stop at its next step (or not to start)."""
        self._cancel.set()

    def skip(self) -> None:
        """Stop the part being sampled and go on with the next (A1111's /skip)."""
        self._skip.set()

    def take_skip(self) -> bool:
        """True once for each skip request that arrived (and not a cancel)."""
        if self._skip.is_set() and not self._cancel.is_set():
            self._skip.clear()
            return True
        return False

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) when the job ends; at once if it has ended."""
        with self._lock:
            if self.status not in FINISHED:
                self._callbacks.append(callback)
                return
        callback()

    def finish(self, status: str, failure: JobFailure | None = None) -> None:
        with self._lock:
            if self.status in FINISHED:
                return
            self.status, self.failure, self.ended = status, failure, time.time()
            callbacks, self._callbacks = self._callbacks, []
            self.denoised = self.vae = None
        self.finished.set()
        for callback in callbacks:
            callback()


class JobQueue:
    """Waiting jobs per model (FIFO), at most `size` waiting over all models, one worker thread per model."""

    def __init__(self, registry: ModelRegistry, *, size: int = 16, history: int = 64, limits: Limits = Limits(),
                 runtime: Runtime = Runtime(), render: Render = generate,
                 embeddings: EmbeddingLibrary = EmbeddingLibrary(), loras: LoraLibrary = LoraLibrary()):
        self.registry, self.size, self.history = registry, size, history
        self.limits, self.runtime, self.render, self.embeddings = limits, runtime, render, embeddings
        self.loras = loras  # applied for one run each and unloaded after it (`avert.models.lora`)
        self._cond = threading.Condition()
        self._waiting: dict[str, deque[Job]] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._durations: deque[float] = deque(maxlen=32)
        self._closed = False

    def submit(self, job: Job) -> Job:
        """Queue a job, or raise QueueFull with a Retry-After estimate."""
        with self._cond:
            waiting = self._waiting_count()
            if self._closed or waiting >= self.size:
                raise QueueFull(waiting, self._retry_after(waiting))
            self._waiting.setdefault(job.model, deque()).append(job)
            self._jobs[job.id] = job
            self._trim_history()
            self._ensure_worker(job.model)
            self._cond.notify_all()
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, if it is held and belongs to `owner` (a job without an owner belongs to everybody)."""
        with self._cond:
            job = self._jobs.get(job_id)
        return job if job is not None and job.owner in (None, owner) else None

    def cancel(self, job: Job) -> None:
        """Cancel a job: a waiting one leaves the queue now, a running one stops at its next step."""
        job.cancel()
        with self._cond:
            queue = self._waiting.get(job.model)
            if queue is not None and job in queue:
                queue.remove(job)
                job.finish(CANCELLED)

    def running(self, owner: str | None = None, everyone: bool = True) -> list[Job]:
        """Running jobs: all, or (`everyone` False) those of `owner` and those without an owner."""
        with self._cond:
            return [j for j in self._jobs.values() if j.status == RUNNING and (everyone or j.owner in (None, owner))]

    def waiting(self) -> int:
        with self._cond:
            return self._waiting_count()

    def workers_alive(self) -> dict[str, bool]:
        with self._cond:
            return {model: t.is_alive() for model, t in self._workers.items()}

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the workers."""
        with self._cond:
            self._closed = True
            jobs = list(self._jobs.values())
            self._cond.notify_all()
        for job in jobs:
            self.cancel(job)
        for worker in list(self._workers.values()):
            worker.join(timeout)

    def _waiting_count(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def _retry_after(self, waiting: int) -> int:
        average = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, min(600, math.ceil(average * (waiting + 1) / max(1, len(self._workers)))))

    def _trim_history(self) -> None:
        finished = [j for j in self._jobs.values() if j.status in FINISHED]
        for job in finished[: max(0, len(finished) - self.history)]:
            del self._jobs[job.id]

    def _ensure_worker(self, model: str) -> None:
        if model not in self._workers or not self._workers[model].is_alive():
            worker = threading.Thread(target=self._work, args=(model,), name=f"avert-worker-{model}", daemon=True)
            self._workers[model] = worker
            worker.start()

    def _next(self, model: str) -> Job | None:
        with self._cond:
            while not self._waiting.get(model) and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            job = self._waiting[model].popleft()
            job.status, job.started = RUNNING, time.time()
            return job

    def _work(self, model: str) -> None:
        while (job := self._next(model)) is not None:
            try:
                self._execute(job)
            except BaseException as error:  # noqa: BLE001 - the worker must outlive any one job
                log.exception("job %s: unexpected failure", job.id)
                job.finish(FAILED, JobFailure("internal", f"internal error: {type(error).__name__}: {error}"))
                if not isinstance(error, Exception):
                    raise
            finally:
                if job.started is not None:
                    self._durations.append(time.time() - job.started)
                with self._cond:
                    self._trim_history()

    def _execute(self, job: Job) -> None:
        """Run the job's parts in order and record how it ended."""
        try:
            components = self.registry.components(job.model)
            for part in job.parts:
                if not self._run_part(job, part, components):
                    job.finish(CANCELLED)
                    return
            job.finish(DONE)
        except ValidationError as error:
            job.finish(FAILED, JobFailure("validation", str(error), error.problems))
        except ModelLoadError as error:
            job.finish(FAILED, JobFailure("model", str(error)))
        except AvertError as error:
            job.finish(FAILED, JobFailure("validation", str(error)))
        except Exception as error:  # noqa: BLE001 - out of memory is told apart; anything else goes to _work
            if not is_out_of_memory(error):
                raise
            gc.collect()
            job.finish(FAILED, JobFailure("out_of_memory", f"out of memory: {str(error)[:300] or type(error).__name__}; "
                                          "try a smaller size or batch"))

    def _run_part(self, job: Job, part: Part, components) -> bool:
        """Render one part; False when the job was cancelled (a skipped part counts as done, without images)."""
        if job.interrupted:
            return False
        job.step = (0, part.request.steps)
        job.vae = components.vae
        try:
            extra = {"maps": True} if part.maps else {}
            result = self.render(part.request, components, runtime=self.runtime, limits=self.limits,
                                 on_step=job.on_step, should_stop=job.should_stop, embeddings=self.embeddings,
                                 loras=self.loras, **extra)
        except Cancelled:
            if job.take_skip():
                job.results.append(None)
                return True
            return False
        job.results.append(result)
        job.step, job.denoised = (0, 0), None
        return True
