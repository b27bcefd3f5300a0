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
taken with eta's sigma_down and sigma_up.

The SDE samplers take eta as k-diffusion's `sample_dpmpp_2m_sde` and `sample_dpmpp_sde` do (A1111 passes them its
eta_ancestral). DPM-Solver++(2M) SDE (Lu et al. 2022, arXiv:2211.01095; k-diffusion's midpoint form), with
h = lambda' - lambda the step in log-SNR and D, D_prev this step's and the previous step's x0 predictions:

    x' = sigma'/sigma e^(-eta h) x + (1 - e^(-(1 + eta) h)) (D + (D - D_prev) / (2 r)) + sigma' sqrt(1 - e^(-2 eta h)) z

(r = h_prev / h; the correction only from the second step on; in diffusers' VP variables each term carries
alpha'). At eta 1 these are diffusers' `sde-dpmsolver++` coefficients. DPM++ SDE (k-diffusion's two-stage
solver, r = 1/2) takes both of its ancestral steps, to the midpoint and to sigma', with eta's split above, as the
Euler a step does. DDIM's eta (Song et al. 2021, sigma_t = eta sqrt((1 - a_{t-1}) /
(1 - a_t)) sqrt(1 - a_t / a_{t-1})) is diffusers' own `step(eta=...)` argument.

The noise of each step is drawn from the image's generator as diffusers draws it (the same draw at any eta, so
the generator's stream does not depend on eta; k-diffusion also draws it at eta 0 and multiplies it by 0).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, DPMSolverSDEScheduler,
                       EulerAncestralDiscreteScheduler, KDPM2AncestralDiscreteScheduler)
from diffusers.schedulers.scheduling_dpmsolver_sde import DPMSolverSDESchedulerOutput
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


class DPMSolverMultistepEta(DPMSolverMultistepScheduler):
    """"DPM++ 2M SDE" at any eta: diffusers' first- and second-order `sde-dpmsolver++` updates (midpoint) with eta's
    coefficients (module docstring); diffusers' own updates at eta 1, and for its other algorithms."""

    eta: float = 1.0

    def dpm_solver_first_order_update(self, model_output, *args, sample=None, noise=None, **kwargs):
        if not self._eta_applies():
            return super().dpm_solver_first_order_update(model_output, *args, sample=sample, noise=noise, **kwargs)
        return self._eta_update(model_output, sample, noise)

    def multistep_dpm_solver_second_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        if not self._eta_applies():
            return super().multistep_dpm_solver_second_order_update(model_output_list, *args, sample=sample,
                                                                    noise=noise, **kwargs)
        lambdas = [self._log_snr(self.sigmas[self.step_index + k]) for k in (1, 0, -1)]  # lambda', lambda, previous
        r = (lambdas[1] - lambdas[2]) / (lambdas[0] - lambdas[1])
        m0, m1 = model_output_list[-1], model_output_list[-2]
        return self._eta_update(m0 + 0.5 / r * (m0 - m1), sample, noise)

    def _eta_applies(self) -> bool:
        return self.eta != 1.0 and self.config.algorithm_type == "sde-dpmsolver++" and \
            self.config.solver_type == "midpoint"

    def _log_snr(self, sigma: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self._sigma_to_alpha_sigma_t(sigma)
        return torch.log(alpha) - torch.log(sigma)

    def _eta_update(self, denoised: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One step from sigma to sigma' (the last: sigma' = 0, h = inf, x' = denoised) with eta's coefficients."""
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index + 1])
        _, sigma_s = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
        h = self._log_snr(self.sigmas[self.step_index + 1]) - self._log_snr(self.sigmas[self.step_index])
        eta_h = h * self.eta if self.eta > 0 else torch.zeros_like(h)  # 0 * inf is nan at the last step
        return (sigma_t / sigma_s * torch.exp(-eta_h)) * sample + alpha_t * (1 - torch.exp(-h - eta_h)) * denoised \
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2.0 * eta_h)) * noise


class DPMSolverSDEEta(DPMSolverSDEScheduler):
    """"DPM++ SDE" at any eta: diffusers' step for x0, the stored start and the Brownian noise (a tree: the same
    interval gives the same draw), then both ancestral steps taken with eta's split (Euler to sigma_down, then
    sigma_up of noise; module docstring)."""

    eta: float = 1.0

    def step(self, model_output, timestep, sample, return_dict=True, s_noise=1.0):
        if self.eta == 1.0:
            return super().step(model_output, timestep, sample, return_dict=return_dict, s_noise=s_noise)
        if self.step_index is None:
            self._init_step_index(timestep)
        first, i = self.state_in_first_order, self.step_index
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        start = sample if first else self.sample
        prev, x0 = super().step(model_output, timestep, sample, return_dict=False, s_noise=s_noise)
        if sigma_next > 0:  # else diffusers' Euler step to 0, which has no eta
            t, t_next = sigma.log().neg(), sigma_next.log().neg()
            t_to = t + (t_next - t) * 0.5 if first else t_next  # the midpoint first, then sigma'
            sigma_from, sigma_to = t.neg().exp(), t_to.neg().exp()
            sigma_down, sigma_up = ancestral_sigmas(sigma_from, sigma_to, self.eta)
            t_down = sigma_down.log().neg()
            prev = (t_down.neg().exp() / sigma_from) * start - (t - t_down).expm1() * x0
            prev = prev + self.noise_sampler(sigma_from, sigma_to) * s_noise * sigma_up
        return DPMSolverSDESchedulerOutput(prev, x0) if return_dict else (prev, x0)


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
                  "KDPM2AncestralDiscreteScheduler": KDPM2AncestralEta, "DDIMScheduler": DDIMEta,
                  "DPMSolverMultistepScheduler": DPMSolverMultistepEta, "DPMSolverSDEScheduler": DPMSolverSDEEta}
