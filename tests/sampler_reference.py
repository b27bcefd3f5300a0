"""The reference for every A1111 sampler name: the diffusers scheduler and options, as diffusers documents them
(independent of avert's own table, `avert.sampling.samplers`, so a wrong mapping there is not mirrored here)."""

from __future__ import annotations

# A1111 name -> (diffusers scheduler class, options), written from the table "A1111/k-diffusion -> diffusers" of
# diffusers' schedulers overview (api/schedulers/overview), not from avert's code. DPM++ SDE draws its noise
# from a Brownian tree seeded by the image seed (noise_sampler_seed), which avert adds per image.
KARRAS = {"use_karras_sigmas": True}
DIFFUSERS_TABLE = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", KARRAS),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", **KARRAS}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", KARRAS),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", KARRAS),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", KARRAS),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", KARRAS),
    # not in that table; from diffusers' own pipelines: PLMS is PNDM without its Runge-Kutta warm-up steps
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": False}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    # Forge's and ComfyUI's few-step samplers: diffusers' LCM and TCD schedulers as its LCM / TCD pipelines use them
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
}


def reference_scheduler(name: str, config: dict, seed: int):
    """The diffusers scheduler for an A1111 name, built from the table above."""
    import diffusers

    cls, options = DIFFUSERS_TABLE[name]
    extra = {"noise_sampler_seed": seed} if cls == "DPMSolverSDEScheduler" else {}
    return getattr(diffusers, cls).from_config(config, **options, **extra)
