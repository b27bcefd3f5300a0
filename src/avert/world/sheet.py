"""A contact sheet of rendered scenes with their ground truth, for looking at the world.

python -m avert.world.sheet /tmp/world_sheet.png --seed 0 --count 64
"""

from __future__ import annotations

import argparse
import textwrap

import numpy as np
from PIL import Image, ImageDraw

from avert.world.attributes import Scene
from avert.world.captions import caption
from avert.world.render import render
from avert.world.sample import sample_scene


def contact_sheet(
    scenes: list[Scene] | tuple[Scene, ...],
    *,
    size: int = 32,
    zoom: int = 4,
    columns: int = 8,
    captions: list[str] | None = None,
) -> Image.Image:
    """Each scene rendered at `size`, enlarged `zoom` times (nearest neighbour, so the real
    pixels show), above its concept list and, when given, a caption."""
    cell = size * zoom
    text_h = 64 if captions is not None else 44
    w, h = cell + 8, cell + text_h
    rows = (len(scenes) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars = max(10, cell // 6)
    for i, s in enumerate(scenes):
        x, y = (i % columns) * w, (i // columns) * h
        img = Image.fromarray(render(s, size)).resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(img, (x + 4, y + 2))
        concept_lines = textwrap.wrap(", ".join(sorted(s.concepts())), chars)
        ty = y + cell + 3
        if captions is None:
            draw.multiline_text((x + 2, ty), "\n".join(concept_lines[:4]), fill=(0, 0, 0), spacing=0)
            continue
        concept_lines = concept_lines[:3]
        draw.multiline_text((x + 2, ty), "\n".join(concept_lines), fill=(0, 0, 0), spacing=0)
        caption_lines = textwrap.wrap(f'"{captions[i]}"', chars)[:2]
        draw.multiline_text(
            (x + 2, ty + 11 * len(concept_lines)), "\n".join(caption_lines), fill=(0, 0, 170), spacing=0
        )
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--captions", action="store_true", help="show one random caption per scene")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng) for _ in range(args.count)]
    caps = [caption(s, rng) for s in scenes] if args.captions else None
    contact_sheet(scenes, size=args.size, captions=caps).save(args.out)


if __name__ == "__main__":
    main()
