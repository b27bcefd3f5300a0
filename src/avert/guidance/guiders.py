"""diffusers' guiders inside avert's guidance: the negatives make the unconditional branch, the guider combines.

diffusers (0.42, `diffusers.guiders`, marked experimental there) ships guiders for its modular pipelines. Four of
them change how the unconditional prediction is combined with the prompt's, and avert calls them as they are:

- cfg-zero-star, `ClassifierFreeZeroStarGuidance` (Fan et al., "CFG-Zero*: Improved Classifier-Free Guidance for
  Flow Matching Models", arXiv:2503.18886): s* = <e_c, e_u> / |e_u|^2 per sample, e = s* e_u + w (e_c - s* e_u);
  the prediction is zero on the first `zero_init_steps` steps (sec. 4.2).
- tangential, `TangentialClassifierFreeGuidance` (Kwon et al., "TCFG: Tangential Damping Classifier-free
  Guidance", arXiv:2503.18137): with V from the SVD of the stacked [e_c; e_u] per sample, e_u is replaced by its
  projection on the first right singular vector, e_u' = e_u v1 v1^T; e = e_u' + w (e_c - e_u').
- frequency-decoupled, `FrequencyDecoupledGuidance` (Sadat et al., "Guidance in the Frequency Domain Enables
  High-Fidelity Sampling at Low CFG Scales", arXiv:2506.19713, Alg. 2): both predictions split into a Laplacian
  pyramid, level l guided at its own scale w_l (highest frequencies first), e_l = e_u,l + w_l (e_c,l - e_u,l),
  optionally with the shift's part parallel to e_c,l weighted by `parallel_weights`; the pyramid collapsed back.
- magnitude-aware, `MagnitudeAwareGuidance` (MAMBO-G, arXiv:2508.03442): the scale shrinks where the update is
  large against the unconditional prediction, r = |e_c - e_u| / |e_u| per sample, w' = 1 + (w - 1) exp(-alpha r),
  e = e_u + w' (e_c - e_u).

Each uses diffusers' own formulation (e_u + w (...), not e_c + w (...): `use_original_formulation` False), with
`guidance_scale` = avert's cfg_scale. Where avert differs, and why:
- the unconditional prediction e_u is avert's: one negative's prediction, or several negatives composed by the
  request's rule (`avert.guidance.cfg.unconditional`), so every guider works with several weighted, windowed
  negatives;
- where guidance applies is avert's interval (guidance_start/end, sigma range, s_min_uncond): the guider is built
  with start 0 and stop 1 and called only on guided evaluations; a step it skips is the prompt's prediction, as
  the guider's own `stop` would give;
- guidance rescale is avert's (`cfg.rescale`, the same formula as diffusers' `rescale_noise_cfg`), after the guider;
- magnitude-aware: diffusers' `mambo_guidance` takes norms over every dim but the first with `torch.norm`, which
  raises for a UNet's 4-D predictions (torch 2.13: "linalg.matrix_norm: dim must be a 2-tuple"); avert flattens
  each prediction to [batch, C*H*W] first, which gives the same per-sample norms;
- frequency-decoupled: kornia's pyramid needs heights and widths divisible by 2^(levels - 1) (others come back at
  a wrong size); avert pads the predictions by replication to the next such size and crops the result, which is
  the identity where diffusers' guider works.

A guider holds state (the step, CFG-Zero*'s zero-init), so one is built per run and kept in the denoiser's memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GUIDERS: tuple[str, ...] = ("cfg-zero-star", "tangential", "frequency-decoupled", "magnitude-aware")
CLASSES = {"cfg-zero-star": "ClassifierFreeZeroStarGuidance", "tangential": "TangentialClassifierFreeGuidance",
           "frequency-decoupled": "FrequencyDecoupledGuidance", "magnitude-aware": "MagnitudeAwareGuidance"}
FDG_LOW_RATIO = 0.5  # unset fdg scales: the highest frequencies at cfg_scale, the lowest at half (diffusers' 10, 5)


@dataclass(frozen=True)
class GuiderOptions:
    """The guiders' own arguments, as diffusers names them: CFG-Zero*'s `zero_init_steps`, FDG's
    `guidance_scales` (highest frequencies first; None: cfg_scale and cfg_scale / 2) and `parallel_weights` (one
    for every level), MAMBO-G's `alpha`."""

    zero_init_steps: int = 1
    guidance_scales: tuple[float, ...] | None = None
    parallel_weights: float = 1.0
    alpha: float = 8.0


def fdg_scales(options: GuiderOptions, scale: float) -> tuple[float, ...]:
    """FDG's per-level scales: the request's, or (w, max(1, w / 2)) from the CFG scale w."""
    if options.guidance_scales is not None:
        return tuple(options.guidance_scales)
    return (scale, max(1.0, scale * FDG_LOW_RATIO))


def arguments(method: str, scale: float, options: GuiderOptions) -> dict:
    """The keyword arguments of diffusers' guider class for `method` (start 0, stop 1, no rescale: avert's)."""
    if method == "frequency-decoupled":
        levels = fdg_scales(options, scale)
        return {"guidance_scales": list(levels), "parallel_weights": float(options.parallel_weights)}
    own = {"cfg-zero-star": {"zero_init_steps": options.zero_init_steps},
           "magnitude-aware": {"alpha": float(options.alpha)}}.get(method, {})
    return {"guidance_scale": float(scale), **own}


def build(method: str, scale: float, options: GuiderOptions):
    """A fresh diffusers guider for one run (its experimental-API warning silenced: avert pins the tested range)."""
    import diffusers.guiders as guiders

    if method not in CLASSES:
        raise ValueError(f"guider {method!r}: must be one of {', '.join(GUIDERS)}")
    log = logging.getLogger("diffusers.guiders.guider_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return getattr(guiders, CLASSES[method])(**arguments(method, scale, options))
    finally:
        log.setLevel(level)


def combine(guider, cond: torch.Tensor, uncond: torch.Tensor, step: int, timestep: float) -> torch.Tensor:
    """The guider's prediction from e_c and e_u at sampling step `step` (shapes adapted, see the module's text)."""
    guider.set_state(step, None, timestep)
    if type(guider).__name__ == CLASSES["magnitude-aware"]:
        flat = guider.forward(cond.flatten(1), uncond.flatten(1)).pred
        return flat.view_as(cond)
    if type(guider).__name__ == CLASSES["frequency-decoupled"]:
        return _padded(guider, cond, uncond)
    return guider.forward(cond, uncond).pred


def _padded(guider, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """FDG on predictions padded (replicated edges) to heights and widths divisible by 2^(levels - 1)."""
    multiple = 2 ** (guider.levels - 1)
    height, width = cond.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return guider.forward(cond, uncond).pred
    grow = (0, pad_w, 0, pad_h)
    out = guider.forward(F.pad(cond, grow, mode="replicate"), F.pad(uncond, grow, mode="replicate")).pred
    return out[..., :height, :width]



def apg_diffusers(cond: torch.Tensor, uncond: torch.Tensor, scale: float, eta: float, norm_threshold: float,
                  momentum: float, buffer=None):
    """diffusers' APG (`AdaptiveProjectedGuidance`, its `normalized_guidance`) on the model's raw outputs:
    u = d_perp + eta d_par of d = e_c - e_u (after its momentum and norm cap), e = e_u + w u. The paper, and avert's
    `apg` by default (`avert.guidance.cfg.apg`), guide denoised predictions with D_c + (w - 1) u; the two agree at
    eta 1 without a cap. Returns the prediction and the momentum buffer to pass to the next evaluation."""
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    if buffer is None and momentum != 0.0:
        buffer = MomentumBuffer(momentum)
    return normalized_guidance(cond, uncond, scale, buffer, eta, norm_threshold), buffer
