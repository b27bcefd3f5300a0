"""Which concepts the world's scene rules tie together, so that removing one may change the other.

`avert eval compose` counts as collateral change only concepts that a negative neither names nor implies; this
is the one table of what it implies, read off the rules of `avert.world.sample`: the sun shines only in a day or
sunset sky, the moon and stars only at night, a cloudy sky always has clouds, a boat floats only on the sea,
flowers grow only on grass; a house always has one of four colours; each scene has exactly one sky, one ground
and one tone grade, so removing one can bring in another of its kind.
"""

from __future__ import annotations

from collections.abc import Iterable

from avert.world.attributes import HOUSE_COLORS

SKY_CONCEPTS = ("day sky", "sunset", "night", "cloudy sky")
GROUND_CONCEPTS = ("grass", "sand", "snow", "sea")
TONE_CONCEPTS = ("green tones", "warm tones", "blue tones", "black and white", "sepia")
HOUSES = ("house",) + tuple(f"{c} house" for c in HOUSE_COLORS)


def _group(members: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {m: tuple(o for o in members if o != m) for m in members}


# named concept -> the concepts it implies (one direction: naming the key may change the values)
IMPLIED: dict[str, tuple[str, ...]] = {
    **{sky: tuple(s for s in SKY_CONCEPTS if s != sky) + ("sun", "moon", "stars", "cloud") for sky in SKY_CONCEPTS},
    **{ground: tuple(g for g in GROUND_CONCEPTS if g != ground) + ("boat", "flowers") for ground in GROUND_CONCEPTS},
    **_group(TONE_CONCEPTS),
    **_group(HOUSES),
    "sun": ("day sky", "sunset"),
    "moon": ("night", "stars"),
    "stars": ("night", "moon"),
    "cloud": ("cloudy sky",),
    "boat": ("sea",),
    "flowers": ("grass",),
}


def implied(named: Iterable[str]) -> set[str]:
    """The concepts the named ones imply (`IMPLIED`), the named ones left out."""
    named = set(named)
    return {t for n in named for t in IMPLIED.get(n, ())} - named


def unrelated(named: Iterable[str], concepts: Iterable[str]) -> tuple[str, ...]:
    """The concepts of `concepts` that are neither named nor implied by `named`, in their order."""
    named = set(named)
    tied = named | implied(named)
    return tuple(c for c in concepts if c not in tied)
