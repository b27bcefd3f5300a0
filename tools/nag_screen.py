"""NAG's settings on the embedded model at CFG 1, where CFG cannot carry a negative: prints the table and writes
docs/eval/nag.md.

    python tools/nag_screen.py [--seeds 16] [--cfg-scale 1]

Every setting renders the 14 default pairs of `avert eval negatives` with the same seeds and the same renders
without a negative (`avert.evaluation.common.Renderer` caches them), plain CFG as the guidance method (the
embedded model's default, gated, needs CFG above 1 to act), and reads them with the shipped concept detector.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from avert.argtypes import bounded  # noqa: E402
from avert.evaluation.common import Renderer, RunInfo, Settings  # noqa: E402
from avert.evaluation.negatives import DEFAULT_PAIRS, Method, evaluate_pairs, mean_suppression  # noqa: E402
from avert.models.default import EMBEDDED_MODEL  # noqa: E402
from avert.models.loader import load_model  # noqa: E402

SETTINGS = (  # label, request fields of the renders with the negative
    ("no NAG (CFG 1 alone)", ()),
    ("NAG 3, tau 2.5, alpha 0.5 (the authors')", (("nag_scale", 3.0),)),
    ("NAG 5, tau 2.5, alpha 0.5", (("nag_scale", 5.0),)),
    ("NAG 2, tau 5, alpha 1", (("nag_scale", 2.0), ("nag_tau", 5.0), ("nag_alpha", 1.0))),
    ("NAG 3, tau 5, alpha 1", (("nag_scale", 3.0), ("nag_tau", 5.0), ("nag_alpha", 1.0))),
    ("NAG 5, tau 5, alpha 1", (("nag_scale", 5.0), ("nag_tau", 5.0), ("nag_alpha", 1.0))),
)


def row(label: str, results) -> dict:
    drops = [r.fidelity_without - r.fidelity_with for r in results]
    worst = int(np.argmax(drops))
    collateral = [r.collateral_rates for r in results if r.collateral_rates is not None]
    return {"label": label, "suppression": mean_suppression(results),
            "removed": sum(r.suppression is not None and r.suppression >= 0.8 for r in results),
            "fidelity": float(np.mean([r.fidelity_with for r in results])),
            "fidelity_without": float(np.mean([r.fidelity_without for r in results])),
            "worst": drops[worst], "worst_pair": f"{results[worst].prompt} / {results[worst].negative}",
            "hurt": sum(d > 0.1 for d in drops), "collateral": float(np.mean(collateral)) if collateral else None}


def page(rows: list[dict], info: RunInfo, command: str, pairs: int) -> str:
    head = ["# NAG on the embedded model, at CFG 1", "", info.line(command), "",
            "At CFG 1 the negative's UNet branch does nothing (`e_n + 1 (e_c - e_n) = e_c`); NAG "
            "(`--nag-scale`, `avert.guidance.attention`) carries it in the cross-attention layers instead. Each "
            f"setting on the {pairs} default pairs of [negatives.md](negatives.md), against the same renders without a "
            "negative: mean suppression, pairs with suppression at least 0.8, mean prompt fidelity with the negative "
            "(without it: the first row's), the worst fidelity drop and the pairs that lose more than 0.10, and "
            "collateral (a) as on negatives.md. Guidance method cfg (the embedded model's own, gated, needs CFG "
            "above 1).", "",
            "| setting | suppression | pairs >= 0.8 | fidelity | worst drop (pair) | pairs losing > 0.10 | collateral (a) |",
            "|---|---|---|---|---|---|---|"]
    body = [f"| {r['label']} | {r['suppression']:.2f} | {r['removed']} of {pairs} | {r['fidelity']:.2f} "
            f"(without: {r['fidelity_without']:.2f}) | {r['worst']:+.2f} ({r['worst_pair']}) | {r['hurt']} | "
            f"{'n/a' if r['collateral'] is None else format(r['collateral'], '.3f')} |" for r in rows]
    return "\n".join(head + body) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=bounded("seeds", int, 1, 256), default=16)
    parser.add_argument("--cfg-scale", type=bounded("cfg-scale", float, 0.0, 30.0), default=1.0)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    components = load_model(EMBEDDED_MODEL)
    settings = Settings(cfg_scale=args.cfg_scale)
    renderer = Renderer(components, settings, progress=False)
    rows = []
    for label, options in SETTINGS:
        results = evaluate_pairs(DEFAULT_PAIRS, components, seeds=args.seeds, cfg_scale=args.cfg_scale,
                                 steps=settings.steps, batch_size=settings.batch_size, progress=False,
                                 renderer=renderer, method=Method(label, (("guidance", "cfg"),) + options))
        rows.append(row(label, results))
        print(f"{label}: suppression {rows[-1]['suppression']:.2f}, fidelity {rows[-1]['fidelity']:.2f}, worst "
              f"drop {rows[-1]['worst']:+.2f}", flush=True)
    command = "python tools/nag_screen.py" + (f" --seeds {args.seeds}" if args.seeds != 16 else "") + (
        f" --cfg-scale {args.cfg_scale:g}" if args.cfg_scale != 1.0 else "")
    text = page(rows, RunInfo.collect(components, args.seeds, settings), command, len(DEFAULT_PAIRS))
    target = args.docs / "eval" / "nag.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
