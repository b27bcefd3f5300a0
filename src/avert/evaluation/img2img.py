"""Negatives in img2img: `avert eval img2img`.

For each pair (prompt, negative) the prompt is rendered without a negative (seeds s .. s+n-1): these are the init
images, most of which show the negative's concept. Each is then re-drawn by img2img at `strength` with the same
prompt and seed, once without the negative and once with it, and the shipped detector reads all three sets.
Suppression is that of `avert eval negatives`, between the two img2img renders: 1 - rate_with / rate_without, so
it says what the negative does in img2img, apart from what the re-drawing alone does; the init images' own rate
is reported beside it. Fidelity is the prompt's concepts (or well-formedness) as in `avert eval negatives`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from avert.evaluation.common import (Reading, Renderer, RunInfo, Settings, Timer, check_seeds, fmt, load_components,
                                     load_detector, read_images)
from avert.evaluation.negatives import DEFAULT_PAIRS, Method, Pair, PairResult, summarize_pair

DEFAULT_STRENGTH = 0.6
FIGURE_PAIRS = (("a village", "house"), ("a landscape in shades of green", "green tones"), ("a gesture", "hands"),
                ("a windy day", "clouds"))
FIGURE_SEEDS = 3


@dataclass(frozen=True)
class Img2ImgRow:
    """A pair's row: the init images' rate of the concept and the img2img readings without and with the negative."""

    result: PairResult
    rate_init: float
    strength: float


def img2img_images(renderer: Renderer, components, settings: Settings, prompt: str, negative: str,
                   inits: np.ndarray, strength: float, method: Method, runtime) -> np.ndarray:
    """uint8 [n, H, W, 3]: each init image re-drawn with its own seed (one request each)."""
    from avert.init_image import InitImage
    from avert.pipeline.generate import generate

    out = []
    for i, init in enumerate(inits):
        image = (("init_image", InitImage.from_pil(Image.fromarray(init))), ("strength", strength))
        options = (*method.options, *image) if negative else image  # without the negative: plain CFG
        request = settings.request(prompt, negative, settings.first_seed + i, 1, options)
        out.append(np.asarray(generate(request, components, runtime=runtime).images[0].image.convert("RGB")))
        if renderer.bar is not None:
            renderer.bar.update(1)
    return np.stack(out)


def evaluate_img2img(pairs: Sequence[Pair] = DEFAULT_PAIRS, model=None, seeds: int = 32,
                     strength: float = DEFAULT_STRENGTH, settings: Settings = Settings(), method: Method = Method(),
                     *, detector=None, runtime=None, progress: bool = True) -> list[Img2ImgRow]:
    """The rows of every pair; the renders without the negative are plain CFG, with it `method` (default CFG)."""
    from avert.pipeline.runtime import Runtime

    check_seeds(seeds)
    settings.validate(seeds)
    components, detector = load_components(model), load_detector(detector)
    runtime = runtime or Runtime()
    prompts = {p.prompt for p in pairs}
    renderer = Renderer(components, settings, runtime, progress, desc="img2img with negatives",
                        total=seeds * (len(prompts) * 2 + len(pairs)))
    inits, redrawn, rows = {}, {}, []
    try:
        for pair in pairs:
            timer = Timer()
            if pair.prompt not in inits:
                inits[pair.prompt] = renderer.images(pair.prompt, "", seeds)
                redrawn[pair.prompt] = read_images(img2img_images(renderer, components, settings, pair.prompt, "",
                                                                  inits[pair.prompt], strength, method, runtime),
                                                   detector)
            with_ = read_images(img2img_images(renderer, components, settings, pair.prompt, pair.negative,
                                               inits[pair.prompt], strength, method, runtime), detector)
            init_reading: Reading = read_images(inits[pair.prompt], detector)
            result = summarize_pair(pair, redrawn[pair.prompt], with_, settings, timer.lap(),
                                    Method(f"img2img {strength:g}, {method.label}", method.options))
            rows.append(Img2ImgRow(result, init_reading.rate(pair.concept), strength))
    finally:
        renderer.close()
    return rows


def table(rows: Sequence[Img2ImgRow]) -> str:
    lines = ["| prompt | negative (concept) | in the init images | img2img without -> with the negative | "
             "suppression | fidelity without -> with |", "|---|---|---|---|---|---|"]
    for row in rows:
        r = row.result
        lines.append(f"| {r.prompt} | {r.negative} ({r.concept}) | {fmt(row.rate_init)} | {fmt(r.rate_without)} -> "
                     f"{fmt(r.rate_with)} | {fmt(r.suppression)} | {fmt(r.fidelity_without)} -> "
                     f"{fmt(r.fidelity_with)} ({r.fidelity_measure}) |")
    return "\n".join(lines)


def summary(rows: Sequence[Img2ImgRow]) -> list[str]:
    values = [r.result.suppression for r in rows if r.result.suppression is not None]
    below = [r.result for r in rows if r.result.suppression is not None and r.result.suppression < 0.8]
    drop = max(rows, key=lambda r: r.result.fidelity_without - r.result.fidelity_with)
    return [f"- mean suppression over {len(values)} pairs: {fmt(float(np.mean(values)))}",
            f"- pairs under 0.8: {len(below)}" + ("".join(f"; {r.negative} {fmt(r.suppression)}" for r in below)),
            f"- largest fidelity drop: {100 * (drop.result.fidelity_without - drop.result.fidelity_with):.0f} points "
            f"({drop.result.negative})"]


def figure(rows: Sequence[Img2ImgRow], components, settings: Settings, method: Method, runtime=None,
           scale: int = 4) -> Image.Image:
    """For a few pairs and seeds: the init image, img2img without and with the negative, side by side."""
    from avert.evaluation.negatives import hstack
    from avert.output.grid import upscale

    by_pair = {(r.result.prompt, r.result.negative): r for r in rows}
    renderer = Renderer(components, settings, runtime, progress=False)
    tiles = []
    for prompt, negative in [p for p in FIGURE_PAIRS if p in by_pair]:
        strength = by_pair[(prompt, negative)].strength
        inits = renderer.images(prompt, "", FIGURE_SEEDS)
        plain = img2img_images(renderer, components, settings, prompt, "", inits, strength, method, runtime)
        with_ = img2img_images(renderer, components, settings, prompt, negative, inits, strength, method, runtime)
        column = np.concatenate([np.concatenate([a, b, c], axis=1) for a, b, c in zip(inits, plain, with_)], axis=0)
        tiles.append(upscale(Image.fromarray(column), scale))
    return hstack(tiles)


def page(rows: Sequence[Img2ImgRow], info: RunInfo, method: Method, picture: str | None,
         more: Sequence[str] = (), flags: str = "") -> str:
    """The page: the img2img table and figure, then `more` (the inpainting section); `flags` adds to the command."""
    strength = rows[0].strength
    parts = [
        "# Negatives in img2img and inpainting",
        "",
        info.line(f"avert eval img2img --strength {strength:g}{flags} --seeds {info.n_seeds}"
                  + (f" --method {method.label}" if method.options else "")),
        "",
        "Each prompt is rendered without a negative (the init images), then each init image is re-drawn by img2img "
        "with the same prompt and seed, "
        f"at strength {strength:g} (A1111's step rule: int(min(d, 0.999) x steps) + 1 of the steps run), without "
        f"and with the negative ({method.label}). Suppression is 1 - rate with / rate without, between the two "
        "img2img renders.",
        "",
        *summary(rows),
        "",
        table(rows),
    ]
    if picture:
        parts += ["", f"![init, img2img without, img2img with the negative]({picture})", "",
                  "Each block: a prompt's first seeds; left the init image, middle img2img without the negative, right "
                  "with it. Pairs, left to right: " + "; ".join(f"{p} / {n}" for p, n in FIGURE_PAIRS) + "."]
    if more:
        parts += ["", *more]
    return "\n".join(parts) + "\n"


def write_docs(rows: Sequence[Img2ImgRow], info: RunInfo, docs: Path, picture: Image.Image | None,
               method: Method, more: Sequence[str] = (), pictures: dict | None = None, flags: str = "") -> Path:
    folder = Path(docs) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    if picture is not None:
        picture.save(folder / "img2img.png")
    for name, image in (pictures or {}).items():
        image.save(folder / name)
    path = folder / "img2img.md"
    path.write_text(page(rows, info, method, "img2img.png" if picture is not None else None, more, flags))
    return path
