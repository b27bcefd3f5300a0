"""Does naming a concept produce it? `avert eval concepts`.

For every detector concept, a natural prompt naming it (`CONCEPT_PROMPTS`, worded as the world's captions
word it) is rendered with seeds 0 .. n-1, and the detector reads how often the concept is there: the
*rate*. The same concept's *base rates* under "a landscape" and under the empty prompt show how often it
appears unasked. The project's target is a rate of at least `TARGET` for every concept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from avert.errors import AvertError
from avert.evaluation.common import (
    Reading,
    Renderer,
    RunInfo,
    Settings,
    Timer,
    check_seeds,
    load_components,
    load_detector,
    read_images,
)
from avert.world import CONCEPTS, mentioned_concepts

TARGET = 0.9
BASE_PROMPTS = ("a landscape", "")

CONCEPT_PROMPTS: dict[str, str] = {
    "sun": "the sun",
    "moon": "the moon",
    "tree": "a tree",
    "house": "a house",
    "red house": "a red house",
    "blue house": "a blue house",
    "yellow house": "a yellow house",
    "white house": "a white house",
    "cloud": "clouds",
    "boat": "a boat on the sea",
    "mountain": "mountains",
    "flowers": "flowers",
    "hand": "a hand",
    "stars": "a night sky with stars",
    "day sky": "a landscape under a blue sky",
    "sunset": "a landscape at sunset",
    "night": "a landscape at night",
    "cloudy sky": "a landscape under a cloudy sky",
    "grass": "green grass",
    "sand": "a desert",
    "snow": "a snowy landscape",
    "sea": "the sea",
    "green tones": "a landscape, green tones",
    "warm tones": "a landscape, warm tones",
    "blue tones": "a landscape, blue tones",
    "black and white": "a landscape in black and white",
    "sepia": "a landscape in sepia",
}
assert tuple(CONCEPT_PROMPTS) == CONCEPTS


@dataclass(frozen=True)
class ConceptResult:
    """One row: the concept, its prompt, how often it is detected when named and when not."""

    concept: str
    prompt: str
    rate: float
    base_rate_landscape: float
    base_rate_empty: float
    well_formed: float
    speckle: float
    n_seeds: int
    cfg_scale: float
    steps: int
    sampler: str
    seconds: float

    @property
    def meets_target(self) -> bool:
        return self.rate >= TARGET

    def to_dict(self) -> dict:
        return {**asdict(self), "meets_target": self.meets_target}


def summarize_concept(concept: str, prompt: str, named: Reading, landscape: Reading, empty: Reading,
                      settings: Settings, seconds: float) -> ConceptResult:
    return ConceptResult(concept, prompt, named.rate(concept), landscape.rate(concept), empty.rate(concept),
                         float(named.well_formed.mean()), float(named.speckled.mean()), len(named.speckled),
                         settings.cfg, settings.steps, settings.sampler_name, round(seconds, 3))


def prompt_concepts(texts: Sequence[str]) -> list[tuple[str, str]]:
    """(concept, prompt) for every concept each text names (`--prompt`), to measure phrasings other than
    `CONCEPT_PROMPTS` ("a lone tree"); an `AvertError` naming a text that names no concept."""
    rows = []
    for text in texts:
        found = mentioned_concepts(text)
        if not found:
            raise AvertError(f"prompt: {text!r} names no concept the detector knows; name one of: "
                             f"{', '.join(CONCEPTS)}")
        rows += [(concept, text) for concept in CONCEPTS if concept in found]
    return rows


def evaluate_positive_concepts(
    model=None,
    seeds: int = 64,
    concepts: Sequence[str] = CONCEPTS,
    cfg_scale: float | None = None,
    steps: int = 20,
    sampler: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    *,
    rows: Sequence[tuple[str, str]] | None = None,
    detector=None,
    runtime=None,
) -> list[ConceptResult]:
    """For each concept: its detection rate under its prompt vs under "a landscape" and the empty prompt.

    `rows` ((concept, prompt) pairs, as `prompt_concepts` gives) replaces `concepts` and their built-in prompts."""
    check_seeds(seeds)
    if rows is None:
        unknown = [c for c in concepts if c not in CONCEPT_PROMPTS]
        if unknown:
            raise ValueError(f"no prompt for concept(s) {unknown}")
        rows = [(c, CONCEPT_PROMPTS[c]) for c in concepts]
    settings = Settings(steps=steps, cfg_scale=cfg_scale, sampler=sampler, batch_size=batch_size)
    settings.validate(seeds)
    components = load_components(model)
    detector = load_detector(detector)
    total = len({prompt for _, prompt in rows} | set(BASE_PROMPTS)) * seeds
    renderer = Renderer(components, settings, runtime, progress, total=total, desc="Evaluating concepts")
    readings: dict[str, Reading] = {}

    def reading(prompt: str) -> Reading:
        if prompt not in readings:
            readings[prompt] = read_images(renderer.images(prompt, "", seeds), detector)
        return readings[prompt]

    try:
        landscape, empty = (reading(p) for p in BASE_PROMPTS)
        results = []
        for concept, prompt in rows:
            timer = Timer()
            named = reading(prompt)
            results.append(summarize_concept(concept, prompt, named, landscape, empty, settings, timer.lap()))
    finally:
        renderer.close()
    return results


def results_json(results: Sequence[ConceptResult]) -> str:
    return json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False)


def markdown_table(results: Sequence[ConceptResult]) -> str:
    lines = [
        "| concept | prompt | rate when named | base rate, \"a landscape\" | base rate, empty prompt "
        f"| well-formed | speckle | >= {TARGET:.0%} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.concept} | {r.prompt} | {r.rate:.2f} | {r.base_rate_landscape:.2f} "
                     f"| {r.base_rate_empty:.2f} | {r.well_formed:.2f} | {r.speckle:.2f} "
                     f"| {'yes' if r.meets_target else '**no**'} |")
    return "\n".join(lines)


def _builtin(result: ConceptResult) -> bool:
    """Whether the row was measured under its concept's built-in prompt (not a `--prompt` phrasing)."""
    return CONCEPT_PROMPTS.get(result.concept) == result.prompt


def _named(result: ConceptResult) -> str:
    """The concept, and its prompt when it is not the built-in one (`--prompt`)."""
    return result.concept if _builtin(result) else f"{result.concept} under \"{result.prompt}\""


def summary_lines(results: Sequence[ConceptResult]) -> list[str]:
    below = [r for r in results if not r.meets_target]
    if not results:
        return []
    lowest = min(results, key=lambda r: r.rate)
    what = "concepts" if all(_builtin(r) for r in results) else "(concept, prompt) rows"
    if not below:
        return [f"Every one of the {len(results)} {what} reaches {TARGET:.0%} when named (lowest: "
                f"{_named(lowest)}, {lowest.rate:.2f})."]
    return [f"{len(results) - len(below)} of {len(results)} {what} reach {TARGET:.0%} when named; below: "
            + ", ".join(f"{_named(r)} ({r.rate:.2f})" for r in sorted(below, key=lambda r: r.rate)) + "."]


def concepts_page(results: Sequence[ConceptResult], info: RunInfo) -> str:
    lines = [
        "# Concepts: does naming a concept produce it?",
        "",
        info.line("avert eval concepts"),
        "",
        *summary_lines(results),
        "",
        markdown_table(results),
        "",
        "- **rate when named**: share of images of the concept's prompt in which the detector finds the concept "
        f"(target: at least {TARGET:.0%}).",
        "- **base rate**: the same share under \"a landscape\" and under the empty prompt, i.e. how often the "
        "concept appears without being asked for.",
        "- **well-formed**: share of the named prompt's images in which the detector finds a sky and a ground "
        "and which are not speckled; **speckle**: share whose high-frequency energy is above the 99th percentile "
        "of the world's own renders.",
    ]
    return "\n".join(lines) + "\n"


def write_concepts_docs(results: Sequence[ConceptResult], info: RunInfo, docs: Path) -> Path:
    folder = Path(docs) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "concepts.md"
    page.write_text(concepts_page(results, info))
    return page
