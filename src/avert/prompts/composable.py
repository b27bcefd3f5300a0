"""Composable prompts: `AND` splits a prompt into sub-prompts, each with an optional `:weight`.

Liu et al., "Compositional Visual Generation with Composable Diffusion Models" (ECCV 2022), as AUTOMATIC1111
writes it: `a cat AND a dog :0.5`. In guidance each sub-prompt k adds w * a_k (e_k - e_u) (see
`avert.guidance`); A1111 allows AND only in the prompt, avert in the negative too.

    >>> split_and("a cat AND a dog :0.5")
    (SubPrompt(text='a cat', weight=1.0), SubPrompt(text=' a dog', weight=0.5))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


@dataclass(frozen=True)
class SubPrompt:
    text: str
    weight: float = 1.0


def split_and(text: str) -> tuple[SubPrompt, ...]:
    """The sub-prompts of `text`; a text without AND is one sub-prompt of weight 1."""
    return tuple(_weighted(part) for part in _AND.split(text))


def _weighted(part: str) -> SubPrompt:
    text, weight = _WEIGHT.search(part).groups()  # the pattern matches every text (its weight is optional)
    return SubPrompt(text, float(weight) if weight is not None else 1.0)
