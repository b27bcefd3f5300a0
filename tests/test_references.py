"""avert against references that do not come from avert: the sampler table as diffusers' documentation writes
it, guidance formulas as their papers (or diffusers' own functions) write them, evaluated on small hand-made
tensors at values where a wrong formula gives a different number.
"""

from __future__ import annotations

import math

import pytest
import torch

from avert.guidance import cfg as f
from avert.guidance.strategy import Guidance, Posterior, StepContext, Term, negative_branch
from avert.sampling.samplers import SAMPLERS
from sampler_reference import DIFFUSERS_TABLE, reference_scheduler

@pytest.mark.parametrize("name", sorted(DIFFUSERS_TABLE))
def test_every_sampler_builds_the_scheduler_diffusers_documents(name, tiny):
    ours = SAMPLERS[name].build(tiny.scheduler_config, 5)
    theirs = reference_scheduler(name, tiny.scheduler_config, 5)
    assert type(ours) is type(theirs)
    assert dict(ours.config) == dict(theirs.config)
    ours.set_timesteps(12)
    theirs.set_timesteps(12)
    assert torch.equal(ours.timesteps, theirs.timesteps) and torch.allclose(
        getattr(ours, "sigmas", torch.zeros(1)), getattr(theirs, "sigmas", torch.zeros(1)))


def test_the_table_covers_every_sampler_avert_offers():
    assert set(SAMPLERS) == set(DIFFUSERS_TABLE)


# ---------------------------------------------------------------- guidance formulas


def _tensors(seed: int, n: int = 3, shape=(2, 3, 4, 4)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("phi", [0.3, 0.7, 1.0])
def test_rescale_equals_diffusers_rescale_noise_cfg(phi):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    positive, negative, _ = _tensors(1)
    positive = positive * 0.5  # different spreads, so the ratio is far from 1
    guided = f.cfg(positive, negative, 7.5)
    assert torch.allclose(f.rescale(guided, positive, phi), rescale_noise_cfg(guided, positive, phi), atol=1e-12)
    assert not torch.allclose(f.rescale(guided, positive, phi), guided)


def _apg_paper(cond, uncond, w, eta, r, beta, running):
    """Sadat et al. 2025, Algorithm 1, written per sample with plain loops."""
    out, runs = [], []
    for b in range(cond.shape[0]):
        c, u = cond[b].flatten(), uncond[b].flatten()
        diff = c - u
        if beta:
            diff = diff + (beta * running[b].flatten() if running is not None else 0)
        runs.append(diff.reshape(cond[b].shape))
        if r > 0:
            diff = diff * min(1.0, r / float(diff.norm()))
        par = (diff @ c) / (c @ c) * c
        out.append((c + (w - 1) * ((diff - par) + eta * par)).reshape(cond[b].shape))
    return torch.stack(out), torch.stack(runs)


@pytest.mark.parametrize("eta, r, beta", [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (0.3, 2.0, 0.0), (0.0, 0.0, -0.5),
                                          (0.7, 1.5, -0.25)])
def test_apg_follows_the_papers_algorithm(eta, r, beta):
    cond, uncond, previous = _tensors(2)
    ours, run = f.apg(cond, uncond, 6.0, eta, r, beta, previous)
    theirs, theirs_run = _apg_paper(cond, uncond, 6.0, eta, r, beta, previous)
    assert torch.allclose(ours, theirs, atol=1e-10) and torch.allclose(run, theirs_run, atol=1e-12)


def test_apg_at_eta_one_without_threshold_or_momentum_is_cfg():
    cond, uncond, _ = _tensors(3)
    assert torch.allclose(f.apg(cond, uncond, 5.0, 1.0)[0], uncond + 5.0 * (cond - uncond), atol=1e-10)


def test_perp_neg_on_hand_made_vectors():
    """Armandpour et al. 2023, eq. 9: with d_c = (1, 0) and d_n = (1, 1) only the part (0, 1) of the negative
    is removed: e = e_0 + w d_c - w_n l (0, 1)."""
    e0 = torch.tensor([[[[0.5]], [[-0.25]]]], dtype=torch.float64)  # [1, 2, 1, 1]: a 2-vector per sample
    dc = torch.tensor([[[[1.0]], [[0.0]]]], dtype=torch.float64)
    en = e0 + torch.tensor([[[[1.0]], [[1.0]]]], dtype=torch.float64)
    out = f.perp_neg(e0, dc, [en], [0.5], 7.0, 3.0)
    expected = e0 + 7.0 * dc - 3.0 * 0.5 * torch.tensor([[[[0.0]], [[1.0]]]], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12)


def _log_normal(x: torch.Tensor, mean: torch.Tensor, variance: float) -> torch.Tensor:
    return torch.distributions.Normal(mean, math.sqrt(variance)).log_prob(x).flatten(1).sum(1)


@pytest.mark.parametrize("temperature", [1.0, 0.4])
def test_posterior_update_is_the_ratio_of_the_two_branches_gaussian_steps(temperature):
    """Koulischer et al. 2025, Alg. 1: logit' = logit + T (log N(x'; mu_n, s^2) - log N(x'; mu_0, s^2)), each
    branch's step the Brownian bridge from x toward its denoised D: mu = D + (s'/s)^2 (x - D), s^2 = s'^2 (1 -
    (s'/s)^2)."""
    x, d0, dn = _tensors(4)
    x_next = _tensors(5, 1)[0]
    sigma, sigma_next = 3.0, 2.0
    r = (sigma_next / sigma) ** 2
    variance = sigma_next ** 2 * (1 - r)
    mu0, mun = d0 + r * (x - d0), dn + r * (x - dn)
    logit = torch.tensor([0.3, -1.0], dtype=torch.float64)
    expected = logit + temperature * (_log_normal(x_next, mun, variance) - _log_normal(x_next, mu0, variance))
    ours = f.posterior_logit(logit, x, sigma, x_next, sigma_next, d0, dn, temperature)
    assert torch.allclose(ours, expected, atol=1e-8)


def test_posterior_evidence_is_taken_in_variance_exploding_form():
    """The model input is x / sqrt(1 + sigma^2); the posterior's Gaussian steps live in x_0 + sigma n, so the
    points compared are the inputs times sqrt(1 + sigma^2) (both the last one and the one reached)."""
    prior, temperature = 0.5, 0.02  # p stays clear of 0, 1 and p_max, where a wrong point would not show
    guidance = Guidance(7.0, method="posterior", negatives=(Term(),), posterior=Posterior(prior, temperature, 1.0))
    x1, e0_1, en_1 = _tensors(6)
    x2, e0_2, en_2 = _tensors(7)
    memory: dict = {}
    s1, s2 = 4.0, 2.5
    guidance._posterior(e0_1, {0: en_1}, StepContext(0, 10, 900.0, s1), x1, memory)
    presence = guidance._posterior(e0_2, {0: en_2}, StepContext(1, 10, 800.0, s2), x2, memory)[0]
    scale1, scale2 = math.sqrt(1 + s1 * s1), math.sqrt(1 + s2 * s2)
    d0, dn = scale1 * x1 - s1 * e0_1, scale1 * x1 - s1 * en_1  # epsilon: D = sqrt(1 + s^2) x - s e
    r = (s2 / s1) ** 2
    variance = s2 ** 2 * (1 - r)
    here, there = x1 * scale1, x2 * scale2
    gain = (_log_normal(there, dn + r * (here - dn), variance) - _log_normal(there, d0 + r * (here - d0), variance))
    p = torch.sigmoid(math.log(prior / (1 - prior)) + temperature * gain)
    assert ((p > 0.05) & (p < 0.95)).all() and torch.allclose(presence.flatten(), p, atol=1e-6)
    assert negative_branch(0) in guidance.branches(StepContext(2, 10, 700.0, 2.0))
