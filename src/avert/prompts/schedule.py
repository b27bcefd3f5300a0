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


@dataclass(frozen=True)
class ScheduleEntry:
    """The prompt text in force up to and including sampling step `end_step`."""

    end_step: int
    text: str


@functools.cache
def _parser() -> lark.Lark:
    return lark.Lark(_GRAMMAR)


@functools.lru_cache(maxsize=1024)
def schedule(text: str, steps: int) -> tuple[ScheduleEntry, ...]:
    """The texts `text` stands for over a run of `steps` steps, one entry per change."""
    try:
        tree = _parser().parse(text)
    except lark.exceptions.LarkError:
        return (ScheduleEntry(steps, text),)
    return tuple(ScheduleEntry(t, _text_at(tree, t)) for t in _change_steps(tree, steps))


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
    elif node.data == "plain":
        yield str(node.children[0])
    else:
        for child in node.children:
            yield from _pieces(child, step)
