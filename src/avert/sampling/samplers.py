"""Samplers by their AUTOMATIC1111 names, each mapped to a diffusers scheduler with the right options.

The mapping follows diffusers' own table ("A1111/k-diffusion -> diffusers" in the schedulers
overview): e.g. "DPM++ 2M Karras" is `DPMSolverMultistepScheduler(use_karras_sigmas=True)`.
Every scheduler is built from the model's own scheduler config, so the model's noise schedule and
prediction type (epsilon or v) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplerSpec:
    """An A1111 sampler name, the diffusers scheduler class implementing it and the options it needs."""

    name: str
    scheduler: str  # class name in diffusers
    options: tuple[tuple[str, Any], ...] = field(default=())
    seeded_noise_sampler: bool = False  # draws its noise from a Brownian tree seeded by the image seed
    eta_option: str | None = None  # A1111's option its eta defaults to: "eta_ancestral" (1) or "eta_ddim" (0)

    @property
    def default_eta(self) -> float | None:
        """The eta it runs at when none is given (A1111's option defaults), None for samplers without eta."""
        return ETA_OPTIONS.get(self.eta_option)

    def build(self, base_config: dict, seed: int, eta: float | None = None) -> Any:
        """A fresh scheduler for one image (schedulers hold per-run state, so one per image), at `eta` (None:
        the default; a sampler that takes eta only, validation has checked it)."""
        import diffusers  # here, not at the top: the CLI's parser reads SAMPLER_NAMES without loading diffusers

        cls = getattr(diffusers, self.scheduler)
        options = dict(self.options)
        if self.seeded_noise_sampler:
            options["noise_sampler_seed"] = seed
        if eta is None or eta == self.default_eta:
            return cls.from_config(base_config, **options)
        from avert.sampling.eta import ETA_SCHEDULERS

        scheduler = ETA_SCHEDULERS[self.scheduler].from_config(base_config, **options)
        scheduler.eta = float(eta)
        return scheduler


ETA_OPTIONS = {"eta_ancestral": 1.0, "eta_ddim": 0.0}  # A1111's defaults
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
)

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


def sampler_spec(name: str) -> SamplerSpec:
    """The spec for an A1111 sampler name (exact match; validation has already checked it)."""
    return SAMPLERS[name]
