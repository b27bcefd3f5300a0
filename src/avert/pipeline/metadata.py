"""Metadata of a generated image: A1111's `parameters` infotext and avert's structured record."""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from avert import __version__
from avert.errors import AvertError
from avert.models.components import ModelSource
from avert.output.maps import small_map
from avert.output.pnginfo import ParsedParameters, format_parameters
from avert.request import GenerationRequest, Negative
from avert.sampling.samplers import AUTOMATIC, SAMPLERS

RECORD_FORMAT = 1


def infotext(request: GenerationRequest, seed: int, model: ModelSource, loras: tuple[tuple[str, str], ...] = ()) -> str:
    """The A1111 `parameters` text for one image of `request`, rendered with `seed`; `loras` the (name, hash) of the
    LoRAs its prompt's tags applied, written as A1111 writes them (`Lora hashes: "name: hash, ..."`)."""
    params = (
        ("Steps", request.steps),
        ("Sampler", request.sampler),
        *((("Schedule type", request.schedule_type),) if request.schedule_type != AUTOMATIC else ()),
        ("CFG scale", request.cfg_scale),
        ("Seed", seed),
        ("Size", f"{request.width}x{request.height}"),
        ("Model hash", model.hash),
        ("Model", model.name),
        *img2img_params(request),
        *hires_params(request),
        *eta_params(request),
        *guidance_params(request),
        *((("Lora hashes", ", ".join(f"{n}: {h}" for n, h in loras)),) if loras else ()),  # quoted as A1111 does
        ("Version", f"avert {__version__}"),
    )
    return format_parameters(request.prompt, negative_line(request), params)


# request field -> (infotext key, type); written only when not the default. "Clip skip", "NGMS", "NGMS all steps"
# and "Tiling" are A1111's own keys; the others are avert's.
EXTRA_KEYS = {
    "negative_scale": ("Negative scale", float),
    "guidance": ("Guidance", str),
    "negatives_rule": ("Negatives rule", str),  # written only with several negatives
    "apg_eta": ("APG eta", float),
    "apg_norm_threshold": ("APG norm threshold", float),
    "apg_momentum": ("APG momentum", float),
    "apg_formulation": ("APG formulation", str),
    "zero_init_steps": ("Zero init steps", int),
    "fdg_guidance_scales": ("FDG guidance scales", str),
    "fdg_parallel_weights": ("FDG parallel weights", float),
    "mambo_alpha": ("MAMBO alpha", float),
    "perturbed_guidance_scale": ("Perturbed guidance scale", float),
    "perturbed_guidance_layers": ("Perturbed guidance layers", str),
    "perturbed_guidance_start": ("Perturbed guidance start", float),
    "perturbed_guidance_stop": ("Perturbed guidance stop", float),
    "seg_blur_sigma": ("SEG blur sigma", float),
    "posterior_prior": ("Posterior prior", float),
    "posterior_temperature": ("Posterior temperature", float),
    "posterior_p_max": ("Posterior p max", float),
    "guidance_rescale": ("Guidance rescale", float),
    "guidance_start": ("Guidance start", float),
    "guidance_end": ("Guidance end", float),
    "guidance_sigma_min": ("Guidance sigma min", float),
    "guidance_sigma_max": ("Guidance sigma max", float),
    "s_min_uncond": ("NGMS", float),
    "s_min_uncond_all": ("NGMS all steps", bool),
    "guidance_reuse": ("Guidance reuse", bool),
    "nag_scale": ("NAG scale", float),
    "nag_tau": ("NAG tau", float),
    "nag_alpha": ("NAG alpha", float),
    "nag_end": ("NAG end", float),
    "tiling": ("Tiling", bool),
    "clip_skip": ("Clip skip", int),
    "emphasis": ("Emphasis", str),
    # SDXL (avert's keys; A1111 writes none of these)
    "prompt_2": ("Prompt 2", str),
    "negative_prompt_2": ("Negative prompt 2", str),
    "empty_negative": ("Empty negative", str),
    "original_size": ("Original size", str),
    "crop_top_left": ("Crop top left", str),
    "target_size": ("Target size", str),
    "negative_original_size": ("Negative original size", str),
    "negative_crop_top_left": ("Negative crop top left", str),
    "negative_target_size": ("Negative target size", str),
}
NEGATIVES_KEY = "Negatives"
A1111_REQUEST = GenerationRequest(guidance="cfg")  # what an infotext without avert's keys was made with


def negative_line(request: GenerationRequest) -> str:
    """The A1111 `Negative prompt:` text: the classic negative, or all negatives' texts when there are several
    (what A1111 would do with them as one; the exact list is in the `Negatives` parameter)."""
    if not request.negatives:
        return request.negative_prompt
    return ", ".join(n.text for n in request.all_negatives() if n.text)


def img2img_params(request: GenerationRequest) -> tuple[tuple[str, object], ...]:
    """A1111's "Denoising strength" (and "Noise multiplier" when not 1) of an img2img image, and avert's "Resize
    mode" where it is not the default;
    the inpainting keys of an image with a mask."""
    if request.init_image is None:
        return ()
    mode = (("Resize mode", request.resize_mode),) if request.resize_mode != A1111_REQUEST.resize_mode else ()
    noise = ((NOISE_MULTIPLIER, request.initial_noise_multiplier),) if request.initial_noise_multiplier != 1.0 else ()
    return (("Denoising strength", request.strength), *noise, *mode, *mask_params(request))


def hires_params(request: GenerationRequest) -> tuple[tuple[str, object], ...]:
    """The keys A1111 writes for the hires fix: "Denoising strength", "Hires upscale" (or "Hires resize: WxH"),
    "Hires steps" when set, "Hires upscaler", and "Hires sampler", "Hires prompt", "Hires negative prompt" where they
    differ from the first pass's."""
    if not request.enable_hr:
        return ()
    resized = request.hr_resize_x or request.hr_resize_y
    params: list[tuple[str, object]] = [
        ("Denoising strength", request.strength),
        ("Hires resize", f"{request.hr_resize_x}x{request.hr_resize_y}") if resized else ("Hires upscale", request.hr_scale)]
    if request.hr_second_pass_steps:
        params.append(("Hires steps", request.hr_second_pass_steps))
    params.append(("Hires upscaler", request.hr_upscaler))
    for key, name, first in (("Hires sampler", "hr_sampler", "sampler"), ("Hires prompt", "hr_prompt", "prompt"),
                             ("Hires negative prompt", "hr_negative_prompt", "negative_prompt")):
        if getattr(request, name) and getattr(request, name) != getattr(request, first):
            params.append((key, getattr(request, name)))
    return tuple(params)


def hires_fields(parsed: ParsedParameters) -> dict:
    """The hires fix's fields of an A1111 infotext: present when it has "Denoising strength" and one of the hires
    size or upscaler keys (A1111's own test)."""
    if not parsed.get("Denoising strength") or not any(parsed.get(k) for k in ("Hires upscale", "Hires resize",
                                                                                "Hires upscaler")):
        return {}
    changes: dict = {"enable_hr": True, "strength": convert_value(parsed.get("Denoising strength"), float)}
    if parsed.get("Hires upscale"):
        changes["hr_scale"] = convert_value(parsed.get("Hires upscale"), float)
    resize = parsed.get("Hires resize") or ""
    if "x" in resize:
        x, _, y = resize.partition("x")
        changes.update(hr_resize_x=convert_value(x, int), hr_resize_y=convert_value(y, int))
    for key, name, kind in (("Hires steps", "hr_second_pass_steps", int), ("Hires upscaler", "hr_upscaler", str),
                            ("Hires sampler", "hr_sampler", str), ("Hires prompt", "hr_prompt", str),
                            ("Hires negative prompt", "hr_negative_prompt", str)):
        if parsed.get(key):
            changes[name] = convert_value(parsed.get(key), kind)
    return changes


FILL_KEYS = {"fill": "fill", "latent noise": "latent noise", "latent nothing": "latent nothing"}  # original: none
INVERTED = "Inpaint not masked"
NOISE_MULTIPLIER = "Noise multiplier"
BLUR_Y = "Mask blur y"


def mask_params(request: GenerationRequest) -> tuple[tuple[str, object], ...]:
    """The keys A1111 writes for inpainting ("Mask blur" above 0, "Inpaint area" and "Masked area padding" when only
    the masked area is rendered, "Masked content" but for original, "Mask mode" when inverted) and avert's
    "Mask blur y" when the vertical blur differs, "Mask round" / "Overlay inpaint" when off."""
    if request.mask is None:
        return ()
    params: list[tuple[str, object]] = [("Mask blur", request.mask_blur)] if request.mask_blur > 0 else []
    if request.mask_blur_y is not None and request.mask_blur_y != request.mask_blur:
        params.append((BLUR_Y, request.mask_blur_y))  # avert's: A1111 writes no blur when x and y differ
    if request.inpaint_full_res:
        params += [("Inpaint area", "Only masked"), ("Masked area padding", request.inpaint_full_res_padding)]
    if request.inpainting_fill in FILL_KEYS:
        params.append(("Masked content", FILL_KEYS[request.inpainting_fill]))
    if request.inpainting_mask_invert:
        params.append(("Mask mode", INVERTED))
    params += [(key, False) for key, name in (("Mask round", "mask_round"), ("Overlay inpaint", "overlay_inpaint"))
               if not getattr(request, name)]
    return tuple(params)


def mask_fields(parsed: ParsedParameters) -> dict:
    """The inpainting fields of an infotext with A1111's keys (a record with "Mask blur" etc.). Without "Mask blur",
    A1111 wrote none (blur 0) only when there was a mask; the caller knows whether there is one."""
    changes: dict = {"mask_blur": convert_value(parsed.get("Mask blur") or "0", int)}
    if parsed.get(BLUR_Y):
        changes["mask_blur_y"] = convert_value(parsed.get(BLUR_Y), int)
    if parsed.get("Inpaint area") == "Only masked":
        changes["inpaint_full_res"] = True
        if parsed.get("Masked area padding"):
            changes["inpaint_full_res_padding"] = convert_value(parsed.get("Masked area padding"), int)
    content = parsed.get("Masked content")
    changes["inpainting_fill"] = content if content else "original"
    if parsed.get("Mask mode") == INVERTED:
        changes["inpainting_mask_invert"] = True
    for key, name in (("Mask round", "mask_round"), ("Overlay inpaint", "overlay_inpaint")):
        if parsed.get(key):
            changes[name] = convert_value(parsed.get(key), bool)
    return changes


ETA_KEYS = {"eta_ancestral": "Eta", "eta_ddim": "Eta DDIM"}  # A1111's infotext key per eta option


def eta_params(request: GenerationRequest) -> tuple[tuple[str, object], ...]:
    """A1111's "Eta" (ancestral and SDE samplers) or "Eta DDIM", written as A1111 writes them: only where the
    sampler takes eta and it differs from the option's default (1, DDIM 0)."""
    spec = SAMPLERS.get(request.sampler)
    if spec is None or spec.eta_option is None or request.eta is None or request.eta == spec.default_eta:
        return ()
    return ((ETA_KEYS[spec.eta_option], request.eta),)


def guidance_params(request: GenerationRequest) -> tuple[tuple[str, object], ...]:
    """The extra keys whose value differs from A1111's; "Guidance" is written for any method but cfg."""
    defaults = A1111_REQUEST
    several = len(request.all_negatives()) > 1
    params = [(key, getattr(request, name)) for name, (key, _) in EXTRA_KEYS.items()
              if getattr(request, name) != getattr(defaults, name) and (several or name != "negatives_rule")]
    if request.negatives:
        negatives = [dataclasses.asdict(n) for n in request.all_negatives()]
        params.append((NEGATIVES_KEY, json.dumps(negatives, ensure_ascii=False)))
    return tuple(params)


def record(request: GenerationRequest, seed: int, index: int, model: ModelSource, maps: Sequence = (),
           carried_by: Sequence[str] = ()) -> dict:
    """The structured record: the full request, this image's index and seed, and the model's name and hash;
    with maps (`avert.pipeline.result.NegativeMap`), a small version of each under "negative_maps"
    (`avert.output.maps.small_map`, with the negative's text); per negative, what carried it ("negatives_carried_by":
    the guidance method's UNet branch, "nag" in attention, both, or "none").

    `request.replace(seed=seed, batch_size=1)` re-makes exactly this image (see `request_from_record`).
    """
    made = {
        "format": RECORD_FORMAT,
        "generator": f"avert {__version__}",
        "request": request.to_dict(),
        "image_index": index,
        "seed": seed,
        "model": {"name": model.name, "hash": model.hash, "kind": model.kind},
    }
    if maps:
        made["negative_maps"] = [{"negative": m.negative, **small_map(m.values)} for m in maps]
    if carried_by:
        made["negatives_carried_by"] = list(carried_by)
    return made


def request_from_record(data: dict) -> GenerationRequest:
    """The request that re-makes the one image a record describes."""
    return GenerationRequest.from_dict(data["request"]).replace(seed=int(data["seed"]), batch_size=1)


def request_from_a1111(parsed: ParsedParameters, img2img: bool = False, inpainting: bool = False) -> GenerationRequest:
    """A request from an A1111 infotext (an image made elsewhere): prompt, negative and the settings we share;
    with `img2img` (the caller has the init image) its "Denoising strength", with `inpainting` its mask's keys.

    Without a "Guidance" key the image was made with plain CFG (A1111's, or avert's cfg, which is not written),
    so the request names cfg rather than leaving the method to the model that re-makes it.

    Values that do not convert are passed through as text, so validation names them.
    """
    request = A1111_REQUEST.replace(prompt=parsed.prompt, negative_prompt=parsed.negative_prompt, batch_size=1)
    fields = {"Steps": ("steps", int), "Sampler": ("sampler", str), "CFG scale": ("cfg_scale", float),
              "Seed": ("seed", int)}
    changes = {name: convert_value(parsed.get(key), kind) for key, (name, kind) in fields.items() if parsed.get(key)}
    changes.update(_schedule_fields(parsed, changes.get("sampler")))
    changes.update(_extra_fields(parsed))
    changes.update(_eta_field(parsed, changes.get("sampler", request.sampler)))
    if not img2img:
        changes.update(hires_fields(parsed))
    if img2img and parsed.get("Denoising strength"):
        changes["strength"] = convert_value(parsed.get("Denoising strength"), float)
    if img2img and parsed.get(NOISE_MULTIPLIER):
        changes["initial_noise_multiplier"] = convert_value(parsed.get(NOISE_MULTIPLIER), float)
    if img2img and parsed.get("Resize mode"):
        changes["resize_mode"] = parsed.get("Resize mode")
    if img2img and inpainting:
        changes.update(mask_fields(parsed))
    size = parsed.get("Size")
    if size and "x" in size:
        width, _, height = size.partition("x")
        changes.update(width=convert_value(width, int), height=convert_value(height, int))
    return request.replace(**changes)


def _schedule_fields(parsed: ParsedParameters, sampler: object) -> dict:
    """A1111 1.9+ writes the schedule apart ("Schedule type: Karras"): with a sampler that has a Karras name it
    is that sampler (as earlier A1111 named it), else the schedule type; Automatic, or none, is the sampler's own."""
    schedule = parsed.get("Schedule type")
    if not schedule or schedule == AUTOMATIC:
        return {}
    if schedule == "Karras" and isinstance(sampler, str) and f"{sampler} Karras" in SAMPLERS:
        return {"sampler": f"{sampler} Karras"}
    return {"schedule_type": schedule}


def _extra_fields(parsed: ParsedParameters) -> dict:
    """avert's guidance settings and A1111's Clip skip / NGMS, as request fields; `Negatives` restores the list."""
    changes = {}
    for name, (key, kind) in EXTRA_KEYS.items():
        text = parsed.get(key)
        if text is not None:
            changes[name] = convert_value(text, kind)
    if parsed.get(NEGATIVES_KEY):
        try:
            negatives = tuple(Negative.from_value(n) for n in json.loads(parsed.get(NEGATIVES_KEY)))
        except (ValueError, TypeError) as exc:
            raise AvertError(f"infotext: the Negatives parameter is not a readable list ({exc})") from None
        changes.update(negative_prompt="", negatives=negatives)
        changes.setdefault("negatives_rule", "sum")  # written before the rules existed: the sum made the image
    return changes


def _eta_field(parsed: ParsedParameters, sampler: object) -> dict:
    """eta from the key A1111 writes for the sampler ("Eta", or "Eta DDIM" for DDIM); the other key is not the
    sampler's and A1111 would not apply it."""
    spec = SAMPLERS.get(sampler) if isinstance(sampler, str) else None
    text = parsed.get(ETA_KEYS[spec.eta_option]) if spec is not None and spec.eta_option else None
    return {"eta": convert_value(text, float)} if text else {}


def convert_value(text: str, kind: type):
    """An infotext value as `kind`, or the text itself where it does not convert (validation then names it).
    A1111 writes booleans as True / False."""
    if kind is bool:
        return {"true": True, "false": False}.get(text.strip().lower(), text)
    try:
        return kind(text)
    except ValueError:
        return text
