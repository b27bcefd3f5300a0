"""Attention weights in a prompt, with AUTOMATIC1111's semantics.

`(x)` multiplies the weight of x by 1.1, `[x]` divides it by 1.1, `(x:w)` multiplies it by w; `\\(`, `\\)`,
`\\[`, `\\]` and `\\\\` are literal; brackets left open apply to the end of the text, stray closing ones are
literal; `BREAK` (a word of its own, in capitals) becomes the `BREAK` marker; neighbouring fragments of equal
weight merge.

    >>> parse_attention("an (important) word")
    (Fragment(text='an ', weight=1.0), Fragment(text='important', weight=1.1), Fragment(text=' word', weight=1.0))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND = 1.1
SQUARE = 1 / 1.1

_TOKEN = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\      # escapes (a lone backslash is dropped)
    |\(|\[                          # openers
    |:\s*([+-]?[.\d]+)\s*\)          # ':1.3)' closes a round bracket with an explicit weight
    |\)|]                           # closers
    |[^\\()\[\]:]+                  # plain text
    |:                              # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text and the weight its tokens get; `BREAK` is `Fragment("BREAK", -1.0)`."""

    text: str
    weight: float

    @property
    def is_break(self) -> bool:
        return self == BREAK


BREAK = Fragment("BREAK", -1.0)


def parse_attention(text: str) -> tuple[Fragment, ...]:
    """Split `text` into weighted fragments (see the module docstring); never fails."""
    parts: list[list] = []  # [text, weight] pairs, weights multiplied in place as brackets close
    round_open: list[int] = []
    square_open: list[int] = []
    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            _multiply(parts, round_open.pop(), _number(weight))
        elif token == ")" and round_open:
            _multiply(parts, round_open.pop(), ROUND)
        elif token == "]" and square_open:
            _multiply(parts, square_open.pop(), SQUARE)
        else:
            _append_plain(parts, token)
    for start in round_open:
        _multiply(parts, start, ROUND)
    for start in square_open:
        _multiply(parts, start, SQUARE)
    return _merge(parts or [["", 1.0]])


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # e.g. "1.2.3": A1111 raises here; we treat the weight as absent (1.0)
        return 1.0


def _multiply(parts: list[list], start: int, factor: float) -> None:
    for part in parts[start:]:
        part[1] *= factor


def _append_plain(parts: list[list], token: str) -> None:
    for i, piece in enumerate(_BREAK.split(token)):
        if i:
            parts.append([BREAK.text, BREAK.weight])
        parts.append([piece, 1.0])


def _merge(parts: list[list]) -> tuple[Fragment, ...]:
    merged: list[list] = [list(parts[0])]
    for text, weight in parts[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return tuple(Fragment(t, w) for t, w in merged)
