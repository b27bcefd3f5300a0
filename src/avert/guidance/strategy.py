"""Guidance strategies: which predictions a step needs, and how to combine them.

Following SGM's guiders, "what to evaluate" (`branches`) is kept apart from "how to combine" (`combine`);
progress through the run is passed in explicitly (`StepContext`), never held as state. One `Guidance` value
covers every method: the method only changes the combination (and whether the empty prompt is needed).

Branches: the prompt's AND parts ("prompt", k), the active negative terms ("negative", i) and the empty
prompt ("empty"). A negative is evaluated only inside its window; guidance as a whole only inside the
interval (fractions of the run and sigma range) and not where A1111's s_min_uncond skips it. Outside, the
prompt alone is evaluated: one branch instead of two or more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from avert.guidance import cfg as f
from avert.guidance import guiders, perturb


@dataclass(frozen=True, order=True)
class Branch:
    role: str  # "negative" | "empty" | "prompt"
    index: int = 0


EMPTY = Branch("empty")


def prompt_branch(k: int) -> Branch:
    return Branch("prompt", k)


def negative_branch(i: int) -> Branch:
    return Branch("negative", i)


PERTURBED = Branch("perturbed")  # the prompt's conditioning through a perturbed UNet (`avert.guidance.perturb`)


@dataclass(frozen=True)
class StepContext:
    """Where a model evaluation sits in the run: evaluation `index` of `total`, at `timestep` and `sigma`;
    `step` is the sampling step it belongs to (prompt schedules count steps, not evaluations)."""

    index: int
    total: int
    timestep: float
    sigma: float = 0.0
    step: int | None = None

    @property
    def fraction(self) -> float:
        """Progress through the run in [0, 1): 0 at the first evaluation."""
        return self.index / self.total

    @property
    def sampling_step(self) -> int:
        return self.index if self.step is None else self.step


@dataclass(frozen=True)
class Term:
    """A weighted negative (or one AND part of one) active over [start, end) of the run."""

    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    group: int | None = None  # the request negative it is an AND part of (None: its own); rules act between groups

    def active(self, fraction: float) -> bool:
        return self.start <= fraction < self.end  # fractions are below 1, so an end of 1 is the whole rest


@dataclass(frozen=True)
class Interval:
    """Where guidance applies: fractions [start, end) of the run and sigma in (sigma_min, sigma_max];
    A1111's s_min_uncond skips it below that sigma on odd model evaluations (A1111: `self.step % 2`), on
    every one with `s_min_uncond_all`. With `reuse`, a skipped evaluation adds the correction of the last
    guided one instead of none (see `reuse_correction`)."""

    start: float = 0.0
    end: float = 1.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    reuse: bool = False

    def applies(self, ctx: StepContext) -> bool:
        if not self.start <= ctx.fraction < self.end:
            return False
        if self.sigma_min is not None and ctx.sigma <= self.sigma_min:
            return False
        if self.sigma_max is not None and ctx.sigma > self.sigma_max:
            return False
        skip = ctx.sigma < self.s_min_uncond  # never at s_min_uncond 0: sigma is not negative
        return not (skip and (self.s_min_uncond_all or ctx.index % 2 == 1))


@dataclass(frozen=True)
class Projection:
    """Options of adaptive projected guidance (`avert.guidance.cfg.apg`): eta, the weight of the update's part
    parallel to the prompt's denoised prediction; the norm threshold r (0: off); the momentum beta (0: off); the
    formulation: "paper" (Sadat et al.'s Algorithm 1 on denoised predictions, D_c + (w - 1) u) or "diffusers"
    (diffusers' `AdaptiveProjectedGuidance` on the raw outputs, e_u + w u; `guiders.apg_diffusers`)."""

    eta: float = 0.0
    norm_threshold: float = 0.0
    momentum: float = 0.0
    formulation: str = "paper"


@dataclass(frozen=True)
class Posterior:
    """Options of the posterior-tracked negative (methods "posterior" and "gated", see `Guidance._posterior`):
    the prior p(c) of each negative's concept at the first guided evaluation, the temperature T of the Bayes
    update (`avert.guidance.cfg.posterior_logit`), and p_max, the posterior at which a negative acts at full
    strength. Picked on the embedded model (seeds 0..15, docs/embedded-model.md): prior 0.8, T 1, p_max 0.8; a
    request sets them as posterior_prior, posterior_temperature and posterior_p_max."""

    prior: float = 0.8
    temperature: float = 1.0
    p_max: float = 0.8


Combine = Callable[..., torch.Tensor]
# three-branch formulas besides `f.separate_scales` (cfg at its own negative scale, posterior, gated); apg: `_apg`
METHODS: dict[str, Combine] = {"perp-neg": f.perp_neg, "dynamic": f.dynamic_negative}
TRACKED = ("posterior", "gated")  # methods that scale each negative by its concept's posterior
# guided by e_u and the prompt alone, as plain cfg (the one scale w): `Guidance.cfg_branches`
CFG_BRANCH_METHODS = ("apg",) + guiders.GUIDERS + perturb.KINDS


@dataclass(frozen=True)
class Guidance:
    """How a run is guided: method, scales, AND weights of the prompt, the negative terms, rescale, interval.

    cfg with negative_scale None (= scale): e_u = (1 - sum l_i) e_0 + sum l_i e_ni, e = e_u + w sum_k a_k
    (e_ck - e_u) -- one negative of weight 1 is plain CFG, term for term. cfg with a different negative_scale,
    perp-neg, dynamic and posterior use e_0 and the formulas in `avert.guidance.cfg`; posterior also needs the
    sample x and the per-run memory, where it keeps each negative's odds (`posterior` holds its options). gated
    is plain CFG with each negative's weight scaled by the posterior of its concept along the prompt's own
    chain (`_posterior`): e_u = (1 - sum l_i p_i) e_0 + sum l_i p_i e_ni, e = e_u + w (e_c - e_u), which is the
    three-branch formula at w_n = w - 1; its negative scale is not free. apg
    takes the same e_u as cfg and guides on denoised predictions (`projection` holds its options;
    `prediction_type` says what the model outputs, as in the scheduler config); it needs the sample x and a
    per-run memory for its momentum. Several active negatives add up by `rule` (`avert.guidance.compose`): every
    sum above becomes the rule's push of the same contributions (e_u = e_0 + P for cfg and apg). diffusers' guiders
    (cfg-zero-star, tangential, frequency-decoupled, magnitude-aware; `guider` holds their options) take the same e_u
    and the prompt's prediction (`avert.guidance.guiders`); pag, seg and slg are cfg with a perturbed branch added
    (`perturbation`; `avert.guidance.perturb`).
    """

    scale: float
    method: str = "cfg"
    negative_scale: float | None = None
    prompt_weights: tuple[float, ...] = (1.0,)
    negatives: tuple[Term, ...] = (Term(),)
    rescale: float = 0.0
    interval: Interval = Interval()
    projection: Projection = Projection()
    prediction_type: str = "epsilon"
    posterior: Posterior = Posterior()
    rule: str = "sum"  # how several active negatives add up (`avert.guidance.compose.RULES`)
    guider: guiders.GuiderOptions = guiders.GuiderOptions()  # the diffusers guiders' own options
    perturbation: perturb.Perturbation | None = None  # pag, seg, slg: a perturbed branch on top (`perturb`)

    @property
    def w_n(self) -> float:
        if self.method == "gated":
            return self.scale - 1.0  # plain CFG's weight on -(e_n - e_0)
        return self.scale if self.negative_scale is None else self.negative_scale

    @property
    def plain_cfg(self) -> bool:
        return self.method == "cfg" and self.w_n == self.scale

    @property
    def cfg_branches(self) -> bool:
        """Guided by e_u and the prompt alone (e_0 only where the negatives' weights leave a share for it):
        plain cfg, apg, diffusers' guiders (which always guide with the one scale w), and cfg under pag, seg, slg."""
        return self.plain_cfg or self.method in CFG_BRANCH_METHODS

    def active_negatives(self, ctx: StepContext) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.negatives) if t.active(ctx.fraction) and t.weight != 0.0)

    def groups(self, active: tuple[int, ...]) -> list[int]:
        """The negative each active term belongs to (a term without a group is its own)."""
        return [i if self.negatives[i].group is None else self.negatives[i].group for i in active]

    def can_act(self) -> bool:
        """Whether the negatives' branches can change the prediction at all at these scales."""
        scales = (guiders.fdg_scales(self.guider, self.scale) if self.method == "frequency-decoupled"
                  else (self.scale,))
        unit = all(w * sum(self.prompt_weights) == 1.0 for w in scales) and len(self.prompt_weights) == 1
        return not (unit and (self.cfg_branches or self.w_n == 0.0))  # else e = e_c exactly: the negative is dead

    def guided(self, ctx: StepContext) -> bool:
        return self.can_act() and self.interval.applies(ctx)

    def perturbed(self, ctx: StepContext) -> bool:
        """Whether this evaluation needs the perturbed branch (pag, seg, slg in their step range)."""
        return self.perturbation is not None and self.perturbation.active(ctx.index, ctx.total)

    def branches(self, ctx: StepContext, empty: bool = False) -> tuple[Branch, ...]:
        """The predictions a step needs; with `empty`, the empty prompt's too wherever guidance applies (a map
        of the negatives, `avert.guidance.attribution`, compares against it); the perturbed branch last."""
        return self._branches(ctx, empty) + ((PERTURBED,) if self.perturbed(ctx) else ())

    def _branches(self, ctx: StepContext, empty: bool) -> tuple[Branch, ...]:
        prompts = tuple(prompt_branch(k) for k in range(len(self.prompt_weights)))
        if not self.guided(ctx):
            return prompts
        active = self.active_negatives(ctx)
        weights = sum(self.negatives[i].weight for i in active)
        several = len(set(self.groups(active))) > 1 and self.rule != "sum"
        needs_empty = empty or not self.cfg_branches or not active or weights != 1.0 or several
        return tuple(negative_branch(i) for i in active) + ((EMPTY,) if needs_empty else ()) + prompts

    def combine(self, predictions: Mapping[Branch, torch.Tensor], ctx: StepContext, x: torch.Tensor | None = None,
                memory: dict | None = None) -> torch.Tensor:
        """The guided prediction of one evaluation; `x` (the model input) and `memory` (a dict kept for the
        run, one per denoiser) are needed by apg and posterior only."""
        if not self.perturbed(ctx):
            return self._combine(predictions, ctx, x, memory)
        p = self.perturbation
        guided = self._combine(predictions, ctx, x, memory, rescaled=False)
        out = perturb.combine(guided, predictions[prompt_branch(0)], predictions[PERTURBED], p.scale, self.guided(ctx))
        return f.rescale(out, predictions[prompt_branch(0)], self.rescale)

    def _combine(self, predictions: Mapping[Branch, torch.Tensor], ctx: StepContext, x: torch.Tensor | None,
                 memory: dict | None, rescaled: bool = True) -> torch.Tensor:
        prompts = [predictions[prompt_branch(k)] for k in range(len(self.prompt_weights))]
        if not self.guided(ctx):  # the prompt alone: e_c, or A1111's AND sum around the first part
            return prompts[0] if len(prompts) == 1 else f.composable_cfg(prompts, self.prompt_weights, prompts[0], 1.0)
        active = self.active_negatives(ctx)
        negatives = [predictions[negative_branch(i)] for i in active]
        weights = [self.negatives[i].weight for i in active]
        empty = predictions.get(EMPTY)
        if self.cfg_branches:
            protects = self.rule.endswith("protect") and empty is not None  # only those rules read d_c
            direction = f.prompt_direction(prompts, self.prompt_weights, empty) if protects else None
            uncond = f.unconditional(empty, negatives, weights, self.rule, direction, self.groups(active))
            if self.method == "apg":
                guided = self._apg(prompts, uncond, ctx, x, memory)
            elif self.method in guiders.GUIDERS:
                guided = self._guider(prompts, uncond, ctx, memory)
            else:
                guided = f.composable_cfg(prompts, self.prompt_weights, uncond, self.scale)
        else:  # three branches: cfg at its own negative scale, posterior and gated (per-sample weights), perp-neg,
            # dynamic
            direction = f.prompt_direction(prompts, self.prompt_weights, empty)
            if self.method in TRACKED:
                evidence = empty + direction if self.method == "gated" else None  # the prompt's own prediction
                presence = self._posterior(empty, dict(zip(active, negatives)), ctx, x, memory, evidence)
                weights = [l * presence[i] for l, i in zip(weights, active)]
            combine = f.separate_scales if self.method in ("cfg",) + TRACKED else METHODS[self.method]
            guided = combine(empty, direction, negatives, weights, self.scale, self.w_n, self.rule, self.groups(active))
        return f.rescale(guided, prompts[0], self.rescale) if rescaled else guided

    def _posterior(self, empty: torch.Tensor, negatives: dict[int, torch.Tensor], ctx: StepContext,
                   x: torch.Tensor | None, memory: dict | None,
                   evidence: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        """Each active negative's strength in [0, 1], per sample [batch, 1, 1, 1]: min(p, p_max) / p_max, p the
        posterior of its concept tracked along the run (Koulischer et al. 2025; `cfg.posterior_logit`), updated
        from the last guided evaluation's denoised predictions to a point at this one's noise level. A negative
        starts at the prior; one not evaluated at the last guided evaluation keeps its odds.

        The point is the sample the sampler has reached (posterior), or, given the prompt's own prediction as
        `evidence` (gated), the step mean of the prompt's branch from the last sample, mu_c = D_c + r (x - D_c):
        where the prompt alone would take the sample. The sample reached has been pushed away from the
        negative's concept by the negative itself; the prompt's step has not, so the odds say whether the
        prompt's image holds the concept, and do not fall because the negative worked."""
        if x is None or memory is None:
            raise ValueError(f"{self.method} needs the model input x and a per-run memory")
        sigma, options = ctx.sigma, self.posterior
        point = x * math.sqrt(1.0 + sigma * sigma)  # the model input is x / sqrt(1 + sigma^2): back to x_0 + sigma n
        d_0 = f.denoised(x, empty, sigma, self.prediction_type)
        d_n = {i: f.denoised(x, e, sigma, self.prediction_type) for i, e in negatives.items()}
        d_c = None if evidence is None else f.denoised(x, evidence, sigma, self.prediction_type)
        last = memory.get("posterior")
        logits = dict(last["logits"]) if last else {}
        if last and 0.0 < sigma < last["sigma"]:
            reached = (point if last["prompt"] is None
                       else f.bridge_mean(last["x"], last["prompt"], last["sigma"], sigma))
            for i, d in last["negatives"].items():
                logits[i] = f.posterior_logit(logits[i], last["x"], last["sigma"], reached, sigma, last["empty"], d,
                                              options.temperature)
        prior = math.log(options.prior / (1.0 - options.prior))
        for i in negatives.keys() - logits.keys():
            logits[i] = torch.full((x.shape[0],), prior, dtype=x.dtype, device=x.device)
        memory["posterior"] = {"x": point, "sigma": sigma, "empty": d_0, "prompt": d_c, "negatives": d_n,
                               "logits": logits}
        return {i: (torch.sigmoid(logits[i]).clamp(max=options.p_max) / options.p_max).view(-1, 1, 1, 1)
                for i in negatives}

    def _apg(self, prompts: list[torch.Tensor], uncond: torch.Tensor, ctx: StepContext, x: torch.Tensor | None,
             memory: dict | None) -> torch.Tensor:
        """APG on D = denoised(output) (formulation "paper"), or on the outputs as diffusers' guider (formulation
        "diffusers"); the prompt side is e_u + sum_k a_k (e_ck - e_u) (e_c for one part)."""
        if x is None or memory is None:
            raise ValueError("apg needs the model input x and a per-run memory")
        cond = self._cond(prompts, uncond)
        p = self.projection
        if p.formulation == "diffusers":
            guided, memory["apg"] = guiders.apg_diffusers(cond, uncond, self.scale, p.eta, p.norm_threshold,
                                                          p.momentum, memory.get("apg"))
            return guided
        d_c, d_u = (f.denoised(x, e, ctx.sigma, self.prediction_type) for e in (cond, uncond))
        guided, memory["apg"] = f.apg(d_c, d_u, self.scale, p.eta, p.norm_threshold, p.momentum, memory.get("apg"))
        return f.from_denoised(x, guided, ctx.sigma, self.prediction_type)

    def _cond(self, prompts: list[torch.Tensor], uncond: torch.Tensor) -> torch.Tensor:
        """The prompt side against e_u: e_c for one part of weight 1, else e_u + sum_k a_k (e_ck - e_u)."""
        single = len(prompts) == 1 and self.prompt_weights[0] == 1.0
        return prompts[0] if single else f.composable_cfg(prompts, self.prompt_weights, uncond, 1.0)

    def _guider(self, prompts: list[torch.Tensor], uncond: torch.Tensor, ctx: StepContext,
                memory: dict | None) -> torch.Tensor:
        """A diffusers guider on (e_c, e_u) (`avert.guidance.guiders`), built once per run in `memory`."""
        if memory is None:
            raise ValueError(f"{self.method} needs a per-run memory")
        if "guider" not in memory:
            memory["guider"] = guiders.build(self.method, self.scale, self.guider)
        return guiders.combine(memory["guider"], self._cond(prompts, uncond), uncond, ctx.sampling_step,
                               ctx.timestep)


def method_names() -> tuple[str, ...]:
    return ("cfg", "apg") + tuple(METHODS) + TRACKED + guiders.GUIDERS + perturb.KINDS
