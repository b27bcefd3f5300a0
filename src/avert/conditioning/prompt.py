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
    """Hidden states [tokens, dim] in force up to and including each `end_step` (0-based sampling steps), and for
    SDXL the pooled projection [dim] of each entry's text."""

    entries: tuple[tuple[int, torch.Tensor], ...]
    pooled: tuple[torch.Tensor, ...] = ()

    def at(self, step: int) -> torch.Tensor:
        return self.entries[self._index(step)][1]

    def pooled_at(self, step: int) -> torch.Tensor:
        return self.pooled[self._index(step)]

    def _index(self, step: int) -> int:
        for k, (end_step, _) in enumerate(self.entries):
            if step <= end_step:
                return k
        return len(self.entries) - 1


@dataclass(frozen=True)
class PartConditioning:
    """One AND part of a prompt: its weight and its states over the run."""

    weight: float
    states: ScheduledStates


def condition_prompt(parsed: ParsedPrompt, encoded: dict[str, EncodedText]) -> tuple[PartConditioning, ...]:
    """The conditioning of every AND part of `parsed`, from texts already encoded."""
    return tuple(PartConditioning(part.weight, scheduled([(e.end_step, encoded[e.text]) for e in part.entries]))
                 for part in parsed.parts)


def scheduled(entries: Sequence[tuple[int, EncodedText]]) -> ScheduledStates:
    """Encoded texts in force up to each end step, with their pooled projections where every one has one."""
    pooled = tuple(e.pooled for _, e in entries)
    return ScheduledStates(tuple((end, e.states) for end, e in entries),
                           pooled if all(p is not None for p in pooled) else ())


def encode_prompts(encoding: TextEncoding, parsed: Sequence[ParsedPrompt]) -> dict[str, EncodedText]:
    """Every text any step of any prompt needs, plus the empty prompt (padding), encoded once in one forward."""
    texts = [""] + [t for p in parsed for t in p.texts()]
    return encoding.encode(texts)
