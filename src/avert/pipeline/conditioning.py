"""Step 2 of the pipeline: a request's prompt and negatives to branch conditioning and a `Guidance` value.

The prompt and every negative go through the same prompt language (AND, schedules, attention, BREAK,
embeddings); each AND part of the prompt is a prompt branch, each AND part of each negative a negative term
with weight = negative weight x part weight and the negative's window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avert.conditioning.embeddings import EmbeddingLibrary
from avert.conditioning.encode import EncodeOptions, TextEncoding
from avert.conditioning.prompt import ScheduledStates, condition_prompt, encode_prompts
from avert.guidance.compose import default_rule
from avert.guidance.strategy import (EMPTY, Branch, Guidance, Interval, Posterior, Projection, Term,
                                     negative_branch, prompt_branch)
from avert.models.components import Components
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


def condition(request: GenerationRequest, components: Components, runtime: Runtime,
              embeddings: EmbeddingLibrary = EmbeddingLibrary()) -> RequestConditioning:
    """Parse, encode (each distinct text once, cached) and assemble the branches of `request`."""
    prompt = parse_prompt(request.prompt, request.steps)
    negatives = tuple(parse_prompt(n.text, request.steps) for n in request.guided_negatives())
    encoding = TextEncoding(components.text_encoder, components.tokenizer, embeddings,
                            EncodeOptions(request.clip_skip, request.emphasis), runtime.device)
    encoded = encode_prompts(encoding, (prompt,) + negatives)
    empty = encoded[""].states
    branches: dict[Branch, ScheduledStates] = {EMPTY: ScheduledStates(((request.steps, empty),))}
    prompt_parts = condition_prompt(prompt, encoded)
    for k, part in enumerate(prompt_parts):
        branches[prompt_branch(k)] = part.states
    terms = []
    for group, (negative, parsed) in enumerate(zip(request.guided_negatives(), negatives)):
        for part in condition_prompt(parsed, encoded):
            branches[negative_branch(len(terms))] = part.states
            terms.append(Term(negative.weight * part.weight, negative.start, negative.end, group))
    guidance = Guidance(
        scale=request.cfg_scale, method=request.guidance, negative_scale=request.negative_scale,
        prompt_weights=tuple(p.weight for p in prompt_parts), negatives=tuple(terms),
        rescale=request.guidance_rescale, interval=interval(request),
        projection=Projection(request.apg_eta, request.apg_norm_threshold, request.apg_momentum),
        posterior=Posterior(request.posterior_prior, request.posterior_temperature, request.posterior_p_max),
        prediction_type=components.scheduler_config.get("prediction_type", "epsilon"), rule=rule(request),
    )
    return RequestConditioning(branches, empty, guidance, prompt, negatives)


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
