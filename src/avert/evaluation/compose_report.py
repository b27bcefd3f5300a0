"""The page and picture of `avert eval compose` (docs/eval/compose.md, compose-screen.md, compose.png)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from avert.evaluation.common import RunInfo, Settings, fmt
from avert.evaluation.compose import (
    ComposeRow,
    Method,
    _alone_options,
    _negatives_options,
)
from avert.world.ties import IMPLIED

TARGET_K = 4
TARGET_RATIO = 0.9
TARGET_FIDELITY_DROP = 0.03
TARGET_COLLATERAL = 0.05


def table(rows: Sequence[ComposeRow]) -> str:
    lines = ["| prompt | k | method | mean suppression | worst ratio to alone | fidelity without -> with "
             "| fidelity, worst alone | collateral (a) | Delta E absent (images) | Delta E outside (images) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.prompt} | {r.k} | {r.method} | {fmt(r.mean_suppression)} | {fmt(r.worst_ratio)} "
                     f"| {r.fidelity_without:.2f} -> {r.fidelity_with:.2f} | {fmt(r.fidelity_alone)} | {r.collateral_rates:.3f} "
                     f"| {fmt(r.delta_e_absent, 1)} ({r.n_absent}) | {fmt(r.delta_e_outside, 1)} ({r.n_outside}) |")
    return "\n".join(lines)


def concept_table(rows: Sequence[ComposeRow]) -> str:
    """Per named concept of the largest k of each prompt and method: its rates and suppression with, and alone."""
    lines = ["| prompt | method | k | negative (concept) | rate without | rate with | suppression | alone | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for text, concept, r0, r1, s, a, q in zip(r.negatives, r.concepts, r.rates_without, r.rates_with,
                                                   r.suppressions, r.suppressions_alone, r.ratios):
            lines.append(f"| {r.prompt} | {r.method} | {r.k} | {text} ({concept}) | {r0:.2f} | {r1:.2f} | {fmt(s)} "
                         f"| {fmt(a)} | {fmt(q)} |")
    return "\n".join(lines)


def ties_table() -> str:
    lines = ["| named concept | implied (changes there are not collateral) |", "|---|---|"]
    lines += [f"| {named} | {', '.join(tied)} |" for named, tied in IMPLIED.items()]
    return "\n".join(lines)


def target_lines(rows: Sequence[ComposeRow], default: str, baseline: str = "cfg, sum") -> list[str]:
    """The issue's targets at k = `TARGET_K` for the `default` method against the `baseline`, with each figure."""
    at = [r for r in rows if r.k == TARGET_K]
    mine = [r for r in at if r.method == default]
    base = {r.prompt + "|" + ",".join(r.negatives): r for r in at if r.method == baseline}
    if not mine or not base:
        return [f"(no rows at k = {TARGET_K} for both {default!r} and {baseline!r})"]
    lines = []
    for r in mine:
        b = base.get(r.prompt + "|" + ",".join(r.negatives))
        lines.append(f"- {r.prompt!r} with {', '.join(r.negatives)}: worst ratio to alone {fmt(r.worst_ratio)} "
                     f"({_met(r.worst_ratio is None or r.worst_ratio >= TARGET_RATIO)} >= {TARGET_RATIO}; {baseline}: "
                     f"{fmt(b.worst_ratio) if b else 'n/a'}); fidelity drop {r.fidelity_drop:+.2f} "
                     f"({_met(r.fidelity_drop <= TARGET_FIDELITY_DROP)} <= {TARGET_FIDELITY_DROP}; {baseline}: "
                     f"{b.fidelity_drop:+.2f}); collateral (a) {r.collateral_rates:.3f} ({_met(_collateral_ok(r, b))}"
                     f" <= {TARGET_COLLATERAL} and half of {baseline}'s {b.collateral_rates:.3f}); Delta E absent "
                     f"{fmt(r.delta_e_absent, 1)} ({_met(_pixels_ok(r, b))} half of {baseline}'s "
                     f"{fmt(b.delta_e_absent, 1)})")
    return lines


def _met(ok: bool) -> str:
    return "met:" if ok else "**missed**:"


def _collateral_ok(r: ComposeRow, b: ComposeRow) -> bool:
    return r.collateral_rates <= TARGET_COLLATERAL and r.collateral_rates <= b.collateral_rates / 2


def _pixels_ok(r: ComposeRow, b: ComposeRow) -> bool:
    if r.delta_e_absent is None or b.delta_e_absent is None:
        return True
    return r.delta_e_absent <= b.delta_e_absent / 2


def figure(rows: Sequence[ComposeRow], methods: Sequence[Method], components, settings: Settings, runtime=None,
           seeds: Sequence[int] = (0, 1, 2, 3), k: int = TARGET_K) -> Image.Image | None:
    """For each prompt and negatives at k: no negative | each method, `seeds` as rows; grids side by side."""
    from avert.evaluation.negatives import hstack
    from avert.output.grid import compare_grid
    from avert.pipeline.generate import generate
    from avert.pipeline.runtime import Runtime

    chosen = {(r.prompt, r.negatives): r for r in rows if r.k == k}
    if not chosen:
        return None
    grids = []
    for (prompt, texts), _ in chosen.items():
        columns = [("No negative prompt", [])] + [(f"{m.label}", []) for m in methods]
        for seed in seeds:
            requests = [settings.request(prompt, "", seed, 1)]
            requests += [settings.request(prompt, "", seed, 1, _negatives_options(texts, m) if k > 1
                                          else _alone_options(m)) for m in methods]
            for (_, images), request in zip(columns, requests):
                images.append(generate(request, components, runtime=runtime or Runtime()).images[0].image)
        grids.append(compare_grid(columns, title=f"{prompt!r} -n " + " -n ".join(texts),
                                  row_labels=[f"seed {s}" for s in seeds], min_cell=128))
    return hstack(grids)


def page(rows: Sequence[ComposeRow], info: RunInfo, default: str, command: str, screen: bool = False,
         picture: str | None = None) -> str:
    out = ["# Several negatives at once" + (": the screen of rules" if screen else ""), "",
           info.line(command), ""]
    out += ["Each prompt is rendered with the same seeds without a negative (plain CFG), with each negative alone, and "
            "with its first k negatives together; the shipped detector reads every image (definitions in "
            "`avert.evaluation.compose`). *Worst ratio to alone*: the smallest, over the named concepts in at least "
            "25% of the images without negatives, of the concept's suppression with the k negatives over its "
            "suppression as the only negative (same method). *Collateral (a)*: the mean absolute change of the "
            "detection rate of every concept neither named nor implied (table below). *Delta E*: mean CIE76 "
            "colour difference per pixel between the images with and without the negatives, over the whole image "
            "where none of the named concepts is (absent), and outside their regions where some are (outside); "
            "about 2.3 is just noticeable.", ""]
    if not screen:
        out += [f"## Targets (k = {TARGET_K}, {default} against plain CFG's sum)", ""]
        out += target_lines(rows, default) + [""]
    if picture:
        out += [f"![the prompts without negatives and with {TARGET_K}, per method]({picture})", ""]
    out += ["## By prompt, k and method", "", table(rows), "", "## Per concept", "", concept_table(rows), "",
            "## What a named concept implies", "",
            "Concepts tied to a named one by the world's scene rules (`avert.world.ties.IMPLIED`); a change there is "
            "not counted as collateral.", "", ties_table(), ""]
    return "\n".join(out)


def write(rows: Sequence[ComposeRow], info: RunInfo, docs: Path, default: str, command: str, screen: bool = False,
          picture: Image.Image | None = None) -> Path:
    folder = Path(docs) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    name = "compose-screen" if screen else "compose"
    if picture is not None:
        picture.save(folder / f"{name}.png")
    target = folder / f"{name}.md"
    target.write_text(page(rows, info, default, command, screen, f"{name}.png" if picture is not None else None),
                      encoding="utf-8")
    return target
