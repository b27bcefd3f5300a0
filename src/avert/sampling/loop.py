"""The one sampling loop: a denoiser callable over diffusers schedulers, one scheduler per image.

Each image has its own scheduler instance and its own `torch.Generator`, so stochastic samplers draw
per-image noise and image i of a batch equals the same seed rendered alone.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from avert.errors import AvertError
from avert.guidance.strategy import StepContext


class Cancelled(AvertError):
    """The run was stopped by its caller before it finished."""


@dataclass(frozen=True)
class StepEvent:
    """Reported after every model evaluation: `done` of `total`; `denoised()` computes, only when called, the
    step's estimate of the clean latents of the batch (None where it has none), for live previews."""

    done: int
    total: int
    denoised: Callable[[], torch.Tensor | None] | None = field(default=None, compare=False, repr=False)


def sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor, StepContext], torch.Tensor],
    schedulers: Sequence,
    noise: torch.Tensor,
    generators: Sequence[torch.Generator],
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    start: torch.Tensor | None = None,
    begin: int = 0,
    blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise `noise` ([batch, C, H, W], unit variance) along the schedulers' timesteps.

    img2img: `start` is the noised init latent and `begin` the index of its timestep (the schedulers' begin
    index is set by the caller, as diffusers' img2img pipeline sets it); the run is the timesteps from there.
    Inpainting: `blend(i, x)` replaces x after step i (keeping the unmasked latents, `avert.pipeline.inpaint`).
    """
    timesteps = schedulers[0].timesteps[begin:]
    order = getattr(schedulers[0], "order", 1)
    steps = (getattr(schedulers[0], "num_inference_steps", None) or len(schedulers[0].timesteps)) - begin // order
    sigma_at = sigma_function(schedulers[0])
    x = noise * schedulers[0].init_noise_sigma if start is None else start
    prediction_type = getattr(getattr(schedulers[0], "config", None), "prediction_type", "epsilon")
    step_kwargs = [_step_kwargs(s, g) for s, g in zip(schedulers, generators)]
    for i, t in enumerate(timesteps):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped at step {i} of {len(timesteps)}")
        model_in = torch.cat([s.scale_model_input(x[j : j + 1], t) for j, s in enumerate(schedulers)])
        ctx = StepContext(i, len(timesteps), float(t), sigma_at(float(t)), i * steps // len(timesteps))
        prediction = denoiser(model_in, t, ctx)
        x = torch.cat([
            s.step(prediction[j : j + 1], t, x[j : j + 1], **kw, return_dict=False)[0]
            for j, (s, kw) in enumerate(zip(schedulers, step_kwargs))
        ])
        if blend is not None:
            x = blend(i, x)
        if on_step is not None:
            on_step(StepEvent(i + 1, len(timesteps), _denoised(model_in, prediction, ctx.sigma, prediction_type)))
    return x


def _denoised(x_t: torch.Tensor, output: torch.Tensor, sigma: float, prediction_type: str):
    """The clean latents a model output implies, computed when called: x_t is the scaled model input (DDPM scale,
    x_t = a x_0 + b e with a = 1 / sqrt(1 + sigma^2), b = sigma a, for every scheduler: k-style ones scale it down
    in `scale_model_input`), so x_0 = x_t / a - sigma e (epsilon), a x_t - b v (v_prediction), or the output itself
    (sample); None at an infinite sigma (the first step of a zero-terminal-SNR schedule)."""

    def compute() -> torch.Tensor | None:
        if not math.isfinite(sigma):
            return None
        a = 1.0 / math.sqrt(1.0 + sigma * sigma)
        if prediction_type == "v_prediction":
            return a * x_t - sigma * a * output
        if prediction_type == "sample":
            return output
        return x_t / a - sigma * output

    return compute


def sigma_function(scheduler) -> Callable[[float], float]:
    """sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t), interpolated between integer timesteps as the
    k-diffusion style schedulers do, so guidance intervals work the same for every sampler (infinite at the end of
    a zero-terminal-SNR schedule)."""
    import numpy as np

    alphas = scheduler.alphas_cumprod.double().cpu().numpy()
    with np.errstate(divide="ignore"):  # zero terminal SNR: alpha_bar_T = 0, sigma_T = inf (as it should be)
        sigmas = ((1 - alphas) / alphas) ** 0.5
    grid = np.arange(len(sigmas))
    return lambda t: float(np.interp(t, grid, sigmas))


def _step_kwargs(scheduler, generator: torch.Generator) -> dict:
    """The generator, where `step` takes one (as diffusers' `prepare_extra_step_kwargs` passes it). eta is not
    passed: DDIM's is its default 0 (diffusers' pipelines pass 0) unless the scheduler carries another
    (`avert.sampling.eta`)."""
    accepted = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in accepted else {}
