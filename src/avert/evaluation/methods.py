"""Negative-guidance methods side by side: `avert eval methods`.

Every method renders the default pairs with the same seeds; the renders without the negative (plain CFG) are
shared, so each method is compared with the same baseline. Per method: mean suppression, mean fidelity with
the negative and its mean and worst drop, UNet evaluations and seconds per image (renders with the negative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avert.evaluation.common import Renderer, RunInfo, Settings, fmt, load_detector
from avert.evaluation.negatives import (DEFAULT_METHODS, DEFAULT_PAIRS, Method, Pair, PairResult, evaluate_pairs,
                                        mean_suppression)

SUPPRESSION_TOLERANCE = 0.05  # "within 5 points of plain CFG"
SAVING_TARGET = 0.25

# `avert eval methods --set guiders`: diffusers' guiders (`avert.guidance.guiders`) and the two APG formulations,
# each with the negative as the unconditional branch, against plain CFG; all at the run's cfg scale.
GUIDER_METHODS: tuple[Method, ...] = (
    Method("cfg"),
    Method("apg", (("guidance", "apg"),)),  # the paper's Algorithm 1 on denoised predictions, avert's eta 0
    Method("apg, diffusers formulation", (("guidance", "apg"), ("apg_formulation", "diffusers"))),  # eta 0 too
    Method("apg, diffusers formulation and defaults", (("guidance", "apg"), ("apg_formulation", "diffusers"),
                                                        ("apg_eta", 1.0), ("apg_norm_threshold", 15.0))),
    Method("cfg-zero-star", (("guidance", "cfg-zero-star"),)),  # diffusers' zero_init_steps 1
    Method("cfg-zero-star, no zero init", (("guidance", "cfg-zero-star"), ("zero_init_steps", 0))),
    Method("tangential", (("guidance", "tangential"),)),
    Method("frequency-decoupled", (("guidance", "frequency-decoupled"),)),  # scales cfg, cfg / 2
    Method("frequency-decoupled 10,5", (("guidance", "frequency-decoupled"), ("fdg_guidance_scales", "10,5"))),
    Method("magnitude-aware", (("guidance", "magnitude-aware"),)),  # alpha 8
    Method("pag", (("guidance", "pag"),)),  # diffusers' defaults: scale 2.8, mid block, steps 1..3 of 20
    Method("seg", (("guidance", "seg"),)),  # scale 2.8, mid block, infinite sigma, steps 1..19 of 20
    Method("slg", (("guidance", "slg"),)),  # scale 2.8, mid block skipped, steps 1..3 of 20
)
GUIDERS_LINK = ("diffusers' guiders (CFG-Zero*, TCFG, FDG, MAMBO-G, PAG, SEG, SLG) and the two APG formulations, "
                "with the same pairs and baseline: [methods-guiders.md](methods-guiders.md) (`avert eval methods "
                "--set guiders`).")
METHOD_SETS: dict[str, tuple[Method, ...]] = {"avert": DEFAULT_METHODS, "guiders": GUIDER_METHODS}
PAGES = {"avert": "methods.md", "guiders": "methods-guiders.md"}


def evaluate_methods(methods: Sequence[Method], components, *, seeds: int, settings: Settings, runtime=None,
                     progress: bool = True, pairs: Sequence[Pair] = DEFAULT_PAIRS) -> dict[str, list[PairResult]]:
    """label -> rows of `evaluate_pairs` for each method, one shared renderer (baseline rendered once)."""
    prompts = {p.prompt for p in pairs}
    total = (len(prompts) + len(pairs) * len(methods)) * seeds
    renderer = Renderer(components, settings, runtime, progress, total=total, desc="Evaluating methods")
    detector = load_detector()
    try:
        return {m.label: evaluate_pairs(pairs, components, seeds=seeds, cfg_scale=settings.cfg_scale,
                                        steps=settings.steps, sampler=settings.sampler,
                                        batch_size=settings.batch_size, progress=False, detector=detector,
                                        runtime=runtime, method=m, renderer=renderer,
                                        first_seed=settings.first_seed)
                for m in methods}
    finally:
        renderer.close()


def summary(rows: Sequence[PairResult]) -> dict:
    drops = [r.fidelity_drop for r in rows]
    return {
        "suppression": mean_suppression(rows),
        "fidelity_with": float(np.mean([r.fidelity_with for r in rows])),
        "mean_drop": float(np.mean(drops)),
        "worst_drop": float(np.max(drops)),
        "evals": float(np.mean([r.unet_evals_per_image for r in rows])),
        "seconds": float(np.mean([r.seconds_per_image for r in rows])),
        "collateral": _mean([r.collateral_rates for r in rows]),
        "delta_e_outside": _weighted([(r.delta_e_outside, r.n_outside) for r in rows]),
    }


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _weighted(pairs) -> float | None:
    """The mean of per-pair means weighted by their image counts (None where no pair has any)."""
    kept = [(v, n) for v, n in pairs if v is not None and n]
    return sum(v * n for v, n in kept) / sum(n for _, n in kept) if kept else None


def methods_table(table: dict[str, list[PairResult]]) -> str:
    base = summary(next(iter(table.values())))
    lines = ["| method | mean suppression | mean fidelity with | mean fidelity drop | worst fidelity drop "
             "| UNet evals / image | saved vs first | s / image | collateral (a) | Delta E outside |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in table.items():
        s = summary(rows)
        saved = f"{1 - s['evals'] / base['evals']:.0%}" if base["evals"] else "n/a"  # rows without counts
        lines.append(f"| {label} | {fmt(s['suppression'])} | {s['fidelity_with']:.3f} | {s['mean_drop']:+.3f} "
                     f"| {s['worst_drop']:+.2f} | {s['evals']:.1f} | {saved} "
                     f"| {s['seconds']:.3f} | {fmt(s['collateral'], 3)} | {fmt(s['delta_e_outside'], 1)} |")
    return "\n".join(lines)


def per_pair_table(table: dict[str, list[PairResult]]) -> str:
    labels = list(table)
    first = table[labels[0]]
    lines = ["| prompt | negative | rate without | " + " | ".join(f"{l}: supp. / fid." for l in labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    for i, r in enumerate(first):
        cells = [f"{fmt(table[l][i].suppression)} / {table[l][i].fidelity_with:.2f}" for l in labels]
        lines.append(f"| {r.prompt} | {r.negative} | {r.rate_without:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_lines(table: dict[str, list[PairResult]]) -> list[str]:
    """The issue's two targets, checked against the plain-CFG row (the first)."""
    labels = list(table)
    base = summary(table[labels[0]])
    better = [l for l in labels[1:] if (s := summary(table[l]))["suppression"] is not None
              and s["suppression"] >= base["suppression"] and s["fidelity_with"] > base["fidelity_with"]]
    savers = [l for l in labels[1:] if (s := summary(table[l]))["evals"] <= (1 - SAVING_TARGET) * base["evals"]
              and s["suppression"] is not None and s["suppression"] >= base["suppression"] - SUPPRESSION_TOLERANCE]
    return [
        f"- Better fidelity than plain CFG at equal or better suppression: "
        f"{', '.join(better) if better else '**none** (target missed)'}.",
        f"- At least {SAVING_TARGET:.0%} fewer UNet evaluations with suppression within "
        f"{SUPPRESSION_TOLERANCE * 100:.0f} points of plain CFG: "
        f"{', '.join(savers) if savers else '**none** (target missed)'}.",
    ]


def discordant_images(base: Sequence[PairResult], other: Sequence[PairResult]) -> tuple[int, int]:
    """(kept, removed): images (pair, seed) where the negative's concept is there with `other` but not with
    `base`, and the reverse. The seeds are the same, so these are the only images where the two differ."""
    kept = removed = 0
    for b, o in zip(base, other, strict=True):
        if (b.prompt, b.negative, b.first_seed, b.n_seeds) != (o.prompt, o.negative, o.first_seed, o.n_seeds):
            raise ValueError(f"rows of different pairs or seeds: {b.prompt!r}/{b.negative!r} and "
                             f"{o.prompt!r}/{o.negative!r}")
        with_b, with_o = set(b.seeds_with_concept_with), set(o.seeds_with_concept_with)
        kept += len(with_o - with_b)
        removed += len(with_b - with_o)
    return kept, removed


def sign_test(a: int, b: int) -> float:
    """Two-sided exact sign (McNemar) test of a against b discordant images: the chance of a split at least
    this uneven if either method were as likely to keep the concept, sum_{i <= min(a, b)} C(n, i) / 2^(n-1)."""
    n = a + b
    if n == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) for i in range(min(a, b) + 1)) / 2 ** (n - 1))


def paired_lines(table: dict[str, list[PairResult]]) -> list[str]:
    """Each method against the first on the same images: where the negative's concept differs."""
    labels = list(table)
    lines = []
    for label in labels[1:]:
        kept, removed = discordant_images(table[labels[0]], table[label])
        lines.append(f"- {label}: the concept stays in {kept} image(s) where {labels[0]} removed it and is removed "
                     f"in {removed} where {labels[0]} kept it (sign test p = {sign_test(kept, removed):.2f}).")
    return lines


def methods_page(table: dict[str, list[PairResult]], info: RunInfo, which: str = "avert") -> str:
    if which == "guiders":
        return guiders_page(table, info)
    return "\n".join([
        "# Negative-guidance methods compared",
        "",
        info.line("avert eval methods"),
        "",
        "Each method renders the default pairs of `avert eval negatives` with the same seeds; the images without "
        "the negative are plain CFG for every method (one shared baseline). Suppression and fidelity are "
        "defined as in [negatives.md](negatives.md); *UNet evals / image* counts branch evaluations (a batched "
        "forward over negative and prompt counts two) over the run, *s / image* is wall time with the negative.",
        "",
        GUIDERS_LINK,
        "",
        "## Targets",
        "",
        *target_lines(table),
        "",
        "Against plain CFG on the same images (a p above 0.05: no difference in suppression shown):",
        "",
        *paired_lines(table),
        "",
        methods_table(table),
        "",
        "## Per pair (suppression / fidelity with the negative)",
        "",
        per_pair_table(table),
        "",
        "## The methods",
        "",
        "- **cfg**: e = e_n + w (e_c - e_n), the negative as the unconditional branch.",
        "- **perp-neg** (Armandpour et al. 2023): e = e_0 + w d_c - w sum_i l_i d_i_perp, with d_i_perp the part "
        "of e_ni - e_0 orthogonal to d_c = e_c - e_0, per sample; three branches.",
        "- **dynamic** (after Koulischer et al. 2025): the three-branch formula with the negative's scale times "
        "an estimate of its concept's presence, clamp(<d_c, d_n> / |d_n|^2, 0, 1) per sample and step.",
        "- **apg** (Sadat et al. 2025, adaptive projected guidance): on denoised predictions D, the update "
        "d = D_c - D_n split into its parts along D_c and orthogonal to it, D = D_c + (w - 1) d_perp (eta 0: the "
        "parallel part dropped; no norm cap, no momentum); two branches, as cfg.",
        "- **posterior, negative scale 10** (Koulischer et al. 2025, as they do it): the three-branch formula with "
        "w_n 10 and each negative's strength min(p, 0.8) / 0.8, p the posterior of its concept, which starts at "
        "0.8 and is updated by Bayes' rule at every step from where the sample went (toward the negative "
        "branch's step mean or the empty one's); made for standing negatives, whose concept the image lacks.",
        "- **gated** (avert's): plain CFG with each negative's weight times a gate min(p, 0.8) / 0.8, p the "
        "posterior of its concept updated as above but from where the prompt's own branch would take the sample "
        "(its step mean), not where the sample went; so the gate stays open where the prompt makes the concept "
        "and shuts where it does not, and the negative's own push does not shut it. Three branches.",
        "- **rescale 0.7** (Lin et al. 2023): CFG whose result is rescaled toward the prompt's standard "
        "deviation, phi = 0.7; **rescale 0.2** the same with phi = 0.2.",
        "- **cfg 7.5, rescale 0.7** and **cfg 8, rescale 0.7**: rescale 0.7 at cfg scale 7.5 or 8 for the renders "
        "with the negative (the renders without it stay plain CFG at the run's scale): the higher scale gives back "
        "the suppression that rescale takes, and rescale keeps the larger scale from over-guiding.",
        "- **negative from 20%** (Ban et al. 2024, the negative's \"delayed effect\"): plain CFG with the empty "
        "prompt as the unconditional branch for the first 20% of the run, then the negative (a `Negative` window "
        "0.2-1); same cost as cfg.",
        "- **interval 0.3-0.8**: guidance (and so the negative's forward) only from 30% to 80% of the run; the "
        "prompt alone before and after (one branch).",
        "- **sigma interval (1, 20]** (Kynkaanniemi et al. 2024): guidance only where 1 < sigma <= 20, steps 4-13 "
        "of 20 with this model's schedule (sigma 98 at step 0 to 0.015 at step 19).",
        "- **s_min_uncond 100** (A1111): below sigma 100 (every step here) the negative is skipped on every "
        "other step.",
        "- **s_min_uncond 100, reuse** (avert's `guidance_reuse`, after FasterCache's CFG cache, Lv et al. 2024): "
        "the same skipped steps, but each adds the correction e - e_c of the guided step before it instead of "
        "none; same cost as s_min_uncond.",
        "- **interval 0.3-0.8, reuse**: the interval above; after it, each step adds the correction of the last "
        "guided step (before it there is none to reuse).",
        "",
    ])


def guiders_page(table: dict[str, list[PairResult]], info: RunInfo) -> str:
    return "\n".join([
        "# diffusers' guiders with negatives, and the two APG formulations",
        "",
        info.line("avert eval methods --set guiders"),
        "",
        "Each method renders the default pairs of `avert eval negatives` with the same seeds, the negative as the "
        "unconditional branch; the images without the negative are plain CFG for every method (one shared "
        "baseline). Suppression and fidelity as in [negatives.md](negatives.md); the guiders are diffusers' own "
        "classes called by avert (`avert.guidance.guiders`), equal within 1/255 to a loop calling them as "
        "diffusers' modular pipelines do (`tests/test_guiders.py`). avert's own methods: [methods.md](methods.md). "
        "*collateral (a)* is the mean absolute change of the rate of every concept neither the negative's nor "
        "implied by it, *Delta E outside* the mean CIE76 colour change outside the negative's concept's region in "
        "images that hold it (both as in [negatives.md](negatives.md)); lower is less collateral change.",
        "",
        "## Targets",
        "",
        *target_lines(table)[:1],
        "",
        "Against plain CFG on the same images (a p above 0.05: no difference in suppression shown):",
        "",
        *paired_lines(table),
        "",
        methods_table(table),
        "",
        "## Per pair (suppression / fidelity with the negative)",
        "",
        per_pair_table(table),
        "",
        "## The methods",
        "",
        "- **cfg**: e = e_n + w (e_c - e_n).",
        "- **apg** (avert's, the paper's Algorithm 1, Sadat et al. 2025): on denoised predictions, d = D_c - D_n, "
        "D = D_c + (w - 1)(d_perp + eta d_par), eta 0.",
        "- **apg, diffusers formulation**: diffusers' `AdaptiveProjectedGuidance` on the model's outputs, "
        "e = e_n + w (d_perp + eta d_par), d = e_c - e_n, at the same eta 0 (`apg_formulation diffusers`); "
        "**and defaults**: with diffusers' eta 1 and norm threshold 15. At eta 1 without a cap both formulations "
        "are CFG; below 1 the paper's drops the parallel part of (w - 1) d, diffusers' of w d, and diffusers' "
        "projects the raw outputs, not the denoised images.",
        "- **cfg-zero-star** (CFG-Zero*, arXiv:2503.18886): e = s* e_n + w (e_c - s* e_n), s* = <e_c, e_n> / "
        "|e_n|^2 per sample; the first step's prediction is zero (diffusers' zero_init_steps 1; **no zero init**: 0).",
        "- **tangential** (TCFG, arXiv:2503.18137): e_n replaced by its projection on the first right singular "
        "vector of [e_c; e_n], then CFG.",
        "- **frequency-decoupled** (FDG, arXiv:2506.19713): CFG per level of a two-level Laplacian pyramid, the "
        "high frequencies at the cfg scale, the low ones at half of it (avert's default); **10,5**: diffusers' "
        "default scales 10 and 5.",
        "- **magnitude-aware** (MAMBO-G, arXiv:2508.03442): CFG at w' = 1 + (w - 1) exp(-8 |e_c - e_n| / |e_n|) "
        "per sample.",
        "- **pag**, **seg**, **slg**: CFG plus s (e_c - e_p), e_p the prompt's prediction through a UNet perturbed "
        "in its mid block (pag: self-attention returns its values, Ahn et al. 2024; seg: self-attention's queries "
        "replaced by their mean, Hong 2024, infinite sigma; slg: the block skipped), s 2.8, at diffusers' default "
        "steps (pag, slg: int(0.01 n) < i < int(0.2 n), steps 1 to 3 of 20; seg: steps 1 to 19). A third branch "
        "where it acts.",
        "",
    ])


def write_methods_docs(table: dict[str, list[PairResult]], info: RunInfo, docs: Path, which: str = "avert") -> Path:
    folder = Path(docs) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / PAGES[which]
    page.write_text(methods_page(table, info, which), encoding="utf-8")
    return page
