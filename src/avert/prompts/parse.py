"""A prompt parsed whole: AND sub-prompts, each scheduled over the run, each schedule entry weighted.

This is the value the conditioning step consumes, for the prompt and every negative alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from avert.prompts.attention import Fragment, parse_attention
from avert.prompts.composable import split_and
from avert.prompts.schedule import check_parser_load, parser_load, schedule


@dataclass(frozen=True)
class ScheduledText:
    """One schedule entry: the text in force up to `end_step` (inclusive) and its weighted fragments."""

    end_step: int
    text: str
    fragments: tuple[Fragment, ...]


@dataclass(frozen=True)
class ScheduledPrompt:
    """One AND sub-prompt: its composition weight and its schedule (never empty)."""

    weight: float
    entries: tuple[ScheduledText, ...]

    def at(self, step: int) -> ScheduledText:
        """The entry in force at 0-based sampling step `step` (A1111: the first with end_step >= step)."""
        for entry in self.entries:
            if step <= entry.end_step:
                return entry
        return self.entries[-1]

    @property
    def is_static(self) -> bool:
        return len({e.text for e in self.entries}) == 1


@dataclass(frozen=True)
class ParsedPrompt:
    """A whole prompt or negative: its sub-prompts (one unless it uses AND)."""

    text: str
    steps: int
    parts: tuple[ScheduledPrompt, ...]

    def texts(self) -> tuple[str, ...]:
        """Every distinct text any step of any sub-prompt needs encoded."""
        return tuple(dict.fromkeys(e.text for p in self.parts for e in p.entries))


def parse_prompt(text: str, steps: int) -> ParsedPrompt:
    """Parse `text` for a run of `steps` steps: AND, schedules, attention.

    Raises `PromptTooComplex` when its schedule syntax, over all AND parts, is over the parser's budget."""
    pieces = [(s.text, s.weight) for s in split_and(text)]
    check_parser_load(tuple(n for t, _ in pieces for n in parser_load(t)))
    return ParsedPrompt(text, steps, tuple(_scheduled(t, w, steps) for t, w in pieces))


def count_parts(text: str) -> int:
    """The AND parts of `text` (each a branch of the model evaluation), without parsing anything else."""
    return len(split_and(text))


def _scheduled(text: str, weight: float, steps: int) -> ScheduledPrompt:
    entries = tuple(ScheduledText(e.end_step, e.text, _attention(e.text)) for e in schedule(text, steps))
    return ScheduledPrompt(weight, entries)


@functools.lru_cache(maxsize=1024)
def _attention(text: str) -> tuple[Fragment, ...]:
    return parse_attention(text)
