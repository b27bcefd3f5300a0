"""The frozen request value that crosses every boundary (CLI, Python API, server) into the engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from avert.init_image import InitImage, Mask
from avert.schema import PARAMS


@dataclass(frozen=True)
class Negative:
    """One negative prompt of a request: its text (full prompt syntax), its weight, and its window.

    The window [start, end) is a fraction of the run: 0 is the first step, 1 the end; outside it the negative
    is not evaluated at all (its place in the unconditional branch falls back to the empty prompt).
    """

    text: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0

    @classmethod
    def from_value(cls, value: Any) -> "Negative":
        """From a Negative, a dict with the field names, or a plain text (weight 1, whole run)."""
        if isinstance(value, Negative):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in value.items() if k in names})
        raise TypeError(f"a negative is a text or an object with text, weight, start, end; got {value!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that determines the images, apart from the model and the runtime device.

    Fields and their defaults are declared once in `avert.schema.PARAMS` (`negatives`, a list of values, is
    checked by `avert.validation`); `width`/`height` of None mean the model's native size; seed -1 means "draw
    a random seed" (the result reports the seed used); `negative_scale` None means "the same as cfg_scale";
    `init_image` makes it img2img (`strength`, `resize_mode`), and `mask` with it inpainting (`mask_blur` ...
    `overlay_inpaint`); `guidance` None means the model's own method
    (`Components.default_guidance`: cfg unless the model's folder names another); `eta` None means the sampler's
    own (1 for ancestral samplers, 0 for DDIM).
    """

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"
    eta: float | None = None
    batch_size: int = 1
    negative_scale: float | None = None
    guidance: str | None = None
    negatives_rule: str | None = None
    apg_eta: float = 0.0
    apg_norm_threshold: float = 0.0
    apg_momentum: float = 0.0
    apg_formulation: str = "paper"
    zero_init_steps: int = 1
    fdg_guidance_scales: str | None = None
    fdg_parallel_weights: float = 1.0
    mambo_alpha: float = 8.0
    perturbed_guidance_scale: float | None = None
    perturbed_guidance_layers: str | None = None
    perturbed_guidance_start: float | None = None
    perturbed_guidance_stop: float | None = None
    seg_blur_sigma: float = 9999999.0
    posterior_prior: float = 0.8
    posterior_temperature: float = 1.0
    posterior_p_max: float = 0.8
    guidance_rescale: float = 0.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    guidance_sigma_min: float | None = None
    guidance_sigma_max: float | None = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    guidance_reuse: bool = False
    nag_scale: float = 1.0
    nag_tau: float = 2.5
    nag_alpha: float = 0.5
    nag_end: float = 1.0
    strength: float = 0.75
    resize_mode: str = "just resize"
    initial_noise_multiplier: float = 1.0
    mask_blur: int = 4
    mask_blur_y: int | None = None
    inpainting_fill: str = "original"
    inpainting_mask_invert: bool = False
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    mask_round: bool = True
    overlay_inpaint: bool = True
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_sampler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    tiling: bool = False
    clip_skip: int = 1
    emphasis: str = "Original"
    prompt_2: str = ""
    negative_prompt_2: str = ""
    empty_negative: str | None = None
    original_size: str | None = None
    crop_top_left: str | None = None
    target_size: str | None = None
    negative_original_size: str | None = None
    negative_crop_top_left: str | None = None
    negative_target_size: str | None = None
    negatives: tuple[Negative, ...] = ()
    init_image: InitImage | None = None
    mask: Mask | None = None

    def all_negatives(self) -> tuple[Negative, ...]:
        """`negative_prompt` (weight 1, whole run) when not empty, then `negatives`."""
        first = (Negative(self.negative_prompt),) if self.negative_prompt else ()
        return first + tuple(self.negatives)

    def guided_negatives(self) -> tuple[Negative, ...]:
        """The negatives as guidance sees them: `all_negatives`, or, under the rule "joined", one negative whose
        text is theirs joined with ", " (A1111's reading of several negatives as one field; validation allows
        "joined" only for negatives of weight 1 over the whole run)."""
        negatives = self.all_negatives()
        if self.negatives_rule != "joined" or len(negatives) < 2:
            return negatives
        return (Negative(", ".join(n.text for n in negatives if n.text)),)

    def replace(self, **changes: Any) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; the init image and the mask as their sizes and hashes (`describe`)."""
        data = dataclasses.asdict(self.replace(init_image=None, mask=None))
        for name in ("init_image", "mask"):
            data[name] = getattr(self, name).describe() if getattr(self, name) is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRequest":
        """Build from a dict (e.g. a PNG's structured chunk); unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names and k not in ("init_image", "mask")}  # no pixels in a record
        if isinstance(values.get("negatives"), (list, tuple)):
            values["negatives"] = tuple(Negative.from_value(n) for n in values["negatives"])
        return cls(**values)


def _check_schema_matches() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(GenerationRequest)
              if f.name not in ("negatives", "init_image", "mask")}
    declared = {p.name: p.default for p in PARAMS}
    if fields != declared:
        raise RuntimeError(f"GenerationRequest fields {fields} disagree with schema.PARAMS {declared}")


_check_schema_matches()
