"""Several negatives at once: `avert eval compose`.

For each `Case` (a prompt whose images often hold several of the concepts its negatives name) and each k of
`KS`, the prompt is rendered with the same seeds without a negative (plain CFG), with each negative alone, and
with its first k negatives together, under each `Method` (a guidance method and a rule for several negatives,
`avert.guidance.compose`). The shipped detector reads every image. Per case, k and method:

* **suppression** of each named concept, 1 - rate with / rate without, and its **ratio** to that concept's
  suppression as the only negative (same method): the issue's "each acts as it would alone" is a ratio near 1;
* **fidelity**: the mean detection rate of the prompt's own concepts, without and with the negatives;
* **collateral (a)**: the mean, over every concept neither named nor implied by the negatives
  (`avert.world.ties`), of the absolute change of its detection rate;
* **collateral (b)**: the mean per-pixel colour difference CIE76 Delta E*ab (Euclidean distance in CIELAB, D65,
  from sRGB) between the image with and without the negatives, same seed: over the whole image where the image
  without them holds none of the named concepts (*absent*), and outside the named concepts' regions where it
  holds some (*outside*). A region is where occluding the image lowers the detector's probability of the
  concept most (`avert.evaluation.inpainting.concept_mask`); an image whose present concept it cannot place is
  left out of *outside*. A Delta E of about 2.3 is a just-noticeable difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avert.evaluation.collateral import Regions, pixel_collateral
from avert.evaluation.common import (
    Reading,
    Renderer,
    Settings,
    load_detector,
    read_images,
)
from avert.evaluation.negatives import Method, suppression, target_concept
from avert.world import CONCEPTS
from avert.world.ties import unrelated

KS = (1, 2, 4, 8)
MIN_RATE = 0.25  # a concept's suppression ratio counts where it is in at least this share of images without


@dataclass(frozen=True)
class Case:
    """A prompt, its negatives in the order they are added (the first k are used), the prompt's own concepts."""

    prompt: str
    negatives: tuple[str, ...]
    prompt_concepts: tuple[str, ...]
    standing: bool = False  # negatives the prompt hardly makes: nothing to suppress, not rendered alone

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(target_concept(n, self.prompt) for n in self.negatives)


# Rates without a negative on seeds 0..15 (2026-12-07): "a red house on a hill" clouds 0.69, trees 0.19, mountains
# 0.19, sun 0.06; "a red house in a lush valley" mountains 0.56, sun 0.44, trees 0.38, clouds 0.31. The first is
# the example; the last case lists standing negatives (concepts the prompt hardly ever has).
CASES: tuple[Case, ...] = (
    Case("a red house on a hill", ("clouds", "trees", "mountains", "sun", "snow", "flowers", "boat", "hands"),
         ("house", "red house")),
    Case("a red house in a lush valley", ("mountains", "sun", "trees", "clouds", "snow", "flowers", "boat", "hands"),
         ("house", "red house")),
    Case("a red house on a hill", ("boat", "hands", "sepia", "black and white", "green tones", "blue tones", "moon",
                                   "warm tones"), ("house", "red house"), standing=True),
)


def methods_for(default_guidance: str) -> tuple[Method, ...]:
    """Plain CFG as A1111 and diffusers add negatives (the sum), the model's default method with the negatives
    joined into one text (A1111's single field), and the model's default method with its default rule (last)."""
    from avert.guidance.compose import default_rule

    own = (("guidance", default_guidance),) if default_guidance != "cfg" else ()
    return (Method("cfg, sum", (("negatives_rule", "sum"),)),
            Method(f"{default_guidance}, joined", own + (("negatives_rule", "joined"),)),
            Method(f"{default_guidance}, {default_rule(default_guidance)} (default)", own))


def screen_methods(rules: Sequence[str], guidances: Sequence[str] = ("cfg", "gated")) -> tuple[Method, ...]:
    """Every rule under every method: the screen that chose the default rules."""
    return tuple(Method(f"{g}, {r}", ((("guidance", g),) if g != "cfg" else ()) + (("negatives_rule", r),))
                 for g in guidances for r in rules)


@dataclass(frozen=True)
class ComposeRow:
    prompt: str
    k: int
    method: str
    negatives: tuple[str, ...]
    concepts: tuple[str, ...]
    rates_without: tuple[float, ...]
    rates_with: tuple[float, ...]
    suppressions: tuple[float | None, ...]
    suppressions_alone: tuple[float | None, ...]
    fidelity_without: float
    fidelity_with: float
    fidelity_alone: float | None  # the lowest fidelity with one of the k negatives alone (None: standing)
    collateral_rates: float
    delta_e_absent: float | None
    n_absent: int
    delta_e_outside: float | None
    n_outside: int
    n_seeds: int

    @property
    def ratios(self) -> tuple[float | None, ...]:
        """Each concept's suppression over its suppression alone, for concepts in at least `MIN_RATE` of the
        images without negatives whose suppression alone is above 0.05."""
        return tuple(None if r0 < MIN_RATE or s is None or a is None or a <= 0.05 else s / a
                     for r0, s, a in zip(self.rates_without, self.suppressions, self.suppressions_alone))

    @property
    def worst_ratio(self) -> float | None:
        values = [r for r in self.ratios if r is not None]
        return min(values) if values else None

    @property
    def mean_suppression(self) -> float | None:
        values = [s for s in self.suppressions if s is not None]
        return float(np.mean(values)) if values else None

    @property
    def fidelity_drop(self) -> float:
        return self.fidelity_without - self.fidelity_with


def _negatives_options(texts: Sequence[str], method: Method) -> tuple:
    from avert.request import Negative

    return method.options + (("negatives", tuple(Negative(t) for t in texts)),)


def _alone_options(method: Method) -> tuple:
    return tuple((k, v) for k, v in method.options if k != "negatives_rule")  # one negative: every rule is the same


def evaluate_compose(cases: Sequence[Case] = CASES, components=None, seeds: int = 64, methods: Sequence[Method] = (),
                     ks: Sequence[int] = KS, settings: Settings | None = None, runtime=None, detector=None,
                     progress: bool = True) -> list[ComposeRow]:
    """Every case at every k under every method (see the module docstring); rows in that order."""
    settings = settings or Settings()
    detector = load_detector(detector)
    alone_sets = len({_alone_options(m) for m in methods})  # the rule does not matter for one negative
    renders = seeds * sum(1 + (0 if c.standing else max(ks) * alone_sets) + len(methods) * sum(k > 1 for k in ks)
                          + (alone_sets if c.standing and 1 in ks else 0) for c in cases)
    renderer = Renderer(components, settings, runtime, progress, total=renders, desc="Composing negatives")
    rows = []
    try:
        for case in cases:
            without = renderer.images(case.prompt, "", seeds)
            reading, regions = read_images(without, detector), Regions(without, detector)
            for method in methods:
                alone = {} if case.standing else {
                    n: read_images(renderer.images(case.prompt, n, seeds, _alone_options(method)), detector)
                    for n in case.negatives[:max(ks)]}
                for k in ks:
                    texts = case.negatives[:k]
                    images = (renderer.images(case.prompt, texts[0], seeds, _alone_options(method)) if k == 1 else
                              renderer.images(case.prompt, "", seeds, _negatives_options(texts, method)))
                    rows.append(_row(case, k, method, without, reading, images, read_images(images, detector),
                                     alone, regions))
    finally:
        renderer.close()
    return rows


def _row(case: Case, k: int, method: Method, without: np.ndarray, reading: Reading, images: np.ndarray,
         with_: Reading, alone: dict[str, Reading], regions: Regions) -> ComposeRow:
    texts, concepts = case.negatives[:k], case.concepts[:k]
    r0 = tuple(reading.rate(c) for c in concepts)
    r1 = tuple(with_.rate(c) for c in concepts)
    ra = tuple(alone[t].rate(c) if alone else float("nan") for t, c in zip(texts, concepts))
    others = unrelated(concepts, CONCEPTS)
    collateral = float(np.mean([abs(with_.rate(c) - reading.rate(c)) for c in others]))
    pixels = pixel_collateral(without, images, reading, concepts, regions)
    return ComposeRow(case.prompt, k, method.label, texts, concepts, r0, r1,
                      tuple(suppression(a, b) for a, b in zip(r0, r1)),
                      tuple(suppression(a, b) for a, b in zip(r0, ra)),
                      reading.mean_rate(case.prompt_concepts), with_.mean_rate(case.prompt_concepts),
                      min((alone[t].mean_rate(case.prompt_concepts) for t in texts if t in alone), default=None),
                      collateral, *pixels, n_seeds=len(images))
