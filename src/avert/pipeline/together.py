"""Several requests rendered in one sampling loop (`avert batch`): one UNet batch per step for all their images.

Requests can share a loop when everything that shapes the loop is the same: the size, the sampler, its steps
and eta, tiling (`loop_key`), and when they are plain txt2img runs without NAG or maps (`shareable`); the
others run alone through `avert.pipeline.generate.generate`. Each request keeps its own conditioning, guidance,
seeds, schedulers and noise, so each image equals its request rendered alone (up to the UNet's batch arithmetic,
as within one request's batch: tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from avert.conditioning.embeddings import EmbeddingLibrary
from avert.guidance.denoiser import Denoiser, EvaluationCount
from avert.guidance.perturb import KINDS as PERTURBATIONS
from avert.guidance.together import Together
from avert.models.components import Components
from avert.pipeline import tiling
from avert.pipeline.conditioning import condition
from avert.pipeline.generate import (begin_run, check, decode, default_size, latent_shape, make_schedulers, progress,
                                     resolve, result)
from avert.pipeline.img2img import Start
from avert.pipeline.result import GenerationResult
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest
from avert.sampling.loop import StepEvent, sample
from avert.sampling.noise import image_seeds
from avert.schema import Limits


def shareable(request: GenerationRequest) -> bool:
    """A txt2img request without hires fix, without NAG, without a perturbed branch (pag, seg, slg) and without a
    LoRA: those act inside one run's UNet call (a LoRA changes the model for its run)."""
    return (request.init_image is None and request.mask is None and not request.enable_hr
            and request.nag_scale == 1.0 and request.guidance not in PERTURBATIONS and "<lora:" not in request.prompt)


def loop_key(request: GenerationRequest, components: Components) -> tuple:
    """What must be equal for requests to share a loop, after the model's defaults are filled in."""
    width, height = default_size(request, components)
    return (width, height, request.sampler, request.steps, request.eta, request.tiling)


@torch.no_grad()
def generate_together(
    requests: Sequence[GenerationRequest],
    components: Components,
    *,
    runtime: Runtime = Runtime(),
    limits: Limits = Limits(),
    embeddings: EmbeddingLibrary = EmbeddingLibrary(),
    on_step: Callable[[StepEvent], None] | None = None,
) -> list[GenerationResult]:
    """Render `requests` (shareable, one `loop_key`) in one loop; one result per request, in order. The time of
    the loop is shared among the results by their images."""
    started = time.perf_counter()
    resolved = [resolve(check(r, limits, components), components) for r in requests]
    _check_shared(resolved, components)
    first = resolved[0]
    shape = latent_shape(first, components)
    runs = [_prepare(r, components, runtime, embeddings, shape) for r in resolved]
    schedulers = [s for run in runs for s in run.schedulers]
    together = Together(tuple(run.denoiser for run in runs), tuple(r.batch_size for r in resolved))
    with tiling.circular(components, first.tiling):
        total = len(schedulers[0].timesteps)
        latents = sample(together, schedulers, torch.cat([run.begun.noise for run in runs]),
                         [g for run in runs for g in run.begun.generators], progress(on_step, 0, total))
        pictures = decode(latents, components, runtime)
    seconds = time.perf_counter() - started
    images = sum(r.batch_size for r in resolved)
    out, at = [], 0
    for request, run in zip(resolved, runs):
        share = seconds * request.batch_size / images
        out.append(result(request, components, pictures[at: at + request.batch_size], run.seeds,
                          run.denoiser.guidance, run.denoiser.count, share))
        at += request.batch_size
    return out


@dataclass(frozen=True)
class _Run:
    """One request's part of the shared loop: its seeds, schedulers (one per image), start and denoiser."""

    seeds: tuple[int, ...]
    schedulers: list
    begun: Start
    denoiser: Denoiser


def _prepare(request: GenerationRequest, components: Components, runtime: Runtime, embeddings: EmbeddingLibrary,
             shape: tuple[int, int, int]) -> _Run:
    seeds = tuple(image_seeds(request.seed, request.batch_size))
    text = condition(request, components, runtime, embeddings)
    schedulers = make_schedulers(request, components, seeds, runtime)
    begun = begin_run(request, components, runtime, schedulers, seeds, shape, None)
    denoiser = Denoiser(components.unet, text.branches, text.guidance, text.empty, runtime.autocast_dtype,
                        begun.image_conditioning, count=EvaluationCount(), sizes=text.sizes)
    return _Run(seeds, schedulers, begun, denoiser)


def _check_shared(requests: Sequence[GenerationRequest], components: Components) -> None:
    if not requests:
        raise ValueError("generate_together needs at least one request")
    keys = {loop_key(r, components) for r in requests}
    if len(keys) != 1 or not all(shareable(r) for r in requests):
        raise ValueError("requests rendered together must be plain txt2img runs (no init image, hires fix or NAG) "
                         f"with one size, sampler, steps, eta and tiling; got {sorted(keys, key=str)}")
