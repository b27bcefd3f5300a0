"""Negatives in words the model never saw (`avert eval paraphrases`): does a paraphrase still remove its concept,
and does any make it more common (a backfire)?

The embedded model learned every concept from the world's captions (`avert.world.captions`); its text encoder
(a pretrained BERT) knows English, so a paraphrase reaches the UNet as an encoding near, or not near, the words it
was trained on. `PARAPHRASES` holds three per concept, made of words that occur in no caption (`caption_words`
reads them from the captions themselves; a test holds every paraphrase to it). The eval takes each default pair
of `avert eval negatives` (a prompt whose images often hold the concept without naming it), keeps its prompt and
replaces the negative by each paraphrase; suppression = 1 - rate with / rate without, as there, on the same
seeds, against the same renders without a negative. A suppression below 0 is a backfire.

`alignment` says why a paraphrase acts as it does: the cosine, per sample, between its direction e_n - e_0 and
the literal negative's at the first guided step (the same noise and prompt), averaged over the seeds: near 1 the
model reads the paraphrase as the word; near 0 or below, it pushes somewhere else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from avert.evaluation.negatives import DEFAULT_PAIRS, Method, Pair, PairResult
from avert.world.vocabulary import caption_words

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "sun": ("solar disc", "blazing orb", "daystar"),
    "moon": ("lunar disc", "lunar glow", "selene"),
    "tree": ("oaks", "woodland", "foliage"),
    "house": ("dwelling", "cabin", "hut"),
    "red house": ("crimson", "scarlet", "vermilion"),
    "blue house": ("azure dwelling", "cobalt cabin", "navy hut"),
    "yellow house": ("golden dwelling", "lemon cabin", "amber hut"),
    "white house": ("ivory dwelling", "pale cabin", "chalky hut"),
    "cloud": ("cumulus", "vapour", "haze"),
    "boat": ("vessel", "yacht", "dinghy"),
    "mountain": ("peaks", "summits", "alps"),
    "flowers": ("blossoms", "blooms", "petals"),
    "hand": ("fingers", "palm", "fist"),
    "stars": ("constellations", "twinkles", "celestial specks"),
    "day sky": ("azure heavens", "noon", "cerulean firmament"),
    "sunset": ("twilight", "evening glow", "golden hour"),
    "night": ("darkness", "midnight", "nocturne"),
    "cloudy sky": ("gloomy heavens", "murky firmament", "leaden skies"),
    "grass": ("lawn", "turf", "pasture"),
    "sand": ("beach", "arid wasteland", "gravel"),
    "snow": ("frost", "ice", "blizzard"),
    "sea": ("waves", "lake", "marine expanse"),
    "green tones": ("verdant hue", "emerald cast", "viridian grade"),
    "warm tones": ("amber cast", "orange hue", "toasty palette"),
    "blue tones": ("azure cast", "cyan grade", "cobalt hue"),
    "black and white": ("achromatic", "colourless", "desaturated"),
    "sepia": ("antique brownish cast", "vintage brown", "daguerreotype"),
}


def familiar_words(paraphrases: dict[str, tuple[str, ...]] = PARAPHRASES,
                   vocabulary: frozenset[str] | None = None) -> list[tuple[str, str, str]]:
    """(concept, paraphrase, word) for every word of a paraphrase that a caption uses: none in a valid set."""
    vocabulary = caption_words() if vocabulary is None else vocabulary
    return [(concept, text, word) for concept, texts in paraphrases.items() for text in texts
            for word in re.findall(r"[a-z]+", text.lower()) if word in vocabulary]


def pairs(base: Sequence[Pair] = DEFAULT_PAIRS) -> tuple[Pair, ...]:
    """Each default pair as it is, then with each paraphrase of its concept as the negative."""
    literal = tuple(base)
    return literal + tuple(Pair(p.prompt, text, p.concept, p.prompt_concepts)
                           for p in literal for text in PARAPHRASES[p.concept])


def methods_for(default_guidance: str) -> tuple[Method, ...]:
    """Plain CFG, and the model's default method when it is another."""
    own = () if default_guidance == "cfg" else (Method(default_guidance, (("guidance", default_guidance),)),)
    return (Method("cfg"),) + own


@dataclass(frozen=True)
class ParaphraseRow:
    """One paraphrase under one method, beside its literal negative."""

    method: str
    prompt: str
    concept: str
    literal: str
    paraphrase: str
    rate_without: float
    literal_suppression: float | None
    suppression: float | None
    alignment: float | None = None


def rows(results: dict[str, list[PairResult]], literals: int,
         alignments: dict[tuple[str, str], float] | None = None) -> list[ParaphraseRow]:
    """The rows of every method's results (`pairs()` order: the `literals` literal pairs first)."""
    out = []
    for label, found in results.items():
        literal = {r.prompt: r for r in found[:literals]}
        for r in found[literals:]:
            base = literal[r.prompt]
            out.append(ParaphraseRow(label, r.prompt, r.concept, base.negative, r.negative, r.rate_without,
                                     base.suppression, r.suppression,
                                     (alignments or {}).get((r.prompt, r.negative))))
    return out


def summary(table: Sequence[ParaphraseRow]) -> list[str]:
    """Per method: mean suppression over the paraphrases (target at least 0.7), the lowest, the backfires
    (below 0, target none), and the literal negatives' mean for comparison."""
    lines = []
    for method in dict.fromkeys(r.method for r in table):
        mine = [r for r in table if r.method == method and r.suppression is not None]
        values = [r.suppression for r in mine]
        literal = {r.prompt: r.literal_suppression for r in mine if r.literal_suppression is not None}
        if not mine:
            lines.append(f"- **{method}**: no suppression is defined (the concepts never appeared without a negative)")
            continue
        worst = min(mine, key=lambda r: r.suppression)
        backfires = [r for r in mine if r.suppression < 0]
        lines.append(f"- **{method}**: mean suppression over {len(values)} paraphrases **{np.mean(values):.2f}** "
                     f"(target at least 0.7: {'met' if np.mean(values) >= 0.7 else 'missed'}); the literal "
                     f"negatives' {np.mean(list(literal.values())) if literal else float('nan'):.2f}; lowest {worst.suppression:.2f} "
                     f"(\"{worst.paraphrase}\" for {worst.concept}); {len(backfires)} below 0 (target none: "
                     f"{'met' if not backfires else 'missed'}"
                     + (": " + ", ".join(f"\"{r.paraphrase}\" {r.suppression:.2f}" for r in backfires) if backfires
                        else "") + ")")
    return lines


def table_markdown(table: Sequence[ParaphraseRow]) -> str:
    lines = ["| method | prompt | concept | literal | its suppression | paraphrase | suppression | alignment |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        fmt = (lambda v: "n/a" if v is None else f"{v:.2f}")
        lines.append(f"| {r.method} | {r.prompt} | {r.concept} | {r.literal} | {fmt(r.literal_suppression)} | "
                     f"{r.paraphrase} | {fmt(r.suppression)} | {fmt(r.alignment)} |")
    return "\n".join(lines)


def alignment(components, prompt: str, literal: str, paraphrase: str, seeds: Sequence[int], steps: int = 20
              ) -> float:
    """Mean over `seeds` of cos(e_p - e_0, e_l - e_0) at the first step of a run of `prompt` (plain CFG), e_l the
    literal negative's prediction and e_p the paraphrase's, per sample over every element."""
    import torch

    from avert.guidance.denoiser import Denoiser
    from avert.guidance.strategy import EMPTY, negative_branch
    from avert.pipeline.conditioning import condition
    from avert.pipeline.generate import check, latent_shape, make_schedulers, resolve
    from avert.pipeline.runtime import Runtime
    from avert.request import GenerationRequest, Negative
    from avert.sampling.noise import initial_noise
    from avert.schema import Limits

    request = GenerationRequest(prompt, negatives=(Negative(literal), Negative(paraphrase)), steps=steps,
                                seed=seeds[0], batch_size=len(seeds), guidance="cfg", negatives_rule="sum")
    request = resolve(check(request, Limits(), components), components)
    runtime = Runtime()
    text = condition(request, components, runtime)
    schedulers = make_schedulers(request, components, list(seeds), runtime)
    noise, _ = initial_noise(list(seeds), latent_shape(request, components))
    x, t = noise * schedulers[0].init_noise_sigma, schedulers[0].timesteps[0]
    model_in = torch.cat([s.scale_model_input(x[j: j + 1], t) for j, s in enumerate(schedulers)])
    names = (negative_branch(0), negative_branch(1), EMPTY)
    hidden = Denoiser(components.unet, text.branches, text.guidance, text.empty).hidden_states(names, 0, len(seeds))
    with torch.no_grad():
        out = components.unet(torch.cat([model_in] * 3), t, encoder_hidden_states=hidden, return_dict=False)[0]
    lit, par, empty = (o.flatten(1).double() for o in out.chunk(3))
    return float(torch.nn.functional.cosine_similarity(par - empty, lit - empty, dim=1).mean())


def page(table: Sequence[ParaphraseRow], info, command: str) -> str:
    lines = ["# Negatives in words the model never saw", "", info.line(command), "",
             "Each default pair of `avert eval negatives` keeps its prompt; its negative is replaced by each of three "
             "paraphrases made of words that occur in no caption of the world the embedded model learned from "
             "(`avert.evaluation.paraphrases.PARAPHRASES`, checked against the captions by a test). Suppression as "
             "on [negatives.md](negatives.md), against the same renders without a negative; below 0 the paraphrase "
             "made its concept more common. *alignment*: cos(e_p - e_0, e_l - e_0) at the first step, the "
             "paraphrase's direction against the literal negative's (1: the model reads them alike).", "",
             *summary(table), "", table_markdown(table), ""]
    return "\n".join(lines)


def write(table: Sequence[ParaphraseRow], info, docs, command: str):
    from pathlib import Path

    folder = Path(docs) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "paraphrases.md"
    target.write_text(page(table, info, command), encoding="utf-8")
    return target


def evaluate(components, seeds: int, settings, runtime=None, progress: bool = True, align_seeds: int = 4,
             base: Sequence[Pair] = DEFAULT_PAIRS) -> list[ParaphraseRow]:
    """Every method of `methods_for` on `pairs(base)`, same seeds and baseline renders; then each paraphrase's
    alignment on the first `align_seeds` seeds."""
    from avert.evaluation.common import Renderer
    from avert.evaluation.negatives import evaluate_pairs

    methods, measured = methods_for(components.default_guidance), pairs(base)
    total = (len(base) + len(measured) * len(methods)) * seeds
    found: dict[str, list[PairResult]] = {}
    renderer = Renderer(components, settings, runtime, progress, total, desc="Evaluating paraphrases")
    try:
        for method in methods:
            found[method.label] = evaluate_pairs(measured, components, seeds=seeds, cfg_scale=settings.cfg_scale,
                                                 steps=settings.steps, sampler=settings.sampler,
                                                 batch_size=settings.batch_size, progress=False, renderer=renderer,
                                                 method=method, runtime=runtime, first_seed=settings.first_seed)
    finally:
        renderer.close()
    literal = {p.prompt: p.negative for p in base}
    first = settings.first_seed
    aligned = {(p.prompt, p.negative): alignment(components, p.prompt, literal[p.prompt], p.negative,
                                                 range(first, first + min(align_seeds, seeds)), settings.steps)
               for p in measured[len(base):]}
    return rows(found, len(base), aligned)
