"""Pooling evaluation runs over disjoint seed ranges: `avert eval pool FILE...`.

A difference of one or two images in 64 per pair is inside seed noise, so a comparison sometimes needs more
seeds than one run was given. `avert eval negatives|methods --first-seed S --json` renders seeds S .. S+N-1
only, and this module merges its rows with an earlier run's rows (seeds 0 .. S-1) into the rows a single run
over seeds 0 .. S+N-1 would have given: every rate is an image count, so the pooled rate is the mean of the
runs' rates weighted by their seeds, and suppression = 1 - rate_with / rate_without is recomputed from the
pooled rates (not averaged).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from avert.errors import AvertError
from avert.evaluation.negatives import PairResult, pair_flags, suppression

# Means over images, pooled weighted by n_seeds.
POOLED_MEANS = ("rate_without", "rate_with", "fidelity_without", "fidelity_with", "well_formed_without",
                "well_formed_with", "speckle_without", "speckle_with", "unet_evals_per_image", "seconds_per_image")
# What must agree for two runs to be one measurement.
SAME_SETTINGS = ("concept", "prompt_concepts", "fidelity_measure", "cfg_scale", "steps", "sampler")
TUPLES = ("prompt_concepts", "flags", "seeds_with_concept_without", "seeds_with_concept_with", "concept_rates_without",
          "concept_rates_with")


def rows_from_json(text: str, source: str = "JSON") -> list[PairResult]:
    """The rows of `avert eval negatives|methods --json` output; an `AvertError` naming `source` otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AvertError(f"{source}: not JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise AvertError(f"{source}: expected a JSON list of row objects, as `avert eval negatives --json` prints")
    known = {f.name for f in fields(PairResult)}
    rows = []
    for i, row in enumerate(data):
        try:
            values = {k: tuple(v) if k in TUPLES else v for k, v in row.items() if k in known}
            rows.append(PairResult(**values))
        except TypeError as exc:
            raise AvertError(f"{source}: row {i} is not an evaluation row ({exc})") from None
        bad = [f for f in (*POOLED_MEANS, "n_seeds", "first_seed") if not _number(values.get(f, 0))]
        bad += [f for f in TUPLES[2:4] if not all(isinstance(s, int) for s in values.get(f, ()))]
        bad += [f for f in TUPLES[4:] if not all(_number(x) for x in values.get(f, ()))]
        if bad or not values.get("n_seeds", 0) > 0:
            raise AvertError(f"{source}: row {i} has a bad value in {', '.join(bad) or 'n_seeds'} "
                             "(numbers, a positive n_seeds and lists of integer seeds are expected)")
    return rows


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_rows(paths: Iterable[Path]) -> list[PairResult]:
    rows = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AvertError(f"file: cannot read {str(path)!r} ({exc.strerror})") from None
        rows.extend(rows_from_json(text, str(path)))
    return rows


def pool_results(rows: Sequence[PairResult]) -> list[PairResult]:
    """One row per (method, prompt, negative), pooled over its runs in seed order (first-seen order kept).

    The runs of a group must have the same settings and seed ranges that follow one another without gap or
    overlap (0..63 then 64..127), else an `AvertError` says which."""
    groups: dict[tuple[str, str, str], list[PairResult]] = {}
    for row in rows:
        groups.setdefault((row.method, row.prompt, row.negative), []).append(row)
    return [_pool(key, sorted(runs, key=lambda r: r.first_seed)) for key, runs in groups.items()]


def _pool(key: tuple[str, str, str], runs: list[PairResult]) -> PairResult:
    first = runs[0]
    name = f"{key[0]!r} / {key[1]!r} / {key[2]!r}"
    for run in runs[1:]:
        differ = [f for f in SAME_SETTINGS if getattr(run, f) != getattr(first, f)]
        if differ:
            raise AvertError(f"{name}: the runs differ in {', '.join(differ)}; only runs of the same settings pool")
    for before, after in zip(runs, runs[1:]):
        end = before.first_seed + before.n_seeds
        if after.first_seed != end:
            raise AvertError(f"{name}: seeds {before.first_seed}..{end - 1} are followed by seeds "
                             f"{after.first_seed}..{after.first_seed + after.n_seeds - 1}; the ranges must follow "
                             "one another without gap or overlap")
    n = sum(r.n_seeds for r in runs)
    means = {f: sum(getattr(r, f) * r.n_seeds for r in runs) / n for f in POOLED_MEANS}
    return replace(
        first, **means, **_pooled_collateral(runs), n_seeds=n, seconds=round(sum(r.seconds for r in runs), 3),
        suppression=suppression(means["rate_without"], means["rate_with"]), flags=pair_flags(means["rate_without"]),
        seeds_with_concept_without=tuple(s for r in runs for s in r.seeds_with_concept_without),
        seeds_with_concept_with=tuple(s for r in runs for s in r.seeds_with_concept_with),
    )


def _pooled_collateral(runs: list[PairResult]) -> dict:
    """Every concept's rates, weighted by seeds (none where a run lacks them), and each Delta E weighted by its
    images."""
    out: dict = {}
    n = sum(r.n_seeds for r in runs)
    for name in ("concept_rates_without", "concept_rates_with"):
        have = all(getattr(r, name) for r in runs)
        out[name] = tuple(np.sum([np.asarray(getattr(r, name)) * r.n_seeds for r in runs], axis=0) / n) if have else ()
    for value, count in (("delta_e_absent", "n_absent"), ("delta_e_outside", "n_outside")):
        parts = [(getattr(r, value), getattr(r, count)) for r in runs if getattr(r, value) is not None]
        images = sum(c for _, c in parts)
        out[value] = sum(v * c for v, c in parts) / images if images else None
        out[count] = images
    return {k: (tuple(float(x) for x in v) if isinstance(v, tuple) else v) for k, v in out.items()}


def by_method(rows: Sequence[PairResult]) -> dict[str, list[PairResult]]:
    """label -> rows, in first-seen order (the shape of `avert.evaluation.methods.evaluate_methods`)."""
    table: dict[str, list[PairResult]] = {}
    for row in rows:
        table.setdefault(row.method, []).append(row)
    return table
