"""Samplers by their AUTOMATIC1111 names, each mapped to a diffusers scheduler with the right options.

The mapping follows diffusers' own table ("A1111/k-diffusion -> diffusers" in the schedulers
overview): e.g. "DPM++ 2M Karras" is `DPMSolverMultistepScheduler(use_karras_sigmas=True)`.
Every scheduler is built from the model's own scheduler config, so the model's noise schedule and
prediction type (epsilon or v) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


AUTOMATIC = "Automatic"  # the schedule type that keeps the sampler's own schedule


@dataclass(frozen=True)
class SamplerSpec:
    """An A1111 sampler name, the diffusers scheduler class implementing it and the options it needs."""

    name: str
    scheduler: str  # class name in diffusers
    options: tuple[tuple[str, Any], ...] = field(default=())
    seeded_noise_sampler: bool = False  # draws its noise from a Brownian tree seeded by the image seed
    eta_option: str | None = None  # A1111's option its eta defaults to: "eta_ancestral" (1) or "eta_ddim" (0)
    few_step: bool = False  # a consistency sampler (LCM, TCD): at most FEW_STEP_MAX steps, text to image only

    @property
    def default_eta(self) -> float | None:
        """The eta it runs at when none is given (A1111's option defaults), None for samplers without eta."""
        return ETA_OPTIONS.get(self.eta_option)

    def build(self, base_config: dict, seed: int, eta: float | None = None, schedule_type: str = AUTOMATIC) -> Any:
        """A fresh scheduler for one image (schedulers hold per-run state, so one per image), at `eta` (None:
        the default; a sampler that takes eta only, validation has checked it) and with `schedule_type`'s
        sigmas or spacing (validation has checked that the scheduler has them: `schedule_problem`)."""
        import diffusers  # here, not at the top: the CLI's parser reads SAMPLER_NAMES without loading diffusers

        cls = getattr(diffusers, self.scheduler)
        options = {**dict(self.options), **dict(SCHEDULE_OPTIONS[schedule_type])}
        if self.seeded_noise_sampler:
            options["noise_sampler_seed"] = seed
        if eta is None or eta == self.default_eta:
            return cls.from_config(base_config, **options)
        from avert.sampling.eta import ETA_SCHEDULERS

        scheduler = ETA_SCHEDULERS[self.scheduler].from_config(base_config, **options)
        scheduler.eta = float(eta)
        return scheduler


ETA_OPTIONS = {"eta_ancestral": 1.0, "eta_ddim": 0.0}  # A1111's defaults
# A1111's schedule types (1.9+) as diffusers' scheduler options, after diffusers' own table (schedulers overview:
# "karras" -> use_karras_sigmas, "sgm_uniform" -> timestep_spacing "trailing"); Uniform is k-diffusion's get_sigmas,
# sigmas at timesteps spaced evenly from the last to the first: diffusers' "linspace" spacing
SCHEDULE_OPTIONS: dict[str, tuple[tuple[str, Any], ...]] = {
    AUTOMATIC: (),
    "Uniform": (("timestep_spacing", "linspace"),),
    "Karras": (("use_karras_sigmas", True),),
    "Exponential": (("use_exponential_sigmas", True),),
    "SGM Uniform": (("timestep_spacing", "trailing"),),
}
SCHEDULE_TYPES = tuple(SCHEDULE_OPTIONS)
_KARRAS = (("use_karras_sigmas", True),)
_ANCESTRAL = {"eta_option": "eta_ancestral"}  # A1111 passes its eta_ancestral to the SDE samplers too
_SPECS = (
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", **_ANCESTRAL),
    SamplerSpec("Euler", "EulerDiscreteScheduler"),
    SamplerSpec("LMS", "LMSDiscreteScheduler"),
    SamplerSpec("LMS Karras", "LMSDiscreteScheduler", _KARRAS),
    SamplerSpec("Heun", "HeunDiscreteScheduler"),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler"),
    SamplerSpec("DPM2 Karras", "KDPM2DiscreteScheduler", _KARRAS),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", **_ANCESTRAL),
    SamplerSpec("DPM2 a Karras", "KDPM2AncestralDiscreteScheduler", _KARRAS, **_ANCESTRAL),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler"),
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", (("algorithm_type", "sde-dpmsolver++"),), **_ANCESTRAL),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler",
                (("algorithm_type", "sde-dpmsolver++"),) + _KARRAS, **_ANCESTRAL),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", seeded_noise_sampler=True, **_ANCESTRAL),
    SamplerSpec("DPM++ SDE Karras", "DPMSolverSDEScheduler", _KARRAS, seeded_noise_sampler=True, **_ANCESTRAL),
    SamplerSpec("DDIM", "DDIMScheduler", eta_option="eta_ddim"),
    SamplerSpec("PLMS", "PNDMScheduler", (("skip_prk_steps", True),)),
    SamplerSpec("PNDM", "PNDMScheduler", (("skip_prk_steps", False),)),
    SamplerSpec("UniPC", "UniPCMultistepScheduler"),
    # few-step samplers of consistency-distilled models (LCM, LCM-LoRA, TCD), as Forge and ComfyUI name them; TCD's
    # gamma is diffusers' default 0.3 (its `step`'s eta)
    SamplerSpec("LCM", "LCMScheduler", few_step=True),
    SamplerSpec("TCD", "TCDScheduler", few_step=True),
)
FEW_STEP_MAX = 50  # diffusers' LCM and TCD schedulers: steps at most their original_inference_steps (50)

SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in _SPECS}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


ETA_SAMPLERS = tuple(s.name for s in _SPECS if s.eta_option)


def zero_snr_samplers() -> tuple[str, ...]:
    """The samplers whose diffusers scheduler can rescale its betas to zero terminal SNR (`rescale_betas_zero_snr`);
    the others would silently ignore it."""
    import inspect

    import diffusers

    return tuple(s.name for s in _SPECS
                 if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, s.scheduler).__init__).parameters)


def schedule_problem(sampler: str, schedule_type: str) -> str | None:
    """Why `schedule_type` cannot go with `sampler` (None: it can): a sampler whose name sets the schedule (the
    Karras ones) takes only Automatic, and the scheduler must have the option (diffusers' Euler a has no sigma
    schedules)."""
    if schedule_type == AUTOMATIC:
        return None
    if sampler.endswith(" Karras"):
        return (f"must be Automatic with sampler {sampler!r}, whose name sets the Karras schedule (choose "
                f"{sampler[:-7]!r} and a schedule type)")
    if not _takes(sampler, schedule_type):
        able = [n for n in SAMPLER_NAMES if not n.endswith(" Karras") and _takes(n, schedule_type)]
        return (f"must go with a sampler whose scheduler has it ({sampler!r}, diffusers' "
                f"{SAMPLERS[sampler].scheduler}, has not): " + ", ".join(able))
    return None


def _takes(sampler: str, schedule_type: str) -> bool:
    """Whether the sampler's diffusers scheduler has every option the schedule type sets."""
    import inspect

    import diffusers

    accepted = inspect.signature(getattr(diffusers, SAMPLERS[sampler].scheduler).__init__).parameters
    return all(name in accepted for name, _ in SCHEDULE_OPTIONS[schedule_type])


def sampler_spec(name: str) -> SamplerSpec:
    """The spec for an A1111 sampler name (exact match; validation has already checked it)."""
    return SAMPLERS[name]
