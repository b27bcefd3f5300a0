"""Requests of a batch file to images: shareable requests of one model, size and sampler in one sampling loop.

Used alike by the local runner and by each Ray actor: a `Renderer` holds the models (loaded once, by name) and
turns a chunk of `BatchRequest`s into `Rendered` values, one per request, never raising for one request's
failure: a loop that fails is re-run one request at a time so that only the failing request is marked failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from avert.batch import DEFAULT_BATCH_IMAGES
from avert.batch.jobs import BatchRequest
from avert.pipeline.generate import generate
from avert.pipeline.result import GeneratedImage
from avert.pipeline.runtime import Runtime
from avert.pipeline.together import generate_together, loop_key, shareable
from avert.schema import Limits
from avert.server.bodies import generate_parts


@dataclass(frozen=True)
class Settings:
    """What every renderer of a job needs, fixed for the job (picklable: it is sent to Ray's actors)."""

    model: str | None = None  # the default model: a name in models_dir, a path, or None for the embedded one
    models_dir: str | None = None
    embeddings_dir: str | None = None
    batch_images: int = DEFAULT_BATCH_IMAGES  # images per UNet batch (a sampling loop's rows)
    threads: int | None = None  # torch threads per renderer (None: torch's default)
    device: str = "cpu"
    precision: str = "fp32"


@dataclass(frozen=True)
class Rendered:
    """One request's outcome: its images (seed order), or the error that stopped it, and its share of time."""

    request: BatchRequest
    images: tuple[GeneratedImage, ...]
    seconds: float
    error: str | None = None


class Renderer:
    """The models of a job, loaded once; `render` makes the images of a chunk of requests."""

    def __init__(self, settings: Settings, limits: Limits = Limits()):
        import torch

        from avert.conditioning.embeddings import load_embeddings
        from avert.server.registry import ModelRegistry

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings, self.limits = settings, limits
        self.registry = ModelRegistry(settings.model, Path(settings.models_dir) if settings.models_dir else None)
        self.embeddings = load_embeddings(Path(settings.embeddings_dir) if settings.embeddings_dir else None)
        self.runtime = Runtime(device=settings.device, precision=settings.precision)

    def validate(self, model: str, body: dict) -> None:
        """Raise ValidationError where `model` refuses `body` (what `read_batch_file` calls per line)."""
        generate_parts(body, self.limits, lambda: self.registry.components(model))

    def render(self, requests: Sequence[BatchRequest]) -> list[Rendered]:
        """Every request of the chunk, in order; shareable parts of one model and loop run together, at most
        `settings.batch_images` images per loop."""
        parts = {r.hash: self._parts(r) for r in requests}
        done: dict[tuple[str, int], tuple[tuple[GeneratedImage, ...], float] | str] = {}
        for unit in self._units(requests, parts):
            done.update(self._run(unit))
        return [self._outcome(r, parts[r.hash], done) for r in requests]

    def _parts(self, request: BatchRequest):
        try:
            return generate_parts(json.loads(request.body), self.limits,
                                  lambda: self.registry.components(request.model))
        except Exception as error:  # noqa: BLE001 - recorded as the request's failure
            return _failure(error)

    def _units(self, requests: Sequence[BatchRequest], parts: dict) -> list[list[tuple]]:
        """Lists of (model, request hash, part index, part): shareable parts grouped by model and loop key, cut at
        `batch_images` images; every other part alone."""
        groups: dict[tuple, list[tuple]] = {}
        alone = []
        for request in requests:
            if isinstance(parts[request.hash], str):
                continue
            components = self.registry.components(request.model)
            for index, part in enumerate(parts[request.hash]):
                entry = (request.model, request.hash, index, part)
                if shareable(part.request):
                    groups.setdefault((request.model, loop_key(part.request, components)), []).append(entry)
                else:
                    alone.append([entry])
        units = []
        for entries in groups.values():
            unit, images = [], 0
            for entry in entries:
                size = entry[3].request.batch_size
                if unit and images + size > self.settings.batch_images:
                    units.append(unit)
                    unit, images = [], 0
                unit.append(entry)
                images += size
            units.append(unit)
        return units + alone

    def _run(self, unit: list[tuple]) -> dict:
        """{(hash, part index): (images, seconds) or an error text} for one loop; a failing loop of several
        parts is re-run part by part."""
        model = unit[0][0]
        try:
            components = self.registry.components(model)
            if len(unit) == 1 and not shareable(unit[0][3].request):
                result = generate(unit[0][3].request, components, runtime=self.runtime, limits=self.limits,
                                  embeddings=self.embeddings)
                return {(unit[0][1], unit[0][2]): (result.images, result.seconds)}
            results = generate_together([e[3].request for e in unit], components, runtime=self.runtime,
                                        limits=self.limits, embeddings=self.embeddings)
            return {(e[1], e[2]): (r.images, r.seconds) for e, r in zip(unit, results)}
        except Exception as error:  # noqa: BLE001 - one request's failure must not stop the others
            if len(unit) == 1:
                return {(unit[0][1], unit[0][2]): _failure(error)}
            out = {}
            for entry in unit:
                out.update(self._run([entry]))
            return out

    @staticmethod
    def _outcome(request: BatchRequest, parts, done: dict) -> Rendered:
        if isinstance(parts, str):
            return Rendered(request, (), 0.0, parts)
        outcomes = [done[(request.hash, i)] for i in range(len(parts))]
        errors = [o for o in outcomes if isinstance(o, str)]
        if errors:
            return Rendered(request, (), 0.0, errors[0])
        return Rendered(request, tuple(i for images, _ in outcomes for i in images), sum(s for _, s in outcomes))


def _failure(error: BaseException) -> str:
    from avert.errors import ValidationError

    if isinstance(error, ValidationError):
        return "invalid request: " + "; ".join(str(p) for p in error.problems)
    return f"{type(error).__name__}: {error}"[:2000]
