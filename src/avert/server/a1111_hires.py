"""A1111's hires fix on `/sdapi/v1/txt2img`: `enable_hr` and its fields as avert's request fields.

Without `enable_hr` the hires fields are accepted and do nothing, as in A1111. With it: `hr_scale`, `hr_resize_x`,
`hr_resize_y`, `hr_second_pass_steps`, `hr_prompt`, `hr_negative_prompt` pass as they are; `hr_upscaler` null is
"Latent" (A1111's default), another name must be one of avert's (`avert.schema.HR_UPSCALERS`: A1111's latent modes,
Lanczos, Nearest); `hr_sampler_name` and `hr_scheduler` ("Use same sampler"/"Use same scheduler" or null: the
first pass's) name the second pass's sampler; `hr_checkpoint_name` must be null or "Use same checkpoint";
`denoising_strength` is the second pass's strength (null: avert's 0.75, where A1111 fails with a 500); non-zero
`firstphase_width` / `firstphase_height` (A1111's legacy fields) are the first pass's size (a problem with them is
named as width or height).
"""

from __future__ import annotations

from avert.errors import FieldProblem, ValidationError
from avert.schema import HR_UPSCALERS

SAME = (None, "", "Use same sampler", "Use same scheduler", "Use same checkpoint")
PASSED = ("hr_scale", "hr_resize_x", "hr_resize_y", "hr_second_pass_steps", "hr_prompt", "hr_negative_prompt")


def hires_fields(settings: dict) -> dict:
    """The request fields of an A1111 txt2img body's hires fix (none without enable_hr); problems name A1111's fields."""
    if settings.get("enable_hr") is not True:
        return {}
    problems = []
    upscaler = settings.get("hr_upscaler")
    upscaler = "Latent" if upscaler in (None, "") else upscaler
    if upscaler not in HR_UPSCALERS:
        problems.append(FieldProblem("hr_upscaler", upscaler, "must be one of: " + ", ".join(HR_UPSCALERS) +
                                     " (avert has no model upscalers: GET /sdapi/v1/upscalers)"))
    if settings.get("hr_checkpoint_name") not in SAME:
        problems.append(FieldProblem("hr_checkpoint_name", settings.get("hr_checkpoint_name"), "must be null or "
                                     "'Use same checkpoint': the second pass runs on the same model"))
    sampler = _sampler(settings, problems)
    if problems:
        raise ValidationError(problems)
    fields = {"enable_hr": True, "hr_upscaler": upscaler, **{k: settings.get(k) for k in PASSED}}
    fields.update({k: v for k, v in (("hr_sampler", sampler), ("strength", settings.get("denoising_strength")))
                   if v is not None})
    first = (settings.get("firstphase_width"), settings.get("firstphase_height"))
    if any(v not in (0, None) for v in first):  # A1111's legacy first-pass size: both replace width and height
        fields.update(width=first[0], height=first[1])
    return fields


def _sampler(settings: dict, problems: list[FieldProblem]) -> str | None:
    """hr_sampler_name with hr_scheduler as one avert sampler name; None for the first pass's."""
    name, scheduler = settings.get("hr_sampler_name"), settings.get("hr_scheduler")
    if scheduler in SAME or (isinstance(scheduler, str) and scheduler.lower() == "automatic"):
        return None if name in SAME else name
    if not (isinstance(scheduler, str) and scheduler.lower() == "karras"):
        problems.append(FieldProblem("hr_scheduler", scheduler, "must be null, 'Use same scheduler', automatic or "
                                     "karras"))
        return None
    base = settings.get("sampler_name") or settings.get("sampler_index") or "Euler" if name in SAME else name
    return base if isinstance(base, str) and base.endswith(" Karras") else f"{base} Karras"
