"""Guidance as pure tensor functions (no model, no state): CFG and its relatives for negative prompts.

Notation (shared with ../shared/reference/negative-prompts.md): e_c prediction for the prompt, e_n for a
negative, e_0 for the empty prompt, w guidance scale, w_n negative scale, a_k AND weights, l_i negative weights.
Tensors are [batch, C, H, W]; per-sample quantities reduce over every dim but the first.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from avert.guidance.compose import compose


def cfg(positive: torch.Tensor, negative: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance with a negative prompt in the unconditional branch.

    Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022), eq. 6, with the negative prediction
    e_n taking the place of the unconditional one: e = e_n + w (e_c - e_n).
    At w = 1 this is e_c exactly, so the negative has no effect; below 1 it pulls toward the negative.
    """
    return negative + scale * (positive - negative)


def composable_cfg(prompts: Sequence[torch.Tensor], weights: Sequence[float], uncond: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """Composable diffusion (Liu et al. 2022) as A1111 combines AND: e = e_u + w sum_k a_k (e_k - e_u).

    With one prompt of weight 1 this is `cfg(e_c, e_u, w)`, term for term.
    """
    if len(prompts) == 1 and weights[0] == 1.0:
        return cfg(prompts[0], uncond, scale)
    return uncond + scale * sum(a * (e - uncond) for a, e in zip(weights, prompts))


def unconditional(empty: torch.Tensor | None, negatives: Sequence[torch.Tensor],
                  weights: Sequence[float], rule: str = "sum", direction: torch.Tensor | None = None,
                  groups: Sequence[int] | None = None) -> torch.Tensor:
    """The unconditional branch made of several weighted negatives: e_u = (1 - sum l_i) e_0 + sum l_i e_ni,
    i.e. e_0 + P with P = sum_i l_i (e_ni - e_0); under another `rule` (`avert.guidance.compose`),
    e_u = e_0 + P(l_i (e_ni - e_0)).

    One negative of weight 1 gives e_n itself (plain CFG); no active negative gives e_0; `empty` may be None
    only when the weights sum to 1 and the rule is the sum; `direction` is the prompt's d_c (rules that protect it),
    `groups` which negatives are AND parts of one (`compose.compose`).
    """
    if len(negatives) == 1 and weights[0] == 1.0:
        return negatives[0]
    if not negatives:
        return empty
    if rule != "sum" and len(set(groups if groups is not None else range(len(negatives)))) > 1:
        return empty + compose([l * (e - empty) for l, e in zip(weights, negatives)], rule, direction, groups)
    mixed = sum(l * e for l, e in zip(weights, negatives))
    rest = 1.0 - sum(weights)
    return mixed if rest == 0.0 else rest * empty + mixed


def prompt_direction(prompts: Sequence[torch.Tensor], weights: Sequence[float], empty: torch.Tensor) -> torch.Tensor:
    """d_c = sum_k a_k (e_ck - e_0): the prompt's guidance direction."""
    return sum(a * (e - empty) for a, e in zip(weights, prompts))


def separate_scales(empty: torch.Tensor, direction: torch.Tensor, negatives: Sequence[torch.Tensor],
                    weights: Sequence[float | torch.Tensor], scale: float, negative_scale: float,
                    rule: str = "sum", groups: Sequence[int] | None = None) -> torch.Tensor:
    """Separate strengths for prompt and negatives (three branches):
    e = e_0 + w d_c - w_n sum_i l_i (e_ni - e_0), the sum replaced by `rule` (`avert.guidance.compose`).
    `weights` may be per-sample tensors [batch, 1, 1, 1]."""
    pushed = compose([l * (e - empty) for l, e in zip(weights, negatives)], rule, direction, groups)  # 0 without any
    return empty + scale * direction - negative_scale * pushed


def perpendicular(d: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """The part of d orthogonal to `onto`, per sample: d - (<d, c> / |c|^2) c; d itself where |c|^2 is 0 (also when
    it underflows while <d, c> does not)."""
    dims = tuple(range(1, d.ndim))
    dot = (d * onto).sum(dim=dims, keepdim=True)
    norm = (onto * onto).sum(dim=dims, keepdim=True)
    return d - torch.where(norm > 0, dot / norm.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(dot)) * onto


def perp_neg(empty: torch.Tensor, direction: torch.Tensor, negatives: Sequence[torch.Tensor],
             weights: Sequence[float], scale: float, negative_scale: float, rule: str = "sum",
             groups: Sequence[int] | None = None) -> torch.Tensor:
    """Perp-Neg (Armandpour et al., "Re-imagine the Negative Prompt Algorithm", 2023, eq. 9), per sample:
    d_i = e_ni - e_0, d_i_perp = d_i - (<d_i, d_c> / |d_c|^2) d_c, e = e_0 + w d_c - w_n sum_i l_i d_i_perp.
    Only the part of each negative that does not fight the prompt is removed. Several negatives add up by
    `rule` (`avert.guidance.compose`; the paper's sum by default)."""
    pushed = compose([l * perpendicular(e - empty, direction) for l, e in zip(weights, negatives)], rule, direction,
                     groups)
    return empty + scale * direction - negative_scale * pushed


def presence(direction: torch.Tensor, negative_direction: torch.Tensor) -> torch.Tensor:
    """Estimated presence of a negative concept in the sample, per sample in [0, 1], shape [batch, 1, 1, 1].

    With the model as an implicit classifier, grad_x log p(c_n | x_t) = -(e_n - e_0) / sigma; the prompt's
    update moves x_t along -d_c, so log p(c_n | x_t) grows at the rate <d_n, d_c> / sigma^2. Normalised by
    |d_n|^2 and clipped: p = clamp(<d_c, d_n> / |d_n|^2, 0, 1): 1 when the prompt drives the sample fully
    toward the negative concept, 0 when it drives it away or not at all, and 0 where |d_n|^2 is 0 (also when it
    underflows while <d_c, d_n> does not).
    """
    dims = tuple(range(1, direction.ndim))
    dot = (direction * negative_direction).sum(dim=dims, keepdim=True)
    norm = (negative_direction * negative_direction).sum(dim=dims, keepdim=True)
    return torch.where(norm > 0, dot / norm.clamp_min(torch.finfo(dot.dtype).tiny), torch.zeros_like(dot)).clamp(0, 1)


def dynamic_negative(empty: torch.Tensor, direction: torch.Tensor, negatives: Sequence[torch.Tensor],
                     weights: Sequence[float], scale: float, negative_scale: float, rule: str = "sum",
                     groups: Sequence[int] | None = None) -> torch.Tensor:
    """Dynamic negative guidance after Koulischer et al. (ICLR 2025): the negative's strength follows the
    estimated presence of its concept, w_n,i(x_t) = w_n p_i(x_t) (see `presence`), so a negative switches
    itself off where its concept is absent: e = e_0 + w d_c - sum_i w_n p_i l_i (e_ni - e_0).
    Koulischer et al. track the posterior along the chain; avert estimates it at each step from the same
    predictions, without state."""
    scaled = [l * presence(direction, e - empty) for l, e in zip(weights, negatives)]
    return separate_scales(empty, direction, negatives, scaled, scale, negative_scale, rule, groups)


def bridge_mean(x: torch.Tensor, d: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Mean of the reverse step from sigma to sigma_next < sigma of a branch whose denoised prediction is D, in
    variance-exploding form x = x_0 + sigma n (the Brownian bridge between D and x): mu = D + r (x - D), with
    r = sigma_next^2 / sigma^2 and variance sigma_next^2 (1 - r)."""
    r = (sigma_next / sigma) ** 2
    return d + r * (x - d)


def posterior_logit(logit: torch.Tensor, x: torch.Tensor, sigma: float, x_next: torch.Tensor, sigma_next: float,
                    empty: torch.Tensor, negative: torch.Tensor, temperature: float) -> torch.Tensor:
    """One Bayes update of the log-odds that a sample holds a negative's concept, after Koulischer et al.,
    "Dynamic Negative Guidance of Diffusion Models" (ICLR 2025, sec. 4, Alg. 1), who track the posterior along
    the chain: p(c | x') is proportional to p(c | x) N(x'; mu_n, s^2) / N(x'; mu_0, s^2). With both branches'
    steps Gaussian bridges (`bridge_mean`, variance s^2 = sigma'^2 (1 - r)), per sample:

        logit' = logit + T (|x' - mu_0|^2 - |x' - mu_n|^2) / (2 s^2),

    x and x' in variance-exploding form, `empty` and `negative` the denoised predictions D_0 and D_n at x, T the
    temperature (1: Bayes; the authors' code uses 0.2 on 1000 DDPM steps). Moving toward the negative's mean
    raises the odds, away lowers them. Needs 0 < sigma_next < sigma."""
    if not 0.0 < sigma_next < sigma:
        raise ValueError(f"a posterior step needs 0 < sigma_next < sigma, got {sigma_next:g} and {sigma:g}")
    variance = sigma_next * sigma_next * (1.0 - (sigma_next / sigma) ** 2)
    mu_0, mu_n = (bridge_mean(x, d, sigma, sigma_next) for d in (empty, negative))
    gain = ((x_next - mu_0).pow(2) - (x_next - mu_n).pow(2)).flatten(1).sum(1) / (2.0 * variance)
    return logit + temperature * gain


def reuse_correction(positive: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
    """Guidance reuse on an evaluation whose negative is skipped: e_t = e_c,t + (e_s - e_c,s), the correction
    of the last guided evaluation s added to this one's prompt prediction (for plain CFG the correction is
    (w - 1)(e_c,s - e_n,s)). After the CFG cache of FasterCache (Lv et al. 2024), which reuses the
    conditional-unconditional difference across adjacent steps because it changes slowly; dropping guidance
    instead (A1111's s_min_uncond) gives e_t = e_c,t."""
    return positive + correction


def rescale(guided: torch.Tensor, positive: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", 2023,
    sec. 3.4, as diffusers' `rescale_noise_cfg`): x_r = x_cfg std(e_c) / std(x_cfg) per sample,
    out = phi x_r + (1 - phi) x_cfg. phi = 0 is the identity."""
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * (guided * ratio) + (1 - phi) * guided


def denoised(x: torch.Tensor, output: torch.Tensor, sigma: float, prediction_type: str) -> torch.Tensor:
    """The model's estimate of the clean sample D = x_0 from its output, at noise level sigma.

    `x` is the model input in variance-preserving form, x = (x_0 + sigma e) / sqrt(1 + sigma^2) (what every
    scheduler's `scale_model_input` hands the model); then, as diffusers' schedulers compute
    `pred_original_sample`: epsilon: D = sqrt(1 + sigma^2) x - sigma e; v_prediction: D = (x - sigma v) /
    sqrt(1 + sigma^2); sample: D = the output itself.
    """
    a, b = _denoised_coefficients(sigma, prediction_type)
    return a * x + b * output


def from_denoised(x: torch.Tensor, d: torch.Tensor, sigma: float, prediction_type: str) -> torch.Tensor:
    """The model output whose `denoised` estimate is d (the inverse of `denoised` at the same x and sigma)."""
    a, b = _denoised_coefficients(sigma, prediction_type)
    if b == 0.0:
        raise ValueError(f"at sigma {sigma:g} the denoised estimate does not depend on the model output")
    return (d - a * x) / b


def _denoised_coefficients(sigma: float, prediction_type: str) -> tuple[float, float]:
    """(a, b) with D = a x + b output, from sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2) and sqrt(1 - alpha_bar)
    = sigma / sqrt(1 + sigma^2), written so that sigma = inf (zero terminal SNR) stays finite for v and x_0."""
    signal = 1.0 / math.sqrt(1.0 + sigma * sigma)
    noise = 1.0 / math.sqrt(1.0 + 1.0 / (sigma * sigma)) if sigma > 0 else 0.0
    if prediction_type == "epsilon":
        if signal == 0.0:
            raise ValueError("an epsilon-prediction model has no denoised estimate at sigma = inf (zero SNR)")
        return 1.0 / signal, -noise / signal
    if prediction_type == "v_prediction":
        return signal, -noise
    if prediction_type == "sample":
        return 0.0, 1.0
    raise ValueError(f"prediction_type {prediction_type!r}: must be epsilon, v_prediction or sample")


def apg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, eta: float = 0.0, norm_threshold: float = 0.0,
        momentum: float = 0.0, running: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive projected guidance (Sadat, Hilliges & Weber, "Eliminating Oversaturation and Artifacts of High
    Guidance Scales in Diffusion Models", ICLR 2025, Algorithm 1), on denoised predictions D, per sample:

        d = D_c - D_u;  with momentum beta: m <- d + beta m, d = m (m starts at 0);
        d <- d min(1, r / |d|)   (norm threshold r > 0; off at 0);
        d_par = (<d, D_c> / |D_c|^2) D_c,  d_perp = d - d_par;
        D = D_c + (w - 1) (d_perp + eta d_par).

    The parallel part mostly raises saturation; eta = 0 drops it. With eta = 1, r = 0, beta = 0 this is
    CFG, D_u + w (D_c - D_u). Returns the guided D and the running average to pass to the next step.
    """
    d = cond - uncond
    if momentum != 0.0:
        d = d if running is None else d + momentum * running
    running = d
    dims = tuple(range(1, d.ndim))
    if norm_threshold > 0.0:
        norm = d.norm(p=2, dim=dims, keepdim=True)
        d = d * torch.clamp(norm_threshold / norm.clamp_min(torch.finfo(d.dtype).tiny), max=1.0)
    parallel = d - perpendicular(d.double(), cond.double()).to(d.dtype)
    return cond + (scale - 1.0) * (d - parallel + eta * parallel), running
