"""Step 2 of the pipeline: a request's prompt and negatives to branch conditioning and a `Guidance` value.

The prompt and every negative go through the same prompt language (AND, schedules, attention, BREAK,
embeddings); each AND part of the prompt is a prompt branch, each AND part of each negative a negative term
with weight = negative weight x part weight and the negative's window. An SDXL model's texts go through both of
its encoders (`avert.conditioning.sdxl`), with `prompt_2` / `negative_prompt_2` in place of the prompt's and the
first negative's text for the second one, and each side gets its size values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avert.conditioning.embeddings import EmbeddingLibrary
from avert.conditioning import sdxl
from avert.conditioning.encode import EncodedText, EncodeOptions, TextEncoding
from avert.conditioning.prompt import ScheduledStates, condition_prompt, encode_prompts, scheduled
from avert.guidance.compose import default_rule
from avert.guidance.guiders import GuiderOptions
from avert.guidance.perturb import DEFAULTS, KINDS as PERTURBATIONS, Perturbation
from avert.guidance.strategy import (EMPTY, Branch, Guidance, Interval, Posterior, Projection, Term,
                                     negative_branch, prompt_branch)
from avert.models.components import Components
from avert.models.lora import without_tags
from avert.pipeline.runtime import Runtime
from avert.prompts.parse import ParsedPrompt, parse_prompt
from avert.request import GenerationRequest
from avert.schema import FALLBACK_GUIDANCE


@dataclass(frozen=True)
class RequestConditioning:
    """Everything the denoiser needs from the text side: states per branch, the empty prompt, the guidance."""

    branches: dict[Branch, ScheduledStates]
    empty: torch.Tensor
    guidance: Guidance
    prompt: ParsedPrompt
    negatives: tuple[ParsedPrompt, ...]
    sizes: sdxl.SizeConditioning | None = None  # SDXL's time_ids of each side


def condition(request: GenerationRequest, components: Components, runtime: Runtime,
              embeddings: EmbeddingLibrary = EmbeddingLibrary()) -> RequestConditioning:
    """Parse, encode (each distinct text once, cached) and assemble the branches of `request`."""
    prompt = parse_prompt(without_tags(request.prompt), request.steps)  # <lora:...> tags: applied, not read
    negatives = tuple(parse_prompt(n.text, request.steps) for n in request.guided_negatives())
    options = EncodeOptions(request.clip_skip, request.emphasis)
    encoding = TextEncoding(components.text_encoder, components.tokenizer, embeddings, options, runtime.device,
                            penultimate=components.is_sdxl)
    encoded = encode_prompts(encoding, (prompt,) + negatives)
    sides = [encoded] * (1 + len(negatives))  # the encodings the prompt and each negative read their texts from
    padding = empty_branch = encoded[""]
    if components.is_sdxl:
        second = TextEncoding(components.text_encoder_2, components.tokenizer_2, embeddings.second(), options,
                              runtime.device, penultimate=True)
        sides, padding, empty_branch = _sdxl_sides(request, components, encoded, second, (prompt,) + negatives)
    empty = padding.states
    branches: dict[Branch, ScheduledStates] = {EMPTY: scheduled([(request.steps, empty_branch)])}
    prompt_parts = condition_prompt(prompt, sides[0])
    for k, part in enumerate(prompt_parts):
        branches[prompt_branch(k)] = part.states
    terms = []
    for group, (negative, parsed) in enumerate(zip(request.guided_negatives(), negatives)):
        for part in condition_prompt(parsed, sides[1 + group]):
            branches[negative_branch(len(terms))] = part.states
            terms.append(Term(negative.weight * part.weight, negative.start, negative.end, group))
    guidance = Guidance(
        scale=request.cfg_scale, method=request.guidance, negative_scale=request.negative_scale,
        prompt_weights=tuple(p.weight for p in prompt_parts), negatives=tuple(terms),
        rescale=request.guidance_rescale, interval=interval(request),
        projection=Projection(request.apg_eta, request.apg_norm_threshold, request.apg_momentum,
                              request.apg_formulation),
        guider=guider_options(request), perturbation=perturbation(request),
        posterior=Posterior(request.posterior_prior, request.posterior_temperature, request.posterior_p_max),
        prediction_type=components.scheduler_config.get("prediction_type", "epsilon"), rule=rule(request),
    )
    sizes = sdxl_sizes(request) if components.is_sdxl else None
    return RequestConditioning(branches, empty, guidance, prompt, negatives, sizes)


def guider_options(request: GenerationRequest) -> GuiderOptions:
    """The diffusers guiders' options of a request (`fdg_guidance_scales` is validated text "10,5")."""
    scales = request.fdg_guidance_scales
    return GuiderOptions(request.zero_init_steps, tuple(float(v) for v in scales.split(",")) if scales else None,
                         request.fdg_parallel_weights, request.mambo_alpha)


def perturbation(request: GenerationRequest) -> Perturbation | None:
    """pag, seg, slg's perturbed branch, unset fields at diffusers' defaults (`avert.guidance.perturb.DEFAULTS`)."""
    if request.guidance not in PERTURBATIONS:
        return None
    scale, start, stop = DEFAULTS[request.guidance]
    value = lambda given, default: default if given is None else given  # noqa: E731
    layers = tuple((request.perturbed_guidance_layers or "mid").split(","))
    return Perturbation(request.guidance, value(request.perturbed_guidance_scale, scale), layers,
                        value(request.perturbed_guidance_start, start), value(request.perturbed_guidance_stop, stop),
                        request.seg_blur_sigma)


def _sdxl_sides(request: GenerationRequest, components: Components, encoded: dict[str, EncodedText],
                second: TextEncoding, parsed: tuple[ParsedPrompt, ...]) -> tuple[list[dict], EncodedText, EncodedText]:
    """Each side's texts (the prompt's, each negative's) joined with their second-encoder texts (`prompt_2` for the
    prompt's, `negative_prompt_2` for the first negative's), the padding chunk (both encoders' "") and the empty
    prompt's branch: the zero tensor or that padding."""
    replacements = [without_tags(request.prompt_2), request.negative_prompt_2] + [""] * (len(parsed) - 2)
    other = second.encode([""] + [t for p in parsed for t in p.texts()] + [r for r in replacements if r])
    blank = sdxl.join(encoded[""], other[""], encoded[""], other[""])
    sides = [{t: sdxl.join(encoded[t], other[r or t], encoded[""], other[""]) for t in p.texts()}
             for p, r in zip(parsed, replacements)]
    return sides, blank, (sdxl.zeros(blank) if empty_negative(request, components) == "zeros" else blank)


def empty_negative(request: GenerationRequest, components: Components) -> str:
    """How an SDXL model's empty negative is conditioned: the request's choice, else the model config's."""
    if request.empty_negative is not None:
        return request.empty_negative
    return "zeros" if components.force_zeros_for_empty_prompt else "encoded"


def sdxl_sizes(request: GenerationRequest) -> sdxl.SizeConditioning:
    """The prompt's and the negative's time_ids from the request's sizes (WIDTHxHEIGHT, TOP,LEFT); the prompt's
    default to the image's size and no crop, the negative's to the prompt's."""
    image = f"{request.width}x{request.height}"
    original = _size(request.original_size or image)
    crop = _crop(request.crop_top_left or "0,0")
    target = _size(request.target_size or image)
    negative = (_size(request.negative_original_size) if request.negative_original_size else original,
                _crop(request.negative_crop_top_left) if request.negative_crop_top_left else crop,
                _size(request.negative_target_size) if request.negative_target_size else target)
    return sdxl.SizeConditioning(sdxl.time_ids(original, crop, target), sdxl.time_ids(*negative))


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(height), int(width)


def _crop(text: str) -> tuple[int, int]:
    top, _, left = text.partition(",")
    return int(top), int(left)


def rule(request: GenerationRequest) -> str:
    """How the guidance adds up several negatives: the request's rule (one text when joined: any rule), else the
    method's own."""
    if request.negatives_rule == "joined":
        return "sum"
    return request.negatives_rule or default_rule(request.guidance or FALLBACK_GUIDANCE)


def interval(request: GenerationRequest) -> Interval:
    return Interval(request.guidance_start, request.guidance_end, request.guidance_sigma_min,
                    request.guidance_sigma_max, request.s_min_uncond, request.s_min_uncond_all,
                    request.guidance_reuse)
