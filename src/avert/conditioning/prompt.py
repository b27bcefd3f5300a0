"""Parsed prompts to conditioning over the run: for each AND part, its hidden states at every step.

Prompt and negatives are handled alike. Branches evaluated together at a step are padded to the same number
of chunks by the denoiser (`avert.guidance.denoiser`), so a 150-token negative next to a short prompt never
fails (A1111 #11057) and one batched forward serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from avert.conditioning.encode import EncodedText, TextEncoding
from avert.prompts.parse import ParsedPrompt


@dataclass(frozen=True)
class ScheduledStates:
    """Hidden states [tokens, dim] in force up to and including each `end_step` (0-based sampling steps)."""

    entries: tuple[tuple[int, torch.Tensor], ...]

    def at(self, step: int) -> torch.Tensor:
        for end_step, states in self.entries:
            if step <= end_step:
                return states
        return self.entries[-1][1]


@dataclass(frozen=True)
class PartConditioning:
    """One AND part of a prompt: its weight and its states over the run."""

    weight: float
    states: ScheduledStates


def condition_prompt(parsed: ParsedPrompt, encoded: dict[str, EncodedText]) -> tuple[PartConditioning, ...]:
    """The conditioning of every AND part of `parsed`, from texts already encoded."""
    return tuple(
        PartConditioning(part.weight, ScheduledStates(tuple((e.end_step, encoded[e.text].states)
                                                            for e in part.entries)))
        for part in parsed.parts
    )


def encode_prompts(encoding: TextEncoding, parsed: Sequence[ParsedPrompt]) -> dict[str, EncodedText]:
    """Every text any step of any prompt needs, plus the empty prompt (padding), encoded once in one forward."""
    texts = [""] + [t for p in parsed for t in p.texts()]
    return encoding.encode(texts)
