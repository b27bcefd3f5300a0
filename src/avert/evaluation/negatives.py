"""How well a negative prompt removes what it names, and what it costs the prompt: `avert eval negatives`.

For each `Pair` (prompt, negative, the detector concept the negative targets, the concepts the prompt asks
for) the prompt is rendered with seeds 0 .. n-1 without the negative and again with it (same seeds, same
settings), and the shipped `ConceptDetector` reads every image. Per pair:

* ``rate_without`` / ``rate_with``: share of images in which the target concept is detected;
* ``suppression = 1 - rate_with / rate_without``: 1 means the negative removed the concept from every image
  that had it, 0 that it changed nothing, below 0 that the concept became more common. It is undefined
  (``None``, flagged) when the concept never appears without the negative;
* ``fidelity_without`` / ``fidelity_with``: does the image still show what the prompt asked for? The mean,
  over ``prompt_concepts``, of their detection rates; for a prompt that asks for no detector concept ("a
  landscape") the share of *well-formed* images instead: the detector finds one of the four skies and one of
  the four grounds (every world scene has both) and the image is not speckled (`avert.evaluation.speckle`);
* ``well_formed_*`` and ``speckle_*`` for every pair, plus the settings and the seconds spent.

The default pairs (`DEFAULT_PAIRS`) are ones where the negative's concept is common under the prompt alone
(at least `MIN_BASE_RATE` of images), so that suppression is measured on many images; a row whose base rate
falls short in a run is flagged ``rare``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from avert.errors import AvertError
from avert.evaluation.collateral import Regions, pixel_collateral
from avert.evaluation.common import (
    Reading,
    Renderer,
    RunInfo,
    Settings,
    Timer,
    check_seeds,
    fmt,
    load_components,
    load_detector,
    read_images,
)
from avert.world import CONCEPT_INDEX, CONCEPTS, HOUSE_COLORS, mentioned_concepts

MIN_BASE_RATE = 0.4
MAX_FIDELITY_DROP = 0.10  # the target: fidelity falls by at most 10 points


@dataclass(frozen=True)
class Method:
    """A negative-guidance setting to evaluate: a label and the request fields it sets (empty: plain CFG)."""

    label: str = "cfg"
    options: tuple[tuple[str, object], ...] = ()


# `avert eval methods`: each method alone, then the evaluation savers; all at the default cfg scale. The
# intervals were picked on 16 seeds (guidance in the first half only kept 0.55 suppression at 64 seeds; the
# middle of the run matters most for negatives here, as Ban et al. 2024 and Kynkaanniemi et al. 2024 found).
DEFAULT_METHODS: tuple[Method, ...] = (
    Method("cfg"),
    Method("perp-neg", (("guidance", "perp-neg"),)),
    Method("dynamic", (("guidance", "dynamic"),)),
    Method("apg", (("guidance", "apg"),)),  # Sadat et al. 2025 with avert's defaults: eta 0, no cap, no momentum
    Method("cfg, rescale 0.7", (("guidance_rescale", 0.7),)),
    Method("cfg, rescale 0.2", (("guidance_rescale", 0.2),)),  # nearest to CFG's suppression (2026-11-29)
    # rescale gives back suppression at a higher scale (2026-11-30, seeds 0..127, against cfg's 0.958 / 0.976):
    # at 7.5 equal suppression and better fidelity in each seed half (0.960 / 0.983), at 8 more suppression (0.97 / 0.978)
    Method("cfg 7.5, rescale 0.7", (("guidance_rescale", 0.7), ("cfg_scale", 7.5))),
    Method("cfg 8, rescale 0.7", (("guidance_rescale", 0.7), ("cfg_scale", 8.0))),
    Method("cfg, negative from 20%", (("negative_window", (0.2, 1.0)),)),  # Ban et al. 2024: delayed negative
    Method("cfg, interval 0.3-0.8", (("guidance_start", 0.3), ("guidance_end", 0.8))),
    Method("cfg, sigma interval (1, 20]", (("guidance_sigma_min", 1.0), ("guidance_sigma_max", 20.0))),
    Method("cfg, s_min_uncond 100", (("s_min_uncond", 100.0),)),  # above every sigma: every other step
    Method("cfg, s_min_uncond 100, reuse", (("s_min_uncond", 100.0), ("guidance_reuse", True))),
    Method("cfg, interval 0.3-0.8, reuse", (("guidance_start", 0.3), ("guidance_end", 0.8), ("guidance_reuse", True))),
    # Koulischer et al. 2025, for standing negatives; w_n 10 picked on seeds 0..15 (docs/embedded-model.md)
    Method("posterior, negative scale 10", (("guidance", "posterior"), ("negative_scale", 10.0))),
    # avert's: CFG where the prompt's own step holds the negative's concept, off where not (2026-12-01)
    Method("gated", (("guidance", "gated"),)),
)
NO_NEGATIVE = "No negative prompt"


@dataclass(frozen=True)
class Pair:
    """A prompt, a negative prompt, the detector concept the negative targets and the detector concepts the
    prompt asks for (used for fidelity; empty for a generic prompt)."""

    prompt: str
    negative: str
    concept: str
    prompt_concepts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [c for c in (self.concept, *self.prompt_concepts) if c not in CONCEPT_INDEX]
        if unknown:
            raise ValueError(f"unknown concept(s) {unknown}; the detector knows: {', '.join(CONCEPTS)}")
        object.__setattr__(self, "prompt_concepts", tuple(self.prompt_concepts))


# Chosen by measuring, for each target concept, how often candidate prompts produce it without the negative
# (embedded model at training step 1500, seeds 0..15; the borderline ones again at step 3000, seeds 0..23;
# `avert.evaluation.common.Renderer` + the shipped detector) and keeping a natural prompt where it is common.
# Each comment gives the rate found, alternatives and, in brackets, the world's own share where it caps the
# rate. In this world a tone grade is always named in the captions of a graded image, so a prompt that does
# not imply a tone never gets one ("a landscape": green tones 0/16, sepia 0/16; "a scene": black and white
# 0/16); the tone pairs therefore use prompts that ask for the colour cast in other words ("in shades of
# ...", which `mentioned_concepts` does not read as a tone), i.e. they test whether the negative overrides a
# prompt that implies the tone. No such prompt was found for sepia (8 tried at step 3000, all <= 0.06:
# "a landscape in brown tones", "an old yellowed photograph of a landscape", ...), so sepia has no default
# pair (`--pair` still evaluates it); nor for warm tones ("a landscape in shades of orange": 0.00). A house
# is never by the sea in this world, so the boat pair uses a sea view. A house colour is a 1-in-4 draw in the
# world (no prompt that does not name it makes one colour common), so how often "a house" is red is the model's
# own bias (0.17 at step 3000, 0.59 at 7000, 0.75 at 18500). The rates drift as the model trains; `avert eval
# negatives` flags any pair under 40%.
# Re-picked at step 18500 (seeds 0..31) for the pairs that had fallen under 40%: with more training,
# CFG at scale 7 makes unnamed optional objects rarer, so their prompts now imply the object in other words.
DEFAULT_PAIRS: tuple[Pair, ...] = (
    Pair("an orchard", "trees", "tree"),  # 0.53 at step 18500 ("a meadow" 0.16, "a park" 0.44, "a forest" 1.00)
    Pair("a landscape in shades of green", "green tones", "green tones"),  # 1.00 ("a green landscape": 0.00)
    Pair("a bright day", "sun", "sun", ("day sky",)),  # 0.91 at step 18500 ("a day scene" 0.23, "a hot day" 1.00)
    Pair("a view of the sea", "boat", "boat", ("sea",)),  # 0.75 ("the sea" 0.69, "a house by the sea" 0.44)
    Pair("a gesture", "hands", "hand"),  # 0.94 at step 18500 ("a person" 0.19, "someone waving hello" 0.19)
    Pair("a house", "red", "red house", ("house",)),  # 0.17 at step 3000, the commonest colour (world 0.25 x house)
    Pair("a windy day", "clouds", "cloud"),  # 0.62 ("a landscape" 0.31; world 0.48)
    Pair("a night scene with moonlight", "moon", "moon", ("night",)),  # 0.84 at step 18500 ("a night sky" 0.28)
    Pair("a landscape with hills", "mountains", "mountain"),  # 0.79 at step 3000 ("a landscape" 0.25; world 0.35)
    Pair("a landscape without colour", "black and white", "black and white"),  # 0.78 at step 18500
    # ("a scene in shades of gray" 1.00 at step 3000, 0.39 at 18500; "a colourless landscape" 0.47)
    Pair("a blooming meadow", "flowers", "flowers", ("grass",)),  # 1.00 at step 18500 ("a garden" 0.62 and
    # lost grass with the negative: 1.00 -> 0.86; "a spring meadow" 0.03)
    Pair("a landscape in shades of blue", "blue tones", "blue tones"),  # 1.00 at step 3000
    Pair("a cold landscape", "snow", "snow"),  # 0.94 ("a landscape" 0.00)
    Pair("a village", "house", "house"),  # 0.78 at step 18500 ("a scene with a tree" 0.03, "a farm" 0.25)
)

# Standing negatives: a negative whose concept the prompt does not produce (measured: none or nearly none of the
# images without it have it), as people keep "sepia, black and white, hands" in every negative. Nothing should
# change but what the negative names, so these measure fidelity only (suppression is undefined). The first is
# the README's main command; the last two are object controls.
ABSENT_PAIRS: tuple[Pair, ...] = (
    Pair("a house on a hill", "green tones", "green tones", ("house",)),
    Pair("a landscape", "green tones", "green tones"),
    Pair("a landscape", "blue tones", "blue tones"),
    Pair("a landscape", "warm tones", "warm tones"),
    Pair("a landscape", "black and white", "black and white"),
    Pair("a landscape", "sepia", "sepia"),
    Pair("a village", "boat", "boat", ("house",)),
    Pair("a landscape", "hands", "hand"),
)
ABSENT_FIGURE_PAIRS: tuple[tuple[str, str], ...] = (
    ("a house on a hill", "green tones"),
    ("a landscape", "sepia"),
    ("a landscape", "black and white"),
)

# The guide's side-by-side figure: these pairs, when evaluated, one compare grid each.
FIGURE_PAIRS: tuple[tuple[str, str], ...] = (
    ("a landscape in shades of green", "green tones"),
    ("a gesture", "hands"),
    ("a bright day", "sun"),
)
FIGURE_ROWS = 4


@dataclass(frozen=True)
class PairResult:
    """One row of the negatives table (see the module docstring for every measure)."""

    prompt: str
    negative: str
    concept: str
    prompt_concepts: tuple[str, ...]
    rate_without: float
    rate_with: float
    suppression: float | None
    fidelity_without: float
    fidelity_with: float
    fidelity_measure: str  # "house, sea" (mean detection rate) or "well-formed"
    well_formed_without: float
    well_formed_with: float
    speckle_without: float
    speckle_with: float
    n_seeds: int
    cfg_scale: float
    steps: int
    sampler: str
    seconds: float
    flags: tuple[str, ...] = ()
    method: str = "cfg"
    unet_evals_per_image: float = 0.0  # with the negative (branches x steps)
    seconds_per_image: float = 0.0  # with the negative
    first_seed: int = 0  # the run's seeds are first_seed .. first_seed + n_seeds - 1
    seeds_with_concept_without: tuple[int, ...] = field(default=(), repr=False)
    seeds_with_concept_with: tuple[int, ...] = field(default=(), repr=False)
    # collateral (`avert.evaluation.collateral`): every concept's rate without / with, in `CONCEPTS` order, and the
    # mean CIE76 Delta E where the concept is absent / outside its region where present, with their image counts
    concept_rates_without: tuple[float, ...] = field(default=(), repr=False)
    concept_rates_with: tuple[float, ...] = field(default=(), repr=False)
    delta_e_absent: float | None = None
    n_absent: int = 0
    delta_e_outside: float | None = None
    n_outside: int = 0

    @property
    def fidelity_drop(self) -> float:
        return self.fidelity_without - self.fidelity_with

    @property
    def collateral_rates(self) -> float | None:
        """Collateral (a): the mean absolute change of the rate of every concept neither the negative's nor
        implied by it (`avert.world.ties`); None for a row without the concept rates (older JSON)."""
        from avert.world.ties import unrelated

        if not self.concept_rates_without:
            return None
        others = {CONCEPT_INDEX[c] for c in unrelated((self.concept,), CONCEPTS)}
        return float(np.mean([abs(self.concept_rates_with[i] - self.concept_rates_without[i]) for i in others]))

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("prompt_concepts", "flags", "seeds_with_concept_without", "seeds_with_concept_with",
                    "concept_rates_without", "concept_rates_with"):
            d[key] = list(d[key])
        return d


def suppression(rate_without: float, rate_with: float) -> float | None:
    """1 - rate_with / rate_without; None when rate_without is 0 (nothing to suppress) or not finite."""
    if not (math.isfinite(rate_without) and math.isfinite(rate_with)) or rate_without <= 0:
        return None
    return 1.0 - rate_with / rate_without


def pair_flags(rate_without: float) -> tuple[str, ...]:
    if rate_without <= 0:
        return ("undefined: the concept is never detected without the negative",)
    if rate_without < MIN_BASE_RATE:
        return (f"rare: the concept is in {rate_without:.0%} of images without the negative "
                f"(under {MIN_BASE_RATE:.0%}); suppression rests on few images",)
    return ()


def summarize_pair(pair: Pair, without: Reading, with_: Reading, settings: Settings, seconds: float,
                   method: Method | None = None, cost: tuple[float, float] = (0.0, 0.0),
                   pixels: tuple = (None, 0, None, 0)) -> PairResult:
    """The table row of a pair from the readings of its images without and with the negative; `pixels` is
    `avert.evaluation.collateral.pixel_collateral` of its images."""
    n = len(without.speckled)
    if len(with_.speckled) != n:
        raise ValueError(f"{n} images without the negative but {len(with_.speckled)} with it")
    r0, r1 = without.rate(pair.concept), with_.rate(pair.concept)
    return PairResult(
        prompt=pair.prompt, negative=pair.negative, concept=pair.concept, prompt_concepts=pair.prompt_concepts,
        rate_without=r0, rate_with=r1, suppression=suppression(r0, r1),
        fidelity_without=without.mean_rate(pair.prompt_concepts), fidelity_with=with_.mean_rate(pair.prompt_concepts),
        fidelity_measure=", ".join(pair.prompt_concepts) or "well-formed",
        well_formed_without=float(without.well_formed.mean()), well_formed_with=float(with_.well_formed.mean()),
        speckle_without=float(without.speckled.mean()), speckle_with=float(with_.speckled.mean()),
        n_seeds=n, cfg_scale=settings.cfg, steps=settings.steps, sampler=settings.sampler_name,
        seconds=round(seconds, 3), flags=pair_flags(r0),
        first_seed=settings.first_seed,
        seeds_with_concept_without=without.seeds_with(pair.concept, settings.first_seed),
        seeds_with_concept_with=with_.seeds_with(pair.concept, settings.first_seed),
        method=(method or Method()).label, unet_evals_per_image=round(cost[0], 2),
        seconds_per_image=round(cost[1], 4),
        concept_rates_without=tuple(float(x) for x in without.present.mean(axis=0)),
        concept_rates_with=tuple(float(x) for x in with_.present.mean(axis=0)),
        delta_e_absent=pixels[0], n_absent=pixels[1], delta_e_outside=pixels[2], n_outside=pixels[3],
    )


def evaluate_pairs(
    pairs: Sequence[Pair] = DEFAULT_PAIRS,
    model=None,
    seeds: int = 64,
    cfg_scale: float | None = None,
    steps: int = 20,
    sampler: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    *,
    detector=None,
    runtime=None,
    warnings: list[str] | None = None,
    method: Method | None = None,
    renderer: Renderer | None = None,
    first_seed: int = 0,
) -> list[PairResult]:
    """Render every pair's prompt with seeds first_seed .. first_seed+seeds-1 without and with its negative and
    measure it.

    `model`: loaded components, a model path, or None for $AVERT_MODEL / the embedded model; `cfg_scale` and
    `sampler` None mean the request defaults. A prompt shared by several pairs is rendered without a negative
    once; its time counts toward the first pair that needs it. Warnings of the pipeline (e.g. a negative
    without effect at cfg 1) are appended to `warnings` when a list is given.

    `method` (default plain CFG) applies to the renders *with* the negative; the renders without it are
    always plain CFG, so every method is compared against the same baseline. A `renderer` passed in is
    reused (its baseline renders are cached across methods) and left open.
    """
    method = method or Method()
    check_seeds(seeds)
    pairs = tuple(pairs)
    settings = Settings(steps=steps, cfg_scale=cfg_scale, sampler=sampler, batch_size=batch_size,
                        first_seed=first_seed)
    settings.validate(seeds)  # fail fast on bad settings, before loading anything
    if renderer is not None and renderer.settings.first_seed != first_seed:
        raise ValueError(f"first_seed: {first_seed} but the renderer given renders from seed "
                         f"{renderer.settings.first_seed}; pass the same first seed to both")
    components = load_components(model)
    detector = load_detector(detector)
    jobs = {(p.prompt, "") for p in pairs} | {(p.prompt, p.negative) for p in pairs}
    own = renderer is None
    renderer = renderer or Renderer(components, settings, runtime, progress, total=len(jobs) * seeds,
                                    desc="Evaluating negatives")
    readings: dict[tuple[str, str, tuple], Reading] = {}
    regions: dict[str, Regions] = {}
    results = []
    try:
        for pair in pairs:
            timer = Timer()
            keys = ((pair.prompt, "", ()), (pair.prompt, pair.negative, method.options))
            for prompt, negative, options in keys:
                if (prompt, negative, options) not in readings:
                    readings[(prompt, negative, options)] = read_images(
                        renderer.images(prompt, negative, seeds, options), detector)
            without = renderer.images(pair.prompt, "", seeds)
            regions.setdefault(pair.prompt, Regions(without, detector))
            pixels = pixel_collateral(without, renderer.images(pair.prompt, pair.negative, seeds, method.options),
                                      readings[keys[0]], (pair.concept,), regions[pair.prompt])
            results.append(summarize_pair(pair, readings[keys[0]], readings[keys[1]], settings, timer.lap(), method,
                                          renderer.cost_per_image(pair.prompt, pair.negative, seeds, method.options),
                                          pixels))
    finally:
        if own:
            renderer.close()
    if warnings is not None:
        warnings.extend(renderer.warnings)
    return results


# --- ad-hoc pairs (`--pair PROMPT NEGATIVE`) ---------------------------------------------------------------


def _most_specific(concepts: frozenset[str]) -> set[str]:
    """Drop a concept that another found one refines ("house" when "red house" is named)."""
    return {c for c in concepts if not any(d != c and d.endswith(" " + c) for d in concepts)}


def target_concept(negative: str, prompt: str = "") -> str:
    """The detector concept a negative prompt names; AvertError naming the text when it names none or several.

    An exact concept name wins; otherwise the concepts `avert.world.mentioned_concepts` reads in the text
    (the most specific of them); a bare house colour ("red") under a prompt naming a house is that house.
    """
    text = negative.strip().lower()
    if text in CONCEPT_INDEX:
        return text
    found = _most_specific(mentioned_concepts(negative))
    if not found and text in HOUSE_COLORS and "house" in mentioned_concepts(prompt):
        return f"{text} house"
    if len(found) == 1:
        return found.pop()
    if not found:
        raise AvertError(f"--pair: the negative prompt {negative!r} names no concept the detector knows; "
                         f"name one of: {', '.join(CONCEPTS)}")
    raise AvertError(f"--pair: the negative prompt {negative!r} names several detector concepts "
                     f"({', '.join(sorted(found))}); give a negative that names one")


def pair_from_texts(prompt: str, negative: str) -> Pair:
    """A `Pair` for a prompt and negative given on the command line (a default pair when it is one)."""
    for pair in DEFAULT_PAIRS + ABSENT_PAIRS:
        if (pair.prompt, pair.negative) == (prompt, negative):
            return pair
    concept = target_concept(negative, prompt)
    wanted = tuple(c for c in CONCEPTS if c in _most_specific(mentioned_concepts(prompt)) and c != concept)
    return Pair(prompt, negative, concept, wanted)


def pairs_from_args(given: Sequence[Sequence[str]] | None, absent: bool = False) -> tuple[Pair, ...]:
    """The pairs of repeated `--pair PROMPT NEGATIVE` options, or `DEFAULT_PAIRS` (`ABSENT_PAIRS` with
    `absent`) when none are given."""
    if not given:
        return ABSENT_PAIRS if absent else DEFAULT_PAIRS
    return tuple(pair_from_texts(prompt, negative) for prompt, negative in given)


# --- output -------------------------------------------------------------------------------------------------


def results_json(results: Sequence[PairResult]) -> str:
    """A JSON list with one object per pair (keys as `PairResult.to_dict`)."""
    return json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else '""'


def markdown_table(results: Sequence[PairResult]) -> str:
    """The negatives table, one row per pair."""
    lines = [
        "| prompt | negative | concept | rate without | rate with | suppression | fidelity measure "
        "| fidelity without | fidelity with | speckle without | speckle with | collateral (a) "
        "| Delta E absent (images) | Delta E outside (images) | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        flags = "; ".join(f.split(":")[0] for f in r.flags)
        lines.append(
            f"| {_cell(r.prompt)} | {_cell(r.negative)} | {r.concept} | {r.rate_without:.2f} | {r.rate_with:.2f} "
            f"| {fmt(r.suppression)} | {r.fidelity_measure} | {r.fidelity_without:.2f} | {r.fidelity_with:.2f} "
            f"| {r.speckle_without:.2f} | {r.speckle_with:.2f} | {fmt(r.collateral_rates, 3)} "
            f"| {fmt(r.delta_e_absent, 1)} ({r.n_absent}) | {fmt(r.delta_e_outside, 1)} ({r.n_outside}) | {flags} |"
        )
    return "\n".join(lines)


def mean_suppression(results: Sequence[PairResult]) -> float | None:
    """Mean over the pairs whose suppression is defined (None when none is)."""
    values = [r.suppression for r in results if r.suppression is not None]
    return float(np.mean(values)) if values else None


def worst_fidelity_drop(results: Sequence[PairResult]) -> PairResult | None:
    return max(results, key=lambda r: r.fidelity_drop, default=None)


def summary_lines(results: Sequence[PairResult]) -> list[str]:
    defined = [r for r in results if r.suppression is not None]
    mean = mean_suppression(results)
    worst = worst_fidelity_drop(results)
    lines = [f"Mean suppression: **{fmt(mean)}** over {len(defined)} of {len(results)} pairs "
             "(pairs whose concept never appears without the negative have none)."]
    if worst is not None:
        lines.append(f"Worst fidelity drop: **{worst.fidelity_drop:+.2f}** ({worst.fidelity_measure} "
                     f"{worst.fidelity_without:.2f} -> {worst.fidelity_with:.2f}) for \"{worst.prompt}\" with negative "
                     f"\"{worst.negative}\".")
    collateral = [r.collateral_rates for r in results if r.collateral_rates is not None]
    if collateral:
        lines.append(f"Mean collateral (a): **{np.mean(collateral):.3f}** (the mean absolute change of the rate of "
                     "every concept the negative neither names nor implies); mean Delta E outside the concept's region: "
                     f"**{_mean_of([r.delta_e_outside for r in results])}**, where the concept is absent: "
                     f"**{_mean_of([r.delta_e_absent for r in results])}**.")
    rare = [r for r in results if r.flags]
    if rare:
        lines.append("Flagged: " + "; ".join(f"\"{r.prompt}\" / \"{r.negative}\" ({r.flags[0].split(':')[0]}, "
                                             f"{r.concept} in {r.rate_without:.0%} without the negative)"
                                             for r in rare) + ".")
    return lines


def _mean_of(values: Sequence[float | None]) -> str:
    kept = [v for v in values if v is not None]
    return f"{np.mean(kept):.1f}" if kept else "n/a"


def negatives_page(results: Sequence[PairResult], info: RunInfo, figure: str | None = "negatives.png",
                   model_default: str | None = None) -> str:
    """The markdown page docs/eval/negatives.md."""
    lines = [
        "# Negative prompts: suppression and fidelity",
        "",
        info.line("avert eval negatives" + _method_flag(results, model_default)),
        "",
        method_line(results, model_default, "negatives.md"),
        "",
        *summary_lines(results),
        "",
        markdown_table(results),
        "",
        "## What the columns mean",
        "",
        "Each prompt is rendered with the same seeds twice, without and with the negative prompt, and the concept "
        "detector (`avert.detect`) reads every image.",
        "",
        "- **rate without / with**: share of images in which the negative's target concept is detected.",
        "- **suppression** = 1 - rate with / rate without: 1.00 means the concept is gone from every image that "
        "had it; 0 means no effect; negative means the concept became more common. `n/a` when the concept never "
        "appears without the negative.",
        "- **fidelity**: whether the image still shows what the prompt asks for. For a prompt naming detector "
        "concepts (*fidelity measure* lists them), the mean of their detection rates. For a generic prompt "
        "(\"a landscape\", \"a scene\"), the share of *well-formed* images: the detector finds one of the four "
        "skies and one of the four grounds (every world scene has both) and the image is not speckled.",
        "- **speckle**: share of images whose high-frequency energy (the median pixel's squared difference from "
        "a 3x3 blur) is above the 99th percentile of the world's own renders (so about 0.01 for world renders; "
        "grain of sigma 8/255 is flagged in 99% of images).",
        "- **collateral (a)**: the mean, over every concept that the negative's concept neither is nor implies "
        "(`avert.world.ties`), of the absolute change of its detection rate; **Delta E**: the mean CIE76 colour "
        "difference per pixel between the images without and with the negative (same seed), over the whole image "
        "where the concept is absent and outside the concept's region (found by occlusion) where it is present; "
        "about 2.3 is just noticeable ([compose.md](compose.md) measures both for several negatives).",
        f"- **flags**: *rare* when the concept is in fewer than {MIN_BASE_RATE:.0%} of images without the negative "
        "(suppression then rests on few images); *undefined* when it is in none.",
        "",
        "## How the pairs were chosen",
        "",
        "Each default pair names, as its negative, something the prompt alone often produces: objects (trees, "
        "sun, boat, hands, clouds, moon, mountains, flowers, house), a house colour, tone grades (green tones, "
        "blue tones, black and white) and a ground (snow). Prompts were picked by measuring, for each concept, how "
        "often candidate prompts produce it without the negative, keeping a natural prompt where it appears in "
        f"at least {MIN_BASE_RATE:.0%} of images (the *rate without* column shows this run's value).",
        "",
        "- In this world a tone grade is always named in the captions of a graded image, so a prompt that does "
        "not imply a tone never gets one (\"a landscape\" gave no green tones and no sepia). The tone pairs use "
        "prompts that ask for the colour cast in other words (\"a landscape in shades of green\", \"... of "
        "blue\", \"a landscape without colour\"), so they test whether the negative overrides a prompt that "
        "implies the tone. No prompt was found that makes sepia (8 tried, at most 6%) or warm tones common "
        "without naming them, so they have no default pair (`--pair` still measures them).",
        "- Every object is optional, so a generic prompt produces it only part of the time; prompts that make it "
        "common were preferred (\"an orchard\" for trees, \"a gesture\" for hands, \"a village\" for a "
        "house, \"a windy day\" for clouds, \"a view of the sea\" for boats, \"a landscape with hills\" for "
        "mountains, \"a blooming meadow\" for flowers, \"a bright day\" for the sun, \"a night scene with "
        "moonlight\" for the moon, \"a cold landscape\" for snow). A house is never by the sea in "
        "this world. The better the model is trained, the rarer CFG makes an object the prompt does not imply "
        "(\"a meadow\" gave trees in 50% of images at step 3000, 30% at step 7000 and 16% at step 18500), so "
        "these prompts imply the object in other words.",
        "- A house's colour is a one-in-four draw in the world: no prompt that does not name the colour makes one "
        "colour common by construction, and how often \"a house\" comes out red is the model's own bias (the "
        "*rate without* column; flagged *rare* when under 40%).",
    ]
    if figure:
        lines += [
            "",
            "## Side by side",
            "",
            f"![no negative vs negative, same seeds]({figure})",
            "",
            f"Rows are the first {FIGURE_ROWS} seeds whose image *without* the negative the detector reads as "
            "containing the concept (chosen before looking at the images with the negative; lowest other seeds "
            "fill up when fewer have it), in seed order; the right column is the same seed and settings with the "
            "negative prompt. Each title gives the count over all seeds of the run.",
        ]
    return "\n".join(lines) + "\n"


def figure_seeds(result: PairResult, rows: int = FIGURE_ROWS) -> list[int]:
    """The first `rows` seeds showing the concept without the negative, padded with the lowest other seeds."""
    chosen = list(result.seeds_with_concept_without[:rows])
    for seed in range(result.first_seed, result.first_seed + result.n_seeds):
        if len(chosen) >= min(rows, result.n_seeds):
            break
        if seed not in chosen:
            chosen.append(seed)
    return sorted(chosen)


def figure_title(result: PairResult) -> str:
    """The prompt, and in how many images the target concept was detected without and with the negative."""
    n = result.n_seeds
    return (f"\u201c{result.prompt}\u201d: {result.concept} in {len(result.seeds_with_concept_without)}/{n} "
            f"images without, {len(result.seeds_with_concept_with)}/{n} with the negative")


def negatives_figure(results: Sequence[PairResult], model=None, *, pairs=FIGURE_PAIRS, rows: int = FIGURE_ROWS,
                     runtime=None, min_cell: int = 160, batch_size: int = 16,
                     method: Method | None = None) -> Image.Image | None:
    """The guide's figure: for each of `pairs` among `results`, a labelled grid (no negative | negative) of
    `rows` seeds, the grids side by side; the negative column is rendered with `method`, as the run's renders
    with the negative were. None when none of `pairs` was evaluated."""
    options = (method or Method()).options
    from avert.output.grid import compare_grid
    from avert.pipeline.generate import generate

    by_key = {(r.prompt, r.negative): r for r in results}
    chosen = [by_key[k] for k in pairs if k in by_key]
    if not chosen:
        return None
    components = load_components(model)
    grids = []
    for r in chosen:
        settings = Settings(steps=r.steps, cfg_scale=r.cfg_scale, sampler=r.sampler, batch_size=batch_size)
        seeds = figure_seeds(r, rows)
        columns = []
        for negative in ("", r.negative):
            request = settings.request(r.prompt, negative, 0, 1, options if negative else ())
            images = [generate(request.replace(seed=s), components, runtime=_runtime(runtime)).images[0].image
                      for s in seeds]
            columns.append((NO_NEGATIVE if not negative else f"Negative prompt: {negative}", images))
        grids.append(compare_grid(columns, title=figure_title(r), row_labels=[f"seed {s}" for s in seeds],
                                  min_cell=min_cell))
    return hstack(grids)


def _runtime(runtime):
    from avert.pipeline.runtime import Runtime

    return runtime or Runtime()


def hstack(images: Sequence[Image.Image], gap: int = 24) -> Image.Image:
    """Images side by side on white, top-aligned, `gap` pixels apart."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def absent_page(results: Sequence[PairResult], info: RunInfo, figure: str | None = "negatives-absent.png",
                model_default: str | None = None) -> str:
    """The markdown page docs/eval/negatives-absent.md: standing negatives whose concept the prompt lacks."""
    worst = worst_fidelity_drop(results)
    within = [r for r in results if r.fidelity_drop <= MAX_FIDELITY_DROP + 1e-9]
    lines = [
        "# Negative prompts the image does not need: what they cost",
        "",
        info.line("avert eval negatives --absent" + _method_flag(results, model_default)),
        "",
        method_line(results, model_default, "negatives-absent.md"),
        "",
        f"Fidelity drop within {MAX_FIDELITY_DROP * 100:.0f} points: **{len(within)} of {len(results)} pairs**."
        + (f" Worst: **{worst.fidelity_drop:+.2f}** ({worst.fidelity_measure} {worst.fidelity_without:.2f} -> "
           f"{worst.fidelity_with:.2f}) for \"{worst.prompt}\" with negative \"{worst.negative}\"." if worst else ""),
        "",
        well_formed_line(results),
        "",
        markdown_table(results),
        "",
        "Each prompt here rarely or never produces the negative's concept, as when a negative list is kept for every "
        "prompt (\"sepia, black and white, hands\"). The image should then stay what the prompt alone gives: "
        "*fidelity* (defined as in [negatives.md](negatives.md): the prompt's own concepts, or the share of "
        "well-formed images for a generic prompt) should not fall. Suppression is undefined where the concept "
        "never appears without the negative. The first row is the README's main command.",
    ]
    if figure:
        lines += ["", f"![no negative vs negative, same seeds]({figure})", "",
                  "The first pairs, without (left) and with (right) the negative, on the run's lowest seeds (a seed "
                  "whose image has the concept without the negative would come first)."]
    return "\n".join(lines) + "\n"


def method_line(results: Sequence[PairResult], model_default: str | None = None, default_page: str = "") -> str:
    """Which guidance made the renders with the negative (the renders without it are plain CFG)."""
    method = run_method(results)
    whose = ("the model's default (`avert generate` uses it when no `--guidance` is given)"
             if model_default in (None, method) else
             f"`--method {method}`; the model's default is {model_default}, measured in "
             f"[{default_page}]({default_page})")
    return (f"Guidance of the renders with the negative: **{method}**, {whose}. The renders without a negative are "
            "plain CFG, for every method.")


def _method_flag(results: Sequence[PairResult], model_default: str | None) -> str:
    method = run_method(results)
    return "" if model_default in (None, method) else f" --method {method}"


def well_formed_line(results: Sequence[PairResult]) -> str:
    """How many pairs keep their share of well-formed images (a sky, a ground, not speckled) within the fidelity
    target: for a prompt that names concepts, fidelity counts those and can hide a wrecked background."""
    within = sum(r.well_formed_without - r.well_formed_with <= MAX_FIDELITY_DROP + 1e-9 for r in results)
    pairs = "; ".join(f"\"{r.prompt}\" / \"{r.negative}\" {r.well_formed_without:.2f} -> {r.well_formed_with:.2f}"
                      for r in results)
    return (f"Well-formed images (a sky, a ground, not speckled) within {MAX_FIDELITY_DROP * 100:.0f} points: "
            f"**{within} of {len(results)} pairs**: {pairs}.")


def write_negatives_docs(results: Sequence[PairResult], info: RunInfo, docs: Path,
                         figure: Image.Image | None = None, absent: bool = False,
                         model_default: str | None = None) -> Path:
    """Write docs/eval/negatives.md (negatives-absent.md with `absent`), and the .png beside it when a figure
    is given; the markdown path. A run of a method other than the model's default (`model_default`; None: the
    run's own) writes negatives-METHOD.md (negatives-absent-METHOD.md), so the default's page stays."""
    folder = Path(docs) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    method = run_method(results)
    name = ("negatives-absent" if absent else "negatives") + page_suffix(method, model_default)
    if figure is not None:
        figure.save(folder / f"{name}.png")
    png = f"{name}.png" if figure is not None else None
    page = folder / f"{name}.md"
    default = model_default or method
    page.write_text(absent_page(results, info, png, default) if absent else negatives_page(results, info, png, default))
    return page


def run_method(results: Sequence[PairResult]) -> str:
    """The one method label of a run's rows ("cfg" for none)."""
    methods = {r.method for r in results}
    if len(methods) > 1:
        raise ValueError(f"a docs page is one method's; these rows have {sorted(methods)}")
    return methods.pop() if methods else "cfg"


def page_suffix(method: str, model_default: str | None) -> str:
    """"" for the model's default method, else "-METHOD" (a label of GUIDANCE_METHODS: letters and '-')."""
    if model_default is None or method == model_default:
        return ""
    if not re.fullmatch(r"[a-z][a-z-]*", method):
        raise ValueError(f"method: {method!r} is not a page name; a docs page is written for a bare method only")
    return "-" + method
