"""The words of the world's captions, and the embedded model's scope (`avert.models.scope`) made from them."""

from __future__ import annotations

import importlib
import re

import numpy as np

from avert.models.scope import ModelScope
from avert.world.attributes import CONCEPTS

# words of the captions that say nothing of what is drawn: left out of the reference a word is compared with
CAPTION_FUNCTION_WORDS = frozenset(
    "a an and at by in of on over under with the near few some many one two three four front time image picture "
    "photo photograph scene view drawing painting landscape field ground open raised range patch setting lone "
    "single little small tall low full old calm clear bright".split())
# English function words, never looked at
ENGLISH_FUNCTION_WORDS = frozenset(
    "about above after all also any are around as be been before behind below beneath beside between both but can "
    "could did do does each every for from had has have her here his how into is it its just like more most my no "
    "nor not off only or other our out own same she should so such than that their them then there these they this "
    "those through too until very was we were what when where which while who why will without would you your "
    "very quite".split())
EMBEDDED_FAR_BELOW = 0.55  # measured: docs/embedded-model.md, "Words it does not know"
EMBEDDED_ABOUT = ("a 32x32 model of a small procedural world: landscapes with sky, ground, houses, trees, boats, "
                  "mountains, flowers, hands, sun, moon and stars, in colour tones; it knows the 27 concepts listed "
                  "here and the words of its captions, not the world at large")


def caption_words(scenes: int = 3000, seed: int = 0) -> frozenset[str]:
    """Every word (a run of letters, lower case) in the captions of `scenes` world scenes, two captions each, plus
    every word of the caption module's phrase tables (so a rare phrase the sample missed still counts)."""
    from avert.world.sample import sample_scene

    c = importlib.import_module("avert.world.captions")  # the package exports a function of that name
    words: set[str] = set()
    tables = (c.TONE_WORDS, c.TONE_SUFFIX, c.TONE_PREFIX, c.SKY_NOUN, c.SKY_PREP, c.GROUND_NOUN, c.GROUND_PREP)
    texts = [t for table in tables for options in table.values() for t in options]
    texts += [*c.GENERIC, *c.FRAMES, *c.SEA_PREP_FLOATING]
    rng = np.random.default_rng(seed)
    for _ in range(scenes):
        texts += c.captions(sample_scene(rng), rng, 2)
    for text in texts:
        words.update(re.findall(r"[a-z]+", text.lower()))
    return frozenset(words)


def embedded_scope() -> ModelScope:
    """The embedded model's `scope.json`: its concepts, its captions' content words, the words never looked at."""
    words = caption_words()
    return ModelScope(EMBEDDED_ABOUT, CONCEPTS, tuple(sorted(words - CAPTION_FUNCTION_WORDS)),
                      tuple(sorted((words & CAPTION_FUNCTION_WORDS) | ENGLISH_FUNCTION_WORDS)), EMBEDDED_FAR_BELOW)
