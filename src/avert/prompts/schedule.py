"""Prompt editing and alternation over the steps of a run, with AUTOMATIC1111's semantics.

`[from:to:when]` shows `from` up to step `when`, then `to`; `[to:when]` adds `to` after `when`; `[from::when]`
removes `from` after `when`. `when` with a "." is a fraction of the run (0.5 of 20 steps = step 10), else an
absolute step. `[a|b|c]` alternates every step (empty options allowed). Nesting works. Text that does not parse
is used literally for the whole run.

The grammar is A1111's, parsed with `lark` (Earley), so ambiguous inputs resolve as they do there.

    >>> schedule("a [b:3]", 10)
    (ScheduleEntry(end_step=3, text='a '), ScheduleEntry(end_step=10, text='a b'))

An entry holds from the previous entry's end (exclusive) to its own `end_step` (inclusive), counted as A1111
counts: the entry used at 0-based sampling step s is the first whose `end_step >= s`.

Bounded work. The Earley parse of A1111's ambiguous grammar grows steeply with the number of bracket tokens
(910 `(a:1.1), ` took minutes), so the grammar is applied only where it can change anything: a text with no
`[` stands for itself, and a text whose brackets balance is cut after each comma outside any bracket into
pieces parsed one by one (their entries merged; the same result as the whole parse, tested on thousands of
random texts). What still goes to the parser is held to `MAX_PIECE_TOKENS` bracket, colon and bar
characters a piece and `MAX_PARSED_TOKENS` in all; beyond them `PromptTooComplex` names the limit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

import lark

_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


MAX_PIECE_TOKENS = 64  # bracket, colon and bar characters in one piece the parser sees (about 0.2 s at most)
MAX_PARSED_TOKENS = 256  # the same over all such pieces of one text
_SPECIAL = frozenset("()[]:|")
_CLOSER = {"(": ")", "[": "]"}


class PromptTooComplex(ValueError):
    """A prompt whose schedule syntax would take the parser too long; the message says what to change."""


@dataclass(frozen=True)
class ScheduleEntry:
    """The prompt text in force up to and including sampling step `end_step`."""

    end_step: int
    text: str


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark(_GRAMMAR)


@functools.lru_cache(maxsize=256)
def schedule(text: str, steps: int) -> tuple[ScheduleEntry, ...]:
    """The texts `text` stands for over a run of `steps` steps, one entry per change.

    Raises `PromptTooComplex` when the schedule syntax is over the parser's budget (see the module docstring)."""
    check_parser_load(parser_load(text))
    pieces = _pieces_of(text)
    parsed = [p for p in pieces if _needs_parser(p)]
    if len(pieces) == 1:
        return _schedule_whole(text, steps) if parsed else (ScheduleEntry(steps, text),)
    schedules = [_schedule_piece(p, steps) if _needs_parser(p) else (ScheduleEntry(steps, p),) for p in pieces]
    if any(s is None for s in schedules):
        return (ScheduleEntry(steps, text),)  # a piece that does not parse: the whole text literally, as A1111
    ends = sorted({e.end_step for s in schedules for e in s})
    texts: dict[str, str] = {}
    return tuple(ScheduleEntry(t, texts.setdefault(joined, joined))
                 for t in ends for joined in ["".join(_at(s, t) for s in schedules)])


def parser_load(text: str) -> tuple[int, ...]:
    """The bracket, colon and bar characters of each piece of `text` that goes to the parser (linear time)."""
    return tuple(sum(c in _SPECIAL for c in p) for p in _pieces_of(text) if _needs_parser(p))


def check_parser_load(counts: tuple[int, ...]) -> None:
    """Raise `PromptTooComplex` when the pieces' counts are over the parser's budget."""
    if any(n > MAX_PIECE_TOKENS for n in counts) or sum(counts) > MAX_PARSED_TOKENS:
        raise PromptTooComplex(
            f"must have at most {MAX_PIECE_TOKENS} bracket, colon and bar characters in one stretch between commas "
            f"and {MAX_PARSED_TOKENS} in all stretches the parser reads (this has {max(counts)} and {sum(counts)}), "
            "so that [from:to:when] and [a|b] parse in bounded time: separate them with commas, close every "
            "bracket (a text whose brackets do not balance is parsed whole), or escape literal brackets as \\[ \\]")


def _needs_parser(piece: str) -> bool:
    """Only `[` starts a schedule; a `|` outside one, a backslash at the end or before a line break are what else
    can make the parse fail (and so the whole text literal). A piece with none of them stands for itself, so
    escaped brackets (`\\(artist\\)`) cost the parser nothing."""
    return "[" in piece or "|" in piece or piece.endswith("\\") or "\\\n" in piece


def _schedule_whole(text: str, steps: int) -> tuple[ScheduleEntry, ...]:
    """The whole-text parse (A1111's); the text literally where it does not parse."""
    return _schedule_piece(text, steps) or (ScheduleEntry(steps, text),)


def _schedule_piece(text: str, steps: int) -> tuple[ScheduleEntry, ...] | None:
    """The parse of one piece, or None where it does not parse."""
    try:
        tree = _parser().parse(text)
    except lark.exceptions.LarkError:
        return None
    return tuple(ScheduleEntry(t, _text_at(tree, t)) for t in _change_steps(tree, steps))


def _at(entries: tuple[ScheduleEntry, ...], step: int) -> str:
    """The text in force at `step`; every piece's schedule runs to the last step, so one is."""
    return next(e.text for e in entries if step <= e.end_step)


def _pieces_of(text: str) -> list[str]:
    """`text` cut after each comma outside any bracket, when its brackets balance (escapes skipped); else whole."""
    pieces, stack, start, i = [], [], 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c in _CLOSER:
            stack.append(_CLOSER[c])
        elif c in ")]" and (not stack or stack.pop() != c):
            return [text]
        elif c == "," and not stack:
            pieces.append(text[start:i + 1])
            start = i + 1
        i += 1
    if stack:
        return [text]
    pieces.append(text[start:])
    return [p for p in pieces if p] or [text]


def _change_steps(tree: lark.Tree, steps: int) -> list[int]:
    """The steps at which the text may change: every `when` (resolved in the tree), every step if alternating."""
    found = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            when = _resolve_when(str(node.children[-2]), steps)
            node.children[-2] = when
            if when >= 1:
                found.add(when)
        elif node.data == "alternate":
            found.update(range(1, steps + 1))
    return sorted(found)


def _resolve_when(number: str, steps: int) -> int:
    value = float(number)
    return min(steps, int(value * steps if "." in number else value))


def _text_at(tree: lark.Tree, step: int) -> str:
    return "".join(_pieces(tree, step))


def _pieces(node, step: int) -> Iterator[str]:
    if isinstance(node, lark.Token):
        yield str(node)
    elif node is None:
        return
    elif node.data == "scheduled":
        before, after, _, when, _ = node.children
        yield from _pieces(before if step <= when else after, step)
    elif node.data == "alternate":
        options = node.children
        yield from _pieces(options[(step - 1) % len(options)], step)
    else:  # the prompt, an emphasis, or plain text (its one token)
        for child in node.children:
            yield from _pieces(child, step)
