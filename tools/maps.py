"""Do the maps of `avert compare --map` fall where the negative's object is? Prints the table and writes
docs/eval/maps.md (and docs/eval/maps.png).

    python tools/maps.py [--scenes 12] [--kinds boat house ...] [--methods cfg gated] [--threads N]

For each object kind, the first N world scenes holding it (`avert.evaluation.maps.cases`), img2img at strength
0.3 from their renders, the caption as the prompt and the object's name as the negative; the concentration of
the map (and of the pixel change) on the object's pixels: share of mass / share of area, 1 for none. A control
negative ("snow", named by none of these scenes) on the same scenes says what a negative that has nothing to
remove there does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from avert.argtypes import bounded  # noqa: E402
from avert.evaluation.common import machine  # noqa: E402
from avert.evaluation.maps import STEPS, STRENGTH, cases, read  # noqa: E402
from avert.models.default import EMBEDDED_MODEL  # noqa: E402
from avert.models.loader import load_model  # noqa: E402
from avert.output.maps import difference, overlay  # noqa: E402

KINDS = ("boat", "house", "tree", "flowers", "cloud", "sun", "moon")  # mountains stay in object_mask's reference
CONTROL = "snow"


def rows(kinds, methods, scenes: int, components):
    out, shown = [], []
    for kind in kinds:
        found = cases(kind, scenes)
        for method in methods:
            readings = [read(case, components, method, seed) for seed, case in enumerate(found)]
            control = [read(dataclasses.replace(case, kind=CONTROL), components, method, seed)
                       for seed, case in enumerate(found)]
            out.append({"kind": kind, "method": method, "scenes": len(found),
                        "area": float(np.mean([c.region.mean() for c in found])),
                        "map": float(np.mean([r.map_ratio for r in readings])),
                        "map_min": float(np.min([r.map_ratio for r in readings])),
                        "change": float(np.mean([r.change_ratio for r in readings])),
                        "attention": float(np.mean([r.attention_ratio for r in readings])),
                        "control": float(np.mean([r.map_ratio for r in control]))})
            print(f"{kind:9} {method:6} map {out[-1]['map']:.2f} (min {out[-1]['map_min']:.2f}) change "
                  f"{out[-1]['change']:.2f} attention {out[-1]['attention']:.2f} control {out[-1]['control']:.2f}",
                  flush=True)
            if method == methods[0]:
                shown.append(readings[0])
    return out, shown


def picture(shown, path: Path, cell: int = 96) -> None:
    """Per kind: the render, without the negative, with it, its map over it, the pixel change."""
    canvas = Image.new("RGB", (5 * cell, len(shown) * cell), "white")
    for i, r in enumerate(shown):
        cells = [Image.fromarray(r.case.image), r.without, r.with_,
                 overlay(r.with_, r.map, float(r.map.min()), float(r.map.max())), difference(r.without, r.with_)]
        for j, image in enumerate(cells):
            canvas.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (j * cell, i * cell))
    canvas.save(path)


def page(table: list[dict], kinds, seconds: float, scenes: int) -> str:
    lines = ["# Where a negative acted: do the maps fall on the object?", "",
             f"Made by `python tools/maps.py --scenes {scenes}` on {datetime.now(timezone.utc):%Y-%m-%d}, "
             f"{machine()}, in {seconds / 60:.1f} min. Embedded model, "
             f"{STEPS} steps, img2img at strength {STRENGTH} from renders of world scenes that hold the object, "
             "the scene's caption as the prompt and the object's name as the only negative.", "",
             "Concentration = (share of the map's mass on the object's pixels) / (share of the image they cover): "
             "1 is no preference. *map*: the map `avert compare --map` shows (`avert.guidance.attribution`). "
             "*pixel change*: the same for the pixel change between the images without and with the negative. "
             "*cross-attention*: the second view, the attention of the negative's words in its branch after DAAM "
             "(`avert.evaluation.maps.CrossAttention`). *control map*: the map of the negative "
             f"\"{CONTROL}\" (not in these scenes) on the same scenes and seeds.", "",
             "| object | method | scenes | object's area | map | map, lowest scene | pixel change | cross-attention "
             "| control map |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['kind']} | {r['method']} | {r['scenes']} | {r['area']:.2f} | {r['map']:.2f} | "
                     f"{r['map_min']:.2f} | {r['change']:.2f} | {r['attention']:.2f} | {r['control']:.2f} |")
    lines += ["", f"Means over the rows: map {np.mean([r['map'] for r in table]):.2f}, pixel change "
              f"{np.mean([r['change'] for r in table]):.2f}, cross-attention "
              f"{np.mean([r['attention'] for r in table]):.2f}, control map "
              f"{np.mean([r['control'] for r in table]):.2f}."]
    lines += ["", "![the render, without the negative, with it, its map, the pixel change](maps.png)", "",
              "One row per object (the first scene, the first method): the render the generation starts from, "
              "the image without the negative, with it, where the negative acted (its map over the image, from "
              "its smallest to its largest value) and the pixel change.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=bounded("scenes", int, 1, 64), default=12,
                        help="scenes per object, 1 to 64 (default 12)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--methods", nargs="+", default=["cfg", "gated"], choices=["cfg", "gated", "posterior",
                                                                                    "dynamic", "perp-neg", "apg"])
    parser.add_argument("--threads", type=bounded("threads", int, 1, 256), default=None,
                        help="torch CPU threads (default: torch's)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "eval")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    components = load_model(EMBEDDED_MODEL)
    table, shown = rows(args.kinds, args.methods, args.scenes, components)
    args.docs.mkdir(parents=True, exist_ok=True)
    picture(shown, args.docs / "maps.png")
    text = page(table, args.kinds, time.perf_counter() - started, args.scenes)
    (args.docs / "maps.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
