"""Captions for scenes: a random subset of what is true, in varied words and order.

Rules every caption follows:

* it names only true attributes (`mentioned_concepts(caption) <= scene.concepts()`);
* when the scene has a tone grade, a non-empty caption always names it;
* about `EMPTY_P` of captions are empty (for training the unconditional prediction);
* generic captions ("a landscape") are chosen independently of the content, so a generic
  prompt maps to the whole scene distribution;
* colour words the image cannot show are left out: under black and white or sepia no
  house colour, "blue sky" or "green grass" is named.

`mentioned_concepts(text)` reads concept names back out of any text with the same
keyword patterns; it is what the tests use to check captions, and what an evaluation can
use to find the concepts a prompt or negative prompt names.
"""

from __future__ import annotations

import re

import numpy as np

from avert.world.attributes import CONCEPTS, HOUSE_COLORS, SKY_CONCEPT, Scene

EMPTY_P = 0.10
STYLE_P = {"list": 0.35, "sentence": 0.5, "generic": 0.15}

Phrase = tuple[str, frozenset[str]]

_NUM = {2: "two", 3: "three", 4: "four", 5: "five"}
_NO_COLOUR_TONES = frozenset({"black and white", "sepia"})

GENERIC: tuple[str, ...] = ("a landscape", "a landscape", "a scene", "a view")  # "a landscape" half the time
FRAMES: tuple[str, ...] = ("a photo of ", "a picture of ", "an image of ", "a painting of ", "a drawing of ")

# Tone phrases: standalone (list style), after the rest (suffix) and before it (prefix).
TONE_WORDS: dict[str, tuple[str, ...]] = {
    "green tones": ("green tones", "green tint", "in green tones", "green-tinted"),
    "warm tones": ("warm tones", "warm tint", "in warm tones", "warm colours"),
    "blue tones": ("blue tones", "blue tint", "in blue tones", "blue-tinted"),
    "black and white": ("black and white", "monochrome", "in black and white", "greyscale"),
    "sepia": ("sepia", "sepia tones", "in sepia", "sepia toned"),
}
TONE_SUFFIX: dict[str, tuple[str, ...]] = {
    "green tones": (", green tones", ", green tint", " in green tones", ", with a green tint"),
    "warm tones": (", warm tones", ", warm tint", " in warm tones", ", warm colours"),
    "blue tones": (", blue tones", ", blue tint", " in blue tones", ", with a blue tint"),
    "black and white": (", black and white", " in black and white", ", monochrome", ", greyscale"),
    "sepia": (", sepia", " in sepia", ", sepia tones", ", sepia toned"),
}
TONE_PREFIX: dict[str, tuple[str, ...]] = {
    "green tones": ("a green-tinted photo of ", "a green-toned picture of "),
    "warm tones": ("a warm-toned photo of ", "a warm-tinted picture of "),
    "blue tones": ("a blue-tinted photo of ", "a blue-toned picture of "),
    "black and white": ("a black and white photo of ", "a monochrome picture of ", "a black-and-white photo of "),
    "sepia": ("a sepia photo of ", "an old sepia photograph of "),
}

SKY_NOUN: dict[str, tuple[str, ...]] = {
    "day": ("a blue sky", "a clear sky", "daytime", "a clear blue sky"),
    "sunset": ("sunset", "a sunset sky", "dusk", "a sunset"),
    "night": ("night", "a night sky", "nighttime", "night time"),
    "cloudy": ("a cloudy sky", "an overcast sky", "overcast", "a grey sky", "a cloudy day"),
}
SKY_PREP: dict[str, tuple[str, ...]] = {
    "day": ("under a blue sky", "under a clear blue sky", "in daytime", "by day"),
    "sunset": ("at sunset", "at dusk", "under a sunset sky"),
    "night": ("at night", "by night", "under a night sky"),
    "cloudy": ("under a cloudy sky", "under an overcast sky", "on a cloudy day", "under a grey sky"),
}
GROUND_NOUN: dict[str, tuple[str, ...]] = {
    "grass": ("grass", "green grass", "a meadow", "a grassy field"),
    "sand": ("sand", "a desert", "sand dunes", "sandy ground"),
    "snow": ("snow", "a snowy landscape", "a snowfield", "winter"),
    "sea": ("the sea", "the ocean", "the open sea", "calm water"),
}
GROUND_PREP: dict[str, tuple[str, ...]] = {
    "grass": ("on green grass", "on the grass", "in a meadow", "on a grassy field"),
    "sand": ("on the sand", "in the desert", "on sand dunes", "on sandy ground"),
    "snow": ("in the snow", "on snow", "in a snowy landscape", "in winter"),
    "sea": ("by the sea", "over the sea", "near the ocean", "by the water"),
}
SEA_PREP_FLOATING = ("on the sea", "at sea", "on the ocean", "on the water")

_TONE_PATTERNS: dict[str, str] = {
    "green tones": r"\bgreen[- ](?:tones?|toned|tint|tinted)\b",
    "warm tones": r"\bwarm\b",
    "blue tones": r"\bblue[- ](?:tones?|toned|tint|tinted)\b",
    "black and white": r"\bblack[- ]and[- ]white\b|\bmonochrome\b|\bgr[ae]yscale\b",
    "sepia": r"\bsepia\b",
}
CONCEPT_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "sun": r"\bsun\b",
        "moon": r"\bmoon\b",
        "tree": r"\btrees?\b",
        "house": r"\b(?:houses?|cottages?)\b",
        **{f"{c} house": rf"\b{c} (?:(?:small|little) )?(?:houses?|cottages?)\b" for c in HOUSE_COLORS},
        "cloud": r"\bclouds?\b",
        "boat": r"\b(?:sail)?boats?\b",
        "mountain": r"\bmountains?\b",
        "flowers": r"\b(?:wild)?flowers?\b",
        "hand": r"\bhands?\b",
        "stars": r"\bstar(?:s|ry)\b",
        "day sky": r"\bblue sky\b|\bclear sky\b|\bdaytime\b|\bby day\b|\bday sky\b",
        "sunset": r"\bsunset\b|\bdusk\b",
        "night": r"\bnight(?:time)?\b",
        "cloudy sky": r"\bcloudy\b|\bovercast\b|\bgr[ae]y sky\b",
        "grass": r"\bgrass(?:y)?\b|\bmeadow\b",
        "sand": r"\bsand(?:y)?\b|\bdesert\b|\bdunes?\b",
        "snow": r"\bsnow(?:y|field)?\b|\bwinter\b",
        "sea": r"\bsea\b|\bocean\b|\bwater\b",
        **_TONE_PATTERNS,
    }.items()
}
assert set(CONCEPT_PATTERNS) == set(CONCEPTS)


def mentioned_concepts(text: str) -> frozenset[str]:
    """The concept names (from `CONCEPTS`) that a text names, by keyword."""
    return frozenset(name for name, pattern in CONCEPT_PATTERNS.items() if pattern.search(text))


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _object_phrase(scene: Scene, kind: str, rng: np.random.Generator) -> Phrase:
    n = scene.count(kind)
    num = _NUM.get(n, "some")
    names = frozenset({kind})
    if kind == "tree":
        pine = all(o.variant == 1 for o in scene.of_kind("tree"))
        if n == 1:
            opts = ["a tree", "one tree", "a single tree", "a lone tree"] + (["a pine tree"] if pine else [])
        else:
            opts = ["trees", "some trees", f"{num} trees", "a few trees"] + (["pine trees"] if pine else [])
        return _pick(rng, opts), names
    if kind == "house":
        colour = scene.house_color
        if scene.tone not in _NO_COLOUR_TONES and rng.random() < 0.6:
            text = _pick(rng, (f"a {colour} house", f"a small {colour} house", f"a {colour} cottage"))
            return text, frozenset({"house", f"{colour} house"})
        return _pick(rng, ("a house", "a small house", "a cottage", "a little house")), names
    if kind == "sun":
        if scene.sky == "sunset":
            return _pick(rng, ("the setting sun", "the sun", "a low sun")), names
        return _pick(rng, ("the sun", "a bright sun", "a shining sun")), names
    if kind == "moon":
        crescent = scene.of_kind("moon")[0].variant == 1
        return _pick(rng, ("a crescent moon" if crescent else "a full moon", "the moon", "a moon")), names
    if kind == "cloud":
        if n == 1:
            return _pick(rng, ("a cloud", "a single cloud", "a small cloud")), names
        extra = "grey clouds" if scene.sky == "cloudy" else "fluffy clouds"
        return _pick(rng, ("clouds", "some clouds", f"{num} clouds", extra)), names
    if kind == "boat":
        if n == 1:
            return _pick(rng, ("a boat", "a sailboat", "a small boat", "a sailing boat")), names
        return _pick(rng, (f"{num} boats", "boats", f"{num} sailboats", "some boats")), names
    if kind == "mountain":
        if n == 1:
            return _pick(rng, ("a mountain", "a tall mountain", "a single mountain")), names
        return _pick(rng, ("mountains", f"{num} mountains", "some mountains", "a mountain range")), names
    if kind == "flowers":
        return _pick(rng, ("flowers", "some flowers", "wildflowers", "colourful flowers", "a patch of flowers")), names
    if kind == "hand":
        return _pick(rng, ("a hand", "a human hand", "an open hand", "a raised hand")), names
    if kind == "stars":
        return _pick(rng, ("stars", "many stars", "twinkling stars", "a starry sky")), names
    raise ValueError(f"no phrase for {kind!r}")


def _no_colour(scene: Scene, options: tuple[str, ...]) -> tuple[str, ...]:
    if scene.tone in _NO_COLOUR_TONES:
        kept = tuple(o for o in options if "blue" not in o and "green" not in o)
        return kept or options
    return options


def _sky(scene: Scene, rng: np.random.Generator, prep: bool) -> Phrase:
    options = (SKY_PREP if prep else SKY_NOUN)[scene.sky]
    return _pick(rng, _no_colour(scene, options)), frozenset({SKY_CONCEPT[scene.sky]})


def _ground(scene: Scene, rng: np.random.Generator, prep: bool, floating: bool = False) -> Phrase:
    if prep:
        options = SEA_PREP_FLOATING if floating and scene.ground == "sea" else GROUND_PREP[scene.ground]
    else:
        options = GROUND_NOUN[scene.ground]
    return _pick(rng, _no_colour(scene, options)), frozenset({scene.ground})


def _things(scene: Scene) -> list[str]:
    """Object kinds present (and "stars"), in a fixed order."""
    kinds = [
        k for k in ("hand", "house", "boat", "tree", "sun", "moon", "mountain", "cloud", "flowers") if scene.count(k)
    ]
    if scene.stars:
        kinds.append("stars")
    return kinds


def _join(parts: list[str], rng: np.random.Generator) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    if rng.random() < 0.5:
        return ", ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _list_caption(scene: Scene, rng: np.random.Generator) -> Phrase:
    items: list[Phrase] = [_object_phrase(scene, k, rng) for k in _things(scene) if rng.random() < 0.5]
    if rng.random() < 0.4:
        items.append(_sky(scene, rng, prep=False))
    if rng.random() < 0.4:
        items.append(_ground(scene, rng, prep=False))
    if not items and scene.tone == "none":
        kinds = _things(scene)
        k = int(rng.integers(len(kinds) + 2))
        if k < len(kinds):
            items.append(_object_phrase(scene, kinds[k], rng))
        elif k == len(kinds):
            items.append(_sky(scene, rng, prep=False))
        else:
            items.append(_ground(scene, rng, prep=False))
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    text = _join([t for t, _ in items], rng)
    names: set[str] = set().union(*(c for _, c in items)) if items else set()
    if scene.tone != "none":
        tone = _pick(rng, TONE_WORDS[scene.tone])
        names.add(scene.tone)
        if not text:
            text = tone
        elif rng.random() < 0.75:
            text = f"{text}, {tone}"
        else:
            text = f"{tone}, {text}"
    return text, frozenset(names)


def _sentence_caption(scene: Scene, rng: np.random.Generator) -> Phrase:
    kinds = _things(scene)
    chosen = [k for k in kinds if rng.random() < 0.45][:3]
    names: set[str] = set()
    phrases = []
    for k in chosen:
        text, c = _object_phrase(scene, k, rng)
        phrases.append(text)
        names |= c
    if not phrases:
        subject = _pick(rng, GENERIC)
    elif "hand" in chosen and len(phrases) > 1 and rng.random() < 0.5:
        i = chosen.index("hand")
        hand = phrases.pop(i)
        subject = f"{hand} in front of {_join(phrases, rng)}"
    elif rng.random() < 0.2:
        subject = f"{_pick(rng, GENERIC)} with {_join(phrases, rng)}"
    else:
        subject = _join(phrases, rng)
    parts = [subject]
    if rng.random() < 0.45:
        text, c = _ground(scene, rng, prep=True, floating=chosen == ["boat"])
        parts.append(text)
        names |= c
    sky_first = False
    if rng.random() < 0.45:
        text, c = _sky(scene, rng, prep=True)
        names |= c
        if rng.random() < 0.25:
            sky_first = True
            parts.insert(0, text + ",")
        else:
            parts.append(text)
    text = " ".join(parts)
    if scene.tone != "none":
        names.add(scene.tone)
        if not sky_first and rng.random() < 0.4:
            text = _pick(rng, TONE_PREFIX[scene.tone]) + text
        else:
            text = text + _pick(rng, TONE_SUFFIX[scene.tone])
    elif not sky_first and rng.random() < 0.25:
        text = _pick(rng, FRAMES) + text
    return text, frozenset(names)


def _generic_caption(scene: Scene, rng: np.random.Generator) -> Phrase:
    text = _pick(rng, GENERIC)
    if scene.tone == "none":
        return text, frozenset()
    return text + _pick(rng, TONE_SUFFIX[scene.tone]), frozenset({scene.tone})


def caption_with_concepts(scene: Scene, rng: np.random.Generator) -> Phrase:
    """One caption and the set of concepts it names (a subset of `scene.concepts()`)."""
    if rng.random() < EMPTY_P:
        return "", frozenset()
    styles = list(STYLE_P)
    style = styles[int(rng.choice(len(styles), p=np.asarray([STYLE_P[s] for s in styles])))]
    if style == "list":
        return _list_caption(scene, rng)
    if style == "sentence":
        return _sentence_caption(scene, rng)
    return _generic_caption(scene, rng)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One random caption of the scene (empty about `EMPTY_P` of the time)."""
    return caption_with_concepts(scene, rng)[0]


def captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """`n` independent random captions of the scene."""
    return [caption(scene, rng) for _ in range(n)]
