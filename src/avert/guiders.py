"""avert's negative methods as diffusers guiders, for diffusers' modular pipelines (diffusers 0.42, `BaseGuidance`).

`GatedGuidance`, `PosteriorGuidance`, `DynamicGuidance` and `PerpNegGuidance` combine the same predictions as
avert's own loop, through the same code (`avert.guidance.strategy.Guidance.combine`), so a modular pipeline with one
of them makes avert's image. The formulas are in `avert.guidance.cfg` (Perp-Neg: Armandpour et al. 2023, eq. 9;
dynamic: after Koulischer et al., ICLR 2025; posterior and gated: Koulischer et al.'s Bayes update of each negative's
concept along the chain, sec. 4, Alg. 1). Each needs three kinds of prediction: the prompt's, the empty prompt's
and each negative's. So, unlike diffusers' CFG guiders:

- the pipeline's own negative must be the empty prompt (leave `negative_prompt` unset: its batch is e_0, zeros
  where the model's `force_zeros_for_empty_prompt` says so, as in avert's own SDXL empty branch), and the negatives
  are given to the guider, encoded, with `set_negatives` (one dict per negative, keyed as the pipeline's guider
  inputs: `prompt_embeds`, `text_embeds` for SDXL's pooled embedding; a key left out takes the empty prompt's
  value); weights, windows and the rule that adds several up are the guider's config;
- posterior and gated read the sample x and its noise level sigma: x is taken from the UNet's input by a forward
  pre-hook that `prepare_models` installs and `cleanup_models` removes (the hook contract diffusers' PAG uses), and
  sigma from the timestep through the model's training schedule (the guider's config: `from_scheduler` copies it);
- progress through the run (windows, guidance_start/end) counts the pipeline's steps: `set_state(step, n)` is
  evaluation `step` of `n`, which is avert's count for one-evaluation-per-step samplers (Euler, DPM++ 2M, DDIM ...).

diffusers marks guiders experimental; `CONTRACT` is the range tested (tests/test_avert_guiders.py).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from avert.guidance.strategy import (EMPTY, Branch, Guidance, Interval, Posterior, StepContext, Term, negative_branch,
                                     prompt_branch)
from avert.sampling.loop import sigma_function

CONTRACT = ">=0.42,<0.43"  # the diffusers releases whose guider contract these classes are tested against
PROMPT, EMPTY_ID = "pred_cond", "pred_uncond"


def _identifier(branch: Branch) -> str:
    if branch == EMPTY:
        return EMPTY_ID
    return PROMPT if branch.role == "prompt" else f"pred_negative_{branch.index}"


class AvertGuidance(BaseGuidance):
    """An avert method as a diffusers guider; subclasses fix `method`. Config: guidance_scale w, negative_scale w_n
    (None: w), one weight and window [start, end) per negative, the rule several negatives add up by
    (`avert.guidance.compose.RULES`), the posterior's prior, temperature and p_max, guidance_rescale, the model's
    prediction type and training schedule (for sigma)."""

    _input_predictions = [PROMPT, EMPTY_ID]
    method = "cfg"

    @register_to_config
    def __init__(self, guidance_scale: float = 7.0, negative_scale: float | None = None,
                 negative_weights: list[float] | None = None, negative_windows: list[list[float]] | None = None,
                 rule: str = "strongest-protect", posterior_prior: float = 0.8, posterior_temperature: float = 1.0,
                 posterior_p_max: float = 0.8, guidance_rescale: float = 0.0, prediction_type: str = "epsilon",
                 num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", start: float = 0.0, stop: float = 1.0, enabled: bool = True):
        super().__init__(start, stop, enabled)
        _check(rule, negative_weights, negative_windows, posterior_prior, posterior_p_max)
        self._negatives: list[dict] = []
        self._guidance: Guidance | None = None  # built from the config and the negatives on first use
        self._memory: dict = {}
        self._x: torch.Tensor | None = None
        self._hook = None
        self._ctx: StepContext | None = None
        self._sigma_at = _sigma_function(num_train_timesteps, beta_start, beta_end, beta_schedule)

    @classmethod
    def from_scheduler(cls, scheduler, **kwargs) -> "AvertGuidance":
        """The guider with `scheduler`'s training schedule and prediction type (what sigma is at a timestep)."""
        config = scheduler.config
        names = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
        return cls(**{n: config[n] for n in names if n in config}, **kwargs)

    def set_negatives(self, negatives: list[dict]) -> None:
        """The negatives' encoded inputs, one dict per negative keyed as the pipeline's guider inputs."""
        self._negatives = [dict(n) for n in negatives]
        self._guidance = None

    def guidance(self) -> Guidance:
        """avert's guidance value for this config and the negatives set (built once per set of negatives: the
        pipeline asks for it several times a step)."""
        if self._guidance is None:
            self._guidance = self._build()
        return self._guidance

    def _build(self) -> Guidance:
        c = self.config
        weights = c.negative_weights or [1.0] * len(self._negatives)
        windows = c.negative_windows or [[0.0, 1.0]] * len(self._negatives)
        if len(weights) != len(self._negatives) or len(windows) != len(self._negatives):
            raise ValueError(f"{len(self._negatives)} negatives set, but {len(weights)} negative_weights and "
                             f"{len(windows)} negative_windows configured")
        terms = tuple(Term(float(w), float(a), float(b)) for w, (a, b) in zip(weights, windows))
        return Guidance(scale=c.guidance_scale, method=self.method, negative_scale=c.negative_scale,
                        negatives=terms, rescale=c.guidance_rescale,
                        interval=Interval(self._start, self._stop), prediction_type=c.prediction_type,
                        posterior=Posterior(c.posterior_prior, c.posterior_temperature, c.posterior_p_max),
                        rule=c.rule)

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.LongTensor) -> None:
        super().set_state(step, num_inference_steps, timestep)
        if step == 0:
            self._memory = {}  # a new run
        t = float(timestep)
        self._ctx = StepContext(step, num_inference_steps, t, self._sigma_at(t))

    def branches(self) -> tuple[Branch, ...]:
        """The branches of the step set by `set_state`; before any (the pipeline's encoders ask whether to encode
        the negative), all of them."""
        if not self._enabled:
            return (prompt_branch(0),)
        if self._ctx is None:
            return (prompt_branch(0), EMPTY) + tuple(negative_branch(i) for i in range(len(self._negatives)))
        return self.guidance().branches(self._ctx)

    @property
    def num_conditions(self) -> int:
        return len(self.branches())

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list:
        from diffusers.modular_pipelines.modular_pipeline import BlockState

        batches = []
        for branch in sorted(self.branches(), key=lambda b: b != prompt_branch(0)):  # the prompt's batch first
            if branch.role == "negative":
                own = self._negatives[branch.index]
                fields = {k: own.get(k, v[1] if isinstance(v, tuple) else v) for k, v in data.items()}
                batches.append(BlockState(**fields, **{self._identifier_key: _identifier(branch)}))
            else:
                batches.append(self._prepare_batch(data, 0 if branch.role == "prompt" else 1, _identifier(branch)))
        return batches

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        super().prepare_models(denoiser)
        if self._hook is None:
            self._hook = denoiser.register_forward_pre_hook(self._take_sample, with_kwargs=True)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _take_sample(self, module, args, kwargs):
        self._x = args[0] if args else kwargs["sample"]

    def forward(self, **predictions: torch.Tensor) -> GuiderOutput:
        by_branch = {b: predictions[_identifier(b)] for b in self.branches()}
        prompt = by_branch[prompt_branch(0)]
        if len(by_branch) == 1:
            return GuiderOutput(pred=prompt, pred_cond=prompt, pred_uncond=None)
        x = self._x if self._x is not None else torch.zeros_like(prompt)
        pred = self.guidance().combine(by_branch, self._ctx, x.to(prompt.dtype), self._memory)
        return GuiderOutput(pred=pred, pred_cond=prompt, pred_uncond=by_branch.get(EMPTY))


class GatedGuidance(AvertGuidance):
    """avert's gated negative: plain CFG with each negative's weight times the posterior of its concept along the
    prompt's own chain (`avert.guidance.strategy.Guidance._posterior`)."""

    method = "gated"


class PosteriorGuidance(AvertGuidance):
    """Koulischer et al.'s posterior-tracked negative: e = e_0 + w d_c - w_n sum_i p_i l_i (e_ni - e_0)."""

    method = "posterior"


class DynamicGuidance(AvertGuidance):
    """Dynamic negative guidance: each negative's scale times clamp(<d_c, d_n> / |d_n|^2, 0, 1)."""

    method = "dynamic"


class PerpNegGuidance(AvertGuidance):
    """Perp-Neg: e = e_0 + w d_c - w_n sum_i l_i d_i_perp, d_i_perp the part of e_ni - e_0 orthogonal to d_c."""

    method = "perp-neg"


def _check(rule: str, weights, windows, prior: float, p_max: float) -> None:
    """Arguments refused by name, with what is allowed (as avert's request validation words it)."""
    from avert.guidance.compose import RULES

    if rule not in RULES:
        raise ValueError(f"rule: {rule!r} is not allowed; must be one of: {', '.join(RULES)}")
    if weights is not None and not all(isinstance(w, (int, float)) and -10 <= w <= 10 for w in weights):
        raise ValueError(f"negative_weights: {weights!r} is not allowed; must be numbers from -10 to 10")
    if windows is not None and not all(len(w) == 2 and 0 <= w[0] < w[1] <= 1 for w in windows):
        raise ValueError(f"negative_windows: {windows!r} is not allowed; must be [start, end] pairs with "
                         "0 <= start < end <= 1")
    if not 0 < prior < 1 or not 0 < p_max <= 1:
        raise ValueError(f"posterior_prior {prior!r}, posterior_p_max {p_max!r}: must be in (0, 1) and (0, 1]")


def _sigma_function(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str):
    """sigma(t) over the training schedule, as avert's sampling loop computes it (`avert.sampling.loop`)."""
    from diffusers import DDPMScheduler

    schedule = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                             beta_schedule=beta_schedule)
    return sigma_function(schedule)
