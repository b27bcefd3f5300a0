"""eta for the samplers that take one, as A1111 runs them (k-diffusion's `get_ancestral_step`, DDIM's eta).

An ancestral step from sigma to sigma' (Karras et al. 2022's Euler step plus fresh noise; k-diffusion
`sampling.get_ancestral_step`) splits sigma' into a deterministic part and a noise part:

    sigma_up   = min(sigma', eta * sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2))
    sigma_down = sqrt(sigma'^2 - sigma_up^2)
    x' = x + d (sigma_down - sigma) + sigma_up z,   d = (x - D(x)) / sigma

At eta 1 this is diffusers' `EulerAncestralDiscreteScheduler` (and `KDPM2AncestralDiscreteScheduler` for the
second-order step); at eta 0 it is the Euler step to sigma' (no noise), which is why A1111's default API payload
(`"eta": 0` with "Euler a") renders deterministically. The classes below are diffusers' schedulers with eta as
an attribute: at eta 1 they are diffusers' own steps, unchanged; otherwise the deterministic and noise parts are
taken with eta's sigma_down and sigma_up. DDIM's eta (Song et al. 2021, sigma_t = eta sqrt((1 - a_{t-1}) /
(1 - a_t)) sqrt(1 - a_t / a_{t-1})) is diffusers' own `step(eta=...)` argument.

The noise of each step is drawn from the image's generator as diffusers draws it (the same draw at any eta, so
the generator's stream does not depend on eta; k-diffusion also draws it at eta 0 and multiplies it by 0).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, KDPM2AncestralDiscreteScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


def ancestral_sigmas(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) of k-diffusion's `get_ancestral_step`, element-wise (works on a vector of steps)."""
    full = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_up = torch.minimum(sigma_to, eta * full)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


class EulerAncestralEta(EulerAncestralDiscreteScheduler):
    """"Euler a" at any eta: diffusers' step for x0 and the step index, then eta's split of the step."""

    eta: float = 1.0

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        if self.eta == 1.0:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        state = _rng_state(generator)
        _, x0 = super().step(model_output, timestep, sample, generator=generator, return_dict=False)
        _set_rng_state(generator, state)  # draw the same noise again, below
        sigma, sigma_next = self.sigmas[self.step_index - 1], self.sigmas[self.step_index]
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, self.eta)
        x = sample.to(torch.float32)
        prev = x + (x - x0) / sigma * (sigma_down - sigma)
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)
        prev = (prev + noise * sigma_up).to(model_output.dtype)
        return EulerAncestralDiscreteSchedulerOutput(prev, x0) if return_dict else (prev, x0)


class KDPM2AncestralEta(KDPM2AncestralDiscreteScheduler):
    """"DPM2 a" at any eta: diffusers' scheduler with its sigma_up / sigma_down (and the midpoint sigmas between
    sigma and sigma_down, with their timesteps) computed from eta."""

    eta: float = 1.0

    def set_timesteps(self, num_inference_steps, device=None, num_train_timesteps=None):
        super().set_timesteps(num_inference_steps, device=device, num_train_timesteps=num_train_timesteps)
        if self.eta == 1.0:
            return
        sigmas = self.sigmas[::2].to(torch.float32)  # diffusers stores s0, s1, s1, s2, s2, ..., 0, 0
        sigmas_next = torch.cat([sigmas[1:], sigmas.new_zeros(1)])
        down, up = ancestral_sigmas(sigmas, sigmas_next, self.eta)
        down[-1], up[-1] = 0.0, 0.0
        interpol = sigmas.log().lerp(down.log(), 0.5).exp()
        interpol[-2:] = 0.0
        self.sigmas_up, self.sigmas_down, self.sigmas_interpol = (_interleave(v) for v in (up, down, interpol))
        log_sigmas = self.log_sigmas.cpu()
        t_interpol = torch.from_numpy(np.array([self._sigma_to_t(s, log_sigmas) for s in interpol.cpu()]))
        t_interpol = t_interpol.to(self.timesteps.device, dtype=self.timesteps.dtype)
        t_main = self.timesteps[0::2]  # t0, then the main timesteps after each midpoint
        interleaved = torch.stack((t_interpol[:-2, None], t_main[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([t_main[:1], interleaved])


class DDIMEta(DDIMScheduler):
    """DDIM whose `step` takes eta from the scheduler (diffusers' default, 0, unless set)."""

    eta: float = 0.0

    def step(self, model_output, timestep, sample, eta=None, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True):  # diffusers' arguments by name: the loop reads them
        return super().step(model_output, timestep, sample, eta=self.eta if eta is None else eta,
                            use_clipped_model_output=use_clipped_model_output, generator=generator,
                            variance_noise=variance_noise, return_dict=return_dict)


def _interleave(values: torch.Tensor) -> torch.Tensor:
    """diffusers' layout of a per-step vector in KDPM2: v0, v1, v1, v2, v2, ..., v_n, v_n, v_n."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


def _rng_state(generator: torch.Generator | None) -> torch.Tensor:
    return generator.get_state() if generator is not None else torch.get_rng_state()


def _set_rng_state(generator: torch.Generator | None, state: torch.Tensor) -> None:
    if generator is not None:
        generator.set_state(state)
    else:
        torch.set_rng_state(state)


ETA_SCHEDULERS = {"EulerAncestralDiscreteScheduler": EulerAncestralEta,
                  "KDPM2AncestralDiscreteScheduler": KDPM2AncestralEta, "DDIMScheduler": DDIMEta}
