"""Validation of a request, up front and in one place, against the declared schema.

Every problem names the field, the value and what is allowed; all problems are reported at once.
"""

from __future__ import annotations

import math
import re

from avert.errors import FieldProblem, ValidationError
from avert.prompts.parse import count_parts, parse_prompt
from avert.prompts.schedule import PromptTooComplex
from avert.request import GenerationRequest, Negative
from avert.sampling.samplers import ETA_SAMPLERS, FEW_STEP_MAX, SAMPLERS, SCHEDULE_TYPES, schedule_problem
from avert.schema import FALLBACK_GUIDANCE, PARAMS, PARAMS_BY_NAME, RESIZE_MODES, SDXL_ONLY, Limits, Param


def validate(request: GenerationRequest, limits: Limits = Limits(),
             model_guidance: str | None = FALLBACK_GUIDANCE) -> GenerationRequest:
    """Return the request unchanged if valid, else raise `ValidationError` listing every bad field.

    `model_guidance` is the method a request without `guidance` gets from its model (`Components.default_guidance`);
    None where the model is not known yet (the command checks a request before it loads the model): a method's own
    fields are then checked only against a method the request names.
    """
    problems = [p for param in PARAMS if (p := check_field(param, getattr(request, param.name), limits))]
    problems += check_negatives(request.negatives, limits)
    problems += check_relations(request, model_guidance)
    problems += _fdg_scale_problems(request, limits)
    problems = problems or _hires_size_problems(request, limits)
    problems = problems or check_prompt_work(request, limits)  # the parser sees only otherwise valid requests
    if problems:
        raise ValidationError(problems)
    return request


def check_field(param: Param, value: object, limits: Limits) -> FieldProblem | None:
    """The problem with one field's value, or None when it is allowed."""
    bad = FieldProblem(param.name, value, param.describe_allowed(limits))
    if value is None:
        return None if param.default is None else bad
    if not _has_type(value, param.type):
        return bad
    if value in param.allow:
        return None
    if param.choices:
        return None if value in param.choices else bad
    if param.type is str and param.pattern is not None:
        return None if re.fullmatch(param.pattern[0], value) else bad
    if param.type is str:
        return None if param.high is None or len(value) <= param.high(limits) else bad
    if isinstance(value, float) and not math.isfinite(value):
        return bad
    if param.low is not None and value < param.low(limits):
        return bad
    if param.high is not None and value > param.high(limits):
        return bad
    if param.multiple_of and value % param.multiple_of:
        return bad
    return None


def check_negatives(negatives: object, limits: Limits) -> list[FieldProblem]:
    """Each negative: text within the prompt length limit, weight from -10 to 10, 0 <= start < end <= 1."""
    if not isinstance(negatives, tuple) or not all(isinstance(n, Negative) for n in negatives):
        return [FieldProblem("negatives", negatives, "must be a list of {text, weight, start, end}")]
    if len(negatives) > limits.max_negatives:
        return [FieldProblem("negatives", f"{len(negatives)} entries", f"must have at most {limits.max_negatives}")]
    return [p for i, n in enumerate(negatives) for p in _negative_problems(f"negatives[{i}]", n, limits)]


def _negative_problems(name: str, n: Negative, limits: Limits) -> list[FieldProblem]:
    problems = []
    if not isinstance(n.text, str) or len(n.text) > limits.max_prompt_chars:
        problems.append(FieldProblem(name + ".text", n.text, f"must be text of at most "
                                     f"{limits.max_prompt_chars} characters"))
    problems += [FieldProblem(f"{name}.{field}", value, rule) for field, value, rule in (
        ("weight", n.weight, "must be a number from -10 to 10"),
        ("start", n.start, "must be a number from 0 to 1"),
        ("end", n.end, "must be a number from 0 to 1")) if not _in_range(value, *_RANGES[field])]
    if not problems and n.start >= n.end:
        problems.append(FieldProblem(f"{name}.start", n.start, f"must be below end ({n.end})"))
    return problems


_RANGES = {"weight": (-10.0, 10.0), "start": (0.0, 1.0), "end": (0.0, 1.0)}


def prompt_fields(request: GenerationRequest) -> list[tuple[str, str]]:
    """(field name, text) of the prompt and every negative, as errors name them."""
    fields = [("prompt", request.prompt)] + ([("negative_prompt", request.negative_prompt)]
                                             if request.negative_prompt else [])
    hires = [(name, getattr(request, name)) for name in ("hr_prompt", "hr_negative_prompt") if getattr(request, name)]
    return fields + [(f"negatives[{i}].text", n.text) for i, n in enumerate(request.negatives)] + hires


def check_prompt_work(request: GenerationRequest, limits: Limits) -> list[FieldProblem]:
    """The text side's work, bounded before any of it is done: AND parts (each a branch of every model
    evaluation), the schedule parser's load, and the distinct texts the run would encode."""
    fields = prompt_fields(request)
    parts = sum(count_parts(text) for _, text in fields)
    if parts > limits.max_prompt_parts:
        return [FieldProblem("prompt", f"{parts} AND parts over the prompt and negatives", "must have at most "
                             f"{limits.max_prompt_parts} AND parts in all (each is evaluated at every step)")]
    problems, encoded = [], 0
    for name, text in fields:
        try:
            encoded += sum(len(t) for t in parse_prompt(text, request.steps).texts())
        except PromptTooComplex as error:
            problems.append(FieldProblem(name, text, str(error)))
    if not problems and encoded > limits.max_encoded_chars:
        problems.append(FieldProblem("prompt", f"{encoded} characters of distinct text over {request.steps} steps",
                                     f"must need at most {limits.max_encoded_chars} characters encoded in all "
                                     "(each [a|b] alternation or [from:to:when] edit is a text of its own)"))
    return problems


def _in_range(value: object, low: float, high: float) -> bool:
    return _has_type(value, float) and math.isfinite(value) and low <= value <= high


def check_relations(request: GenerationRequest, model_guidance: str | None = FALLBACK_GUIDANCE) -> list[FieldProblem]:
    """Fields that are valid alone but not together (a method's fields: see `validate`)."""
    problems = []
    if _in_range(request.guidance_start, 0, 1) and _in_range(request.guidance_end, 0, 1) \
            and request.guidance_start >= request.guidance_end:
        problems.append(FieldProblem("guidance_start", request.guidance_start,
                                     f"must be below guidance_end ({request.guidance_end})"))
    low, high = request.guidance_sigma_min, request.guidance_sigma_max
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low >= high:
        problems.append(FieldProblem("guidance_sigma_min", low, f"must be below guidance_sigma_max ({high})"))
    start, stop = request.perturbed_guidance_start, request.perturbed_guidance_stop
    if _in_range(start, 0, 1) and _in_range(stop, 0, 1) and start > stop:
        problems.append(FieldProblem("perturbed_guidance_start", start,
                                     f"must be at most perturbed_guidance_stop ({stop})"))
    return (problems + _method_problems(request, model_guidance) + _eta_problems(request) + _schedule_problems(request)
            + _few_step_problems(request) + _img2img_problems(request)
            + _joined_problems(request) + _nag_problems(request))


NAG_OPTIONS = ("nag_tau", "nag_alpha", "nag_end")


def _nag_problems(request: GenerationRequest) -> list[FieldProblem]:
    """NAG steers away from the negatives: it needs one; its options mean something only with it on."""
    if request.nag_scale == 1.0:
        return _unused(request, NAG_OPTIONS, "nag_scale above 1 (NAG on")
    if isinstance(request.nag_scale, (int, float)) and not request.all_negatives():
        return [FieldProblem("nag_scale", request.nag_scale, "applies only with a negative (NAG steers away from "
                             "the negatives in attention); give one, or leave nag_scale at 1")]
    return []


def _joined_problems(request: GenerationRequest) -> list[FieldProblem]:
    """Negatives joined into one text have one weight (1) and one window (the whole run)."""
    if request.negatives_rule != "joined":
        return []
    for i, n in enumerate(request.negatives):
        if isinstance(n, Negative) and (n.weight, n.start, n.end) != (1.0, 0.0, 1.0):
            return [FieldProblem("negatives_rule", "joined", f"joins only negatives of weight 1 over the whole run; "
                                 f"negatives[{i}] has weight {n.weight:g} from {n.start:g} to {n.end:g} (use "
                                 "another rule, or give it in the text as (words:weight) and [words:from])")]
    return []


MASK_ONLY = ("mask_blur", "mask_blur_y", "inpainting_fill", "inpainting_mask_invert", "inpaint_full_res",
             "inpaint_full_res_padding", "mask_round", "overlay_inpaint")


def _img2img_problems(request: GenerationRequest) -> list[FieldProblem]:
    """The init image is an `InitImage` and the mask a `Mask`; strength and resize_mode mean something only with an
    init image (strength also with the hires fix), the mask only with one, and the mask's settings only with a mask."""
    from avert.init_image import InitImage, Mask

    for name, kind in (("init_image", InitImage), ("mask", Mask)):
        value = getattr(request, name)
        if value is not None and not isinstance(value, kind):
            return [FieldProblem(name, type(value).__name__, f"must be an image ({kind.__name__}) or none")]
    problems = _hires_problems(request)
    if request.init_image is None:
        if request.enable_hr is not True:
            problems += _unused(request, ("strength",), "an init image (img2img) or enable_hr (the hires fix")
        problems += _unused(request, ("resize_mode", "initial_noise_multiplier"), "an init image (img2img")
    if request.mask is None:
        return problems + _unused(request, MASK_ONLY, "a mask (inpainting")
    if request.init_image is None:
        problems.append(FieldProblem("mask", f"{request.mask.width}x{request.mask.height} mask",
                                     "applies only with an init image (inpainting re-draws part of it)"))
    if request.resize_mode == "latent upscale":
        problems.append(FieldProblem("resize_mode", request.resize_mode, "must be a pixel mode with a mask ("
                                     + ", ".join(m for m in RESIZE_MODES if m != "latent upscale") + ")"))
    return problems


HIRES_ONLY = ("hr_scale", "hr_resize_x", "hr_resize_y", "hr_upscaler", "hr_second_pass_steps", "hr_sampler", "hr_prompt",
              "hr_negative_prompt")


def _hires_problems(request: GenerationRequest) -> list[FieldProblem]:
    """The hires fix's fields mean something only with enable_hr, which is for text to image, and whose second pass
    needs some strength."""
    if request.enable_hr is not True:
        return _unused(request, HIRES_ONLY, "enable_hr (the hires fix")
    if request.init_image is not None:
        return [FieldProblem("enable_hr", True, "must be false with an init image: the hires fix is for text to image "
                             "(A1111's img2img has none)")]
    if _has_type(request.strength, float) and request.strength == 0:
        return [FieldProblem("strength", 0, "must be above 0 with enable_hr: the second pass re-draws at this "
                             "strength (A1111's denoising strength)")]
    return []


def _hires_size_problems(request: GenerationRequest, limits: Limits) -> list[FieldProblem]:
    """The second pass's size within the limits (once the fields are valid)."""
    if request.enable_hr is not True or request.width is None or request.height is None:
        return []
    from avert.pipeline.hires import target

    size = target(request)
    if max(size.cover_width, size.cover_height) <= limits.max_size:
        return []
    name = "hr_scale" if request.hr_resize_x == request.hr_resize_y == 0 else "hr_resize_x"
    return [FieldProblem(name, getattr(request, name), f"must keep the second pass within {limits.max_size} pixels a "
                         f"side ({request.width}x{request.height} enlarged to {size.cover_width}x{size.cover_height})")]


def family_problems(request: GenerationRequest, sdxl: bool) -> list[FieldProblem]:
    """SDXL's fields (a second prompt, the empty negative, the size values) mean something only on an SDXL model;
    negative_prompt_2 is the second encoder's text of negative_prompt, so it needs one."""
    if not sdxl:
        return _unused(request, SDXL_ONLY, "an SDXL model (this model has one text encoder")
    if isinstance(request.negative_prompt_2, str) and request.negative_prompt_2 and not request.negative_prompt:
        return [FieldProblem("negative_prompt_2", request.negative_prompt_2, "applies only with negative_prompt (it "
                             "is negative_prompt's text for the second text encoder): set negative_prompt too")]
    return []


def schedule_problems(request: GenerationRequest, scheduler_config: dict) -> list[FieldProblem]:
    """On a zero-terminal-SNR model, only the samplers whose scheduler rescales its schedule (the others would
    run the model on a schedule it was not trained on)."""
    if not scheduler_config.get("rescale_betas_zero_snr"):
        return []
    from avert.sampling.samplers import zero_snr_samplers

    allowed = zero_snr_samplers()
    return [FieldProblem(name, value, "must be one of the samplers that run a zero-terminal-SNR schedule: "
                         + ", ".join(allowed)) for name, value in (("sampler", request.sampler),
                                                                   ("hr_sampler", request.hr_sampler))
            if isinstance(value, str) and value in SAMPLERS and value not in allowed]


def _unused(request: GenerationRequest, names: tuple[str, ...], needs: str) -> list[FieldProblem]:
    """The fields among `names` that are set (and valid alone) although what they act on is missing."""
    defaults = GenerationRequest()
    return [FieldProblem(name, getattr(request, name), f"applies only with {needs}; leave it at "
                         f"{getattr(defaults, name)} without one)")
            for name in names if getattr(request, name) != getattr(defaults, name)
            and check_field(PARAMS_BY_NAME[name], getattr(request, name), Limits()) is None]  # else named above


def _few_step_problems(request: GenerationRequest) -> list[FieldProblem]:
    """LCM and TCD: at most FEW_STEP_MAX steps (their schedule is cut from 50 steps), and text to image only (their
    img2img and hires schedules are not tested against diffusers)."""
    spec = SAMPLERS.get(request.sampler) if isinstance(request.sampler, str) else None
    if spec is None or not spec.few_step:
        return []
    problems = []
    if isinstance(request.steps, int) and request.steps > FEW_STEP_MAX:
        problems.append(FieldProblem("steps", request.steps, f"must be at most {FEW_STEP_MAX} with sampler "
                                     f"{request.sampler} (its schedule is cut from {FEW_STEP_MAX} steps; 4 to 8 is usual)"))
    if request.init_image is not None or request.enable_hr is True:
        problems.append(FieldProblem("sampler", request.sampler, "must be one of the other samplers for img2img, "
                                     "inpainting and the hires fix (LCM and TCD are text to image only in avert)"))
    return problems


def _schedule_problems(request: GenerationRequest) -> list[FieldProblem]:
    """The schedule type must go with the sampler (and with the hires fix's second-pass sampler)."""
    samplers = [request.sampler] + ([request.hr_sampler] if request.enable_hr is True and request.hr_sampler else [])
    if not (isinstance(request.schedule_type, str) and request.schedule_type in SCHEDULE_TYPES):
        return []
    for sampler in samplers:
        problem = schedule_problem(sampler, request.schedule_type) if isinstance(sampler, str) and sampler in SAMPLERS \
            else None
        if problem:
            return [FieldProblem("schedule_type", request.schedule_type, problem)]
    return []


def _eta_problems(request: GenerationRequest) -> list[FieldProblem]:
    """eta means something only to the samplers that take one (A1111 ignores it for the others; avert names it)."""
    spec = SAMPLERS.get(request.sampler) if isinstance(request.sampler, str) else None
    if request.eta is None or not _has_type(request.eta, float) or spec is None or spec.eta_option is not None:
        return []
    return [FieldProblem("eta", request.eta, f"applies only with the samplers that take eta ({', '.join(ETA_SAMPLERS)}"
                         f"); leave it unset for {request.sampler}")]


METHOD_ONLY = {("apg",): ("apg_eta", "apg_norm_threshold", "apg_momentum", "apg_formulation"),
               ("posterior", "gated"): ("posterior_prior", "posterior_temperature", "posterior_p_max"),
               ("cfg-zero-star",): ("zero_init_steps",),
               ("frequency-decoupled",): ("fdg_guidance_scales", "fdg_parallel_weights"),
               ("magnitude-aware",): ("mambo_alpha",),
               ("pag", "seg", "slg"): ("perturbed_guidance_scale", "perturbed_guidance_layers",
                                       "perturbed_guidance_start", "perturbed_guidance_stop"),
               ("seg",): ("seg_blur_sigma",)}
GUIDER_SCALE = "guides prompt and negatives with cfg_scale alone (diffusers' guidance_scale)"
ONE_SCALE = {"apg": "guides prompt and negatives with cfg_scale alone",
             "gated": "weighs each negative as plain cfg does, by cfg_scale - 1 times its gate",
             "cfg-zero-star": GUIDER_SCALE, "tangential": GUIDER_SCALE, "magnitude-aware": GUIDER_SCALE,
             "frequency-decoupled": "guides with fdg_guidance_scales (or cfg_scale) alone",
             **{kind: "guides the negatives as plain cfg does" for kind in ("pag", "seg", "slg")}}


def _method_problems(request: GenerationRequest, model_guidance: str | None) -> list[FieldProblem]:
    """A method's own options mean nothing to the other methods; apg and gated guide with the one scale
    cfg_scale. A request without `guidance` is checked against its model's method, and the message says so."""
    defaults = GenerationRequest()
    method = request.guidance if request.guidance is not None else model_guidance
    if not isinstance(method, str):  # a bad guidance (check_field names it), or no model yet (`validate`)
        return []
    shown = method if request.guidance is not None else \
        f"{method} (the model's default; set guidance, e.g. cfg, for another)"
    problems = [FieldProblem(name, getattr(request, name), f"applies only with guidance {' or '.join(methods)} "
                             f"(leave it at {getattr(defaults, name)} for guidance {shown})")
                for methods, names in METHOD_ONLY.items() if method not in methods for name in names
                if _has_type(getattr(request, name), PARAMS_BY_NAME[name].type)
                and getattr(request, name) != getattr(defaults, name)]
    own_scale = request.negative_scale is not None and request.negative_scale != request.cfg_scale
    if method in ONE_SCALE and own_scale:
        problems.append(FieldProblem("negative_scale", request.negative_scale, "must be left unset with guidance "
                                     f"{shown}, which {ONE_SCALE[method]}"))
    return problems


def _fdg_scale_problems(request: GenerationRequest, limits: Limits) -> list[FieldProblem]:
    """Each of fdg_guidance_scales (its text already well formed) at most the deployment's cfg_scale limit."""
    scales = request.fdg_guidance_scales
    param = PARAMS_BY_NAME["fdg_guidance_scales"]
    if not isinstance(scales, str) or check_field(param, scales, limits) is not None:
        return []
    high = limits.max_cfg_scale
    if all(float(v) <= high for v in scales.split(",")):
        return []
    return [FieldProblem("fdg_guidance_scales", scales, f"each scale must be at most {high:g} (the cfg_scale limit)")]


def _has_type(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)
