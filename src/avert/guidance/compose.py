"""How several negatives add up: pure tensor functions over their contributions.

Each method first turns negative i into its contribution c_i (plain CFG and the three-branch formulas:
c_i = l_i (e_ni - e_0); Perp-Neg: l_i times the part of e_ni - e_0 orthogonal to the prompt's direction;
dynamic, posterior, gated: l_i p_i (e_ni - e_0) with p_i the concept's estimated presence). A rule then makes
one push P out of the contributions, and the guided prediction is e = e_0 + w d_c - w_n P (plain CFG: w_n =
w - 1, i.e. e_u = e_0 + P, e = e_u + w (e_c - e_u)).

With plain CFG and k negatives of weight 1 the sum gives e_u = e_0 + sum_i (e_ni - e_0): every negative's
direction also holds what any text has against the empty prompt, so that shared part is pushed k times and the
more negatives a user lists, the more the prompt's subject is wrecked (measured in docs/eval/compose.md). The
rules differ in how they count what the negatives share; with one negative each of them is c_1 itself.

Tensors are [batch, C, H, W]; norms and projections are per sample.
"""

from __future__ import annotations

from typing import Sequence

import torch

RULES: tuple[str, ...] = ("sum", "mean", "cap", "orthogonal", "strongest", "protect", "strongest-protect")


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


def summed(contributions: Sequence[torch.Tensor]) -> torch.Tensor:
    """P = sum_i c_i: A1111's and diffusers' reading of several negatives (and avert's before 2026-12)."""
    return sum(contributions)


def mean(contributions: Sequence[torch.Tensor]) -> torch.Tensor:
    """P = (1/k) sum_i c_i: the push of one negative whatever k is; each concept gets 1/k of its strength."""
    return sum(contributions) / len(contributions)


def capped(contributions: Sequence[torch.Tensor]) -> torch.Tensor:
    """P = S min(1, max_i |c_i| / |S|), S = sum_i c_i: the sum's direction, never longer than the longest
    single contribution (per sample, L2 over every element)."""
    total = sum(contributions)
    longest = torch.stack([_norm(c) for c in contributions]).amax(dim=0)
    length = _norm(total)
    return total * torch.where(length > longest, longest / length, torch.ones_like(length))  # length > 0 there


def orthogonal(contributions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gram-Schmidt in order of decreasing length, per sample: P = sum_i c_i', with c_i' the part of c_i
    orthogonal to every longer c_j'. What the negatives share is counted once, in the longest of them, and each
    adds only what is its own; the order of the negatives in the request does not matter (ties keep request
    order). As Perp-Neg (Armandpour et al. 2023, eq. 9) takes from each negative the part orthogonal to the
    prompt, this takes from each the part orthogonal to the others."""
    from avert.guidance.cfg import perpendicular

    stacked = torch.stack(list(contributions))  # [k, batch, ...]
    lengths = stacked.flatten(2).norm(dim=2)  # [k, batch]
    order = torch.sort(lengths, dim=0, descending=True, stable=True).indices
    ordered = stacked.gather(0, order.view(*order.shape, *([1] * (stacked.ndim - 2))).expand_as(stacked))
    basis: list[torch.Tensor] = []
    for c in ordered:
        for b in basis:
            c = perpendicular(c, b)
        basis.append(c)
    return sum(basis)


def strongest(contributions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise, the contribution of largest magnitude wins: P[j] = c_m[j], m = argmax_i |c_i[j]| (the
    first on ties). A shared part is pushed once; where one negative's concept sits, that negative acts alone
    and at its full strength."""
    stacked = torch.stack(list(contributions))
    pick = stacked.abs().argmax(dim=0, keepdim=True)
    return stacked.gather(0, pick)[0]


def protected(push: torch.Tensor, contributions: Sequence[torch.Tensor], direction: torch.Tensor) -> torch.Tensor:
    """The push with its part against the prompt no larger than the largest single contribution's, per sample:
    with u = d_c / |d_c| and a_i = <c_i, u>, P' = P - <P, u> u + min(<P, u>, max_i a_i) u. Each negative's part
    orthogonal to the prompt's direction d_c is kept whole; along d_c, the negatives together push the prompt's
    subject away no harder than the strongest of them alone would (where |d_c| is 0, also by underflow: P).
    After Perp-Neg (Armandpour et al. 2023), which removes the part along d_c altogether."""
    length = _norm(direction)
    unit = torch.where(length > 0, direction / length.clamp_min(torch.finfo(direction.dtype).tiny),
                       torch.zeros_like(direction))
    along = (push * unit).flatten(1).sum(1).view_as(length)
    single = torch.stack([(c * unit).flatten(1).sum(1).view_as(length) for c in contributions]).amax(dim=0)
    return push + (torch.minimum(along, single) - along) * unit


# The rule a request without `negatives_rule` gets, per guidance method (screened in docs/eval/compose-screen.md).
DEFAULT_RULES: dict[str, str] = {m: "strongest-protect" for m in ("cfg", "apg", "perp-neg", "dynamic", "posterior",
                                                                   "gated", "cfg-zero-star", "tangential",
                                                                   "frequency-decoupled", "magnitude-aware", "pag",
                                                                   "seg", "slg")}


def default_rule(method: str) -> str:
    """The rule of a method (one of `avert.schema.GUIDANCE_METHODS`) when the request names none."""
    return DEFAULT_RULES[method]


COMPOSE = {"sum": summed, "mean": mean, "cap": capped, "orthogonal": orthogonal, "strongest": strongest}


def grouped(contributions: Sequence[torch.Tensor], groups: Sequence[int]) -> list[torch.Tensor]:
    """The contributions summed within each group (the AND parts of one negative: A1111's weighted mix of them is
    one negative), in the order the groups first appear."""
    sums: dict[int, torch.Tensor] = {}
    for c, g in zip(contributions, groups):
        sums[g] = sums[g] + c if g in sums else c
    return list(sums.values())


def compose(contributions: Sequence[torch.Tensor], rule: str, direction: torch.Tensor | None = None,
            groups: Sequence[int] | None = None) -> torch.Tensor | float:
    """The push P of the contributions under `rule` (one of `RULES`); 0.0 without any, c_1 itself for one.
    The "-protect" rules (and "protect", the protected sum) need the prompt's direction d_c (`protected`).
    `groups` (one per contribution) says which come from one negative: they add up before the rule applies."""
    if groups is not None and rule != "sum":
        contributions = grouped(contributions, groups)
    if not contributions:
        return 0.0
    if len(contributions) == 1:
        return contributions[0]
    base = "sum" if rule == "protect" else rule.removesuffix("-protect")
    if rule not in RULES or base not in COMPOSE:
        raise ValueError(f"rule {rule!r}: must be one of {', '.join(RULES)}")
    push = COMPOSE[base](contributions)
    if rule.endswith("protect"):
        if direction is None:
            raise ValueError(f"rule {rule!r} needs the prompt's direction")
        push = protected(push, contributions, direction)
    return push
