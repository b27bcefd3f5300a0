"""Negatives in inpainting: the second half of `avert eval img2img`.

For each pair whose concept sits somewhere in the image (not a colour tone of the whole image), the init images
are the prompt's renders without a negative in which the shipped detector finds the concept. The mask of each is
where the concept is, found by occlusion: a `PATCH`-pixel square, moved in steps of `STRIDE`, is painted with the
image's mean colour, and the pixels whose patches lower the detector's probability of the concept by at least half
the largest drop (and by at least `MIN_DROP`) form the mask; an image where no patch does (the concept is not in
one place) is left out and counted. Each init image is then inpainted inside its mask (`mask_blur` `MASK_BLUR`, the
32-pixel model's share of A1111's 4 at 512), at `strength`, with the same prompt and seed, once without the negative
(plain CFG) and once with it. Suppression is 1 - rate with / rate without; the pixels outside the blurred mask are
compared with the init image's (A1111 pastes them back, so they must be equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from avert.evaluation.common import Renderer, Settings, check_seeds, fmt, load_components, load_detector
from avert.evaluation.negatives import DEFAULT_PAIRS, Method, Pair

TONES = ("green tones", "blue tones", "black and white")  # a colour of the whole image: nothing to mask
PATCH, STRIDE, MIN_DROP = 8, 4, 0.1
MASK_BLUR = 1
DEFAULT_INPAINT_STRENGTH = 0.75  # A1111's default denoising strength
FIGURE_PAIRS = (("a village", "house"), ("a gesture", "hands"), ("a windy day", "clouds"), ("a bright day", "sun"))
FIGURE_SEEDS = 3


@dataclass(frozen=True)
class InpaintRow:
    """A pair's inpainting result over the init images that show its concept."""

    prompt: str
    negative: str
    concept: str
    images: int  # init images with the concept and a mask
    unlocated: int  # init images with the concept that occlusion could not place
    masked: float  # mean share of the image inside the mask
    rate_without: float
    rate_with: float
    outside_max: int  # largest difference from the init image outside the blurred mask, in 1/255

    @property
    def suppression(self) -> float | None:
        return None if self.rate_without == 0 else 1 - self.rate_with / self.rate_without


def concept_mask(image: np.ndarray, detector, concept: str) -> np.ndarray | None:
    """bool [H, W]: where occluding the image lowers the detector's probability of `concept` most; None if no
    patch lowers it by `MIN_DROP`."""
    from avert.world import CONCEPT_INDEX

    index = CONCEPT_INDEX[concept]
    height, width = image.shape[:2]
    boxes = [(y, x) for y in range(0, height - PATCH + 1, STRIDE) for x in range(0, width - PATCH + 1, STRIDE)]
    occluded = np.repeat(image[None], len(boxes), axis=0)
    fill = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    for k, (y, x) in enumerate(boxes):
        occluded[k, y:y + PATCH, x:x + PATCH] = fill
    base = float(detector.probabilities(image[None])[0, index])
    drops = base - detector.probabilities(occluded)[:, index]
    if drops.max() < MIN_DROP:
        return None
    mask = np.zeros((height, width), bool)
    for (y, x), drop in zip(boxes, drops):
        if drop >= drops.max() / 2:
            mask[y:y + PATCH, x:x + PATCH] = True
    return mask


def inpainted(components, settings: Settings, prompt: str, negative: str, seed: int, init: np.ndarray,
              mask: np.ndarray, strength: float, method: Method, runtime) -> tuple[np.ndarray, int]:
    """The inpainted image and its largest difference from `init` outside the blurred mask."""
    from avert.init_image import InitImage, Mask
    from avert.pipeline.generate import generate
    from avert.pipeline.inpaint import read_mask

    options = (("init_image", InitImage.from_pil(Image.fromarray(init))),
               ("mask", Mask.from_pil(Image.fromarray(mask.astype(np.uint8) * 255))), ("strength", strength),
               ("mask_blur", MASK_BLUR))
    request = settings.request(prompt, negative, seed, 1, (*method.options, *options) if negative else options)
    made = np.asarray(generate(request, components, runtime=runtime).images[0].image.convert("RGB"))
    outside = np.asarray(read_mask(request.mask, (init.shape[1], init.shape[0]), request)) == 0
    return made, int(np.abs(made.astype(int) - init.astype(int))[outside].max(initial=0))


def local_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    return [p for p in pairs if p.concept not in TONES]


def evaluate_inpainting(pairs: Sequence[Pair] = DEFAULT_PAIRS, model=None, seeds: int = 32,
                        strength: float = DEFAULT_INPAINT_STRENGTH, settings: Settings = Settings(),
                        method: Method = Method(), *, detector=None, runtime=None,
                        progress: bool = True) -> list[InpaintRow]:
    from avert.pipeline.runtime import Runtime

    check_seeds(seeds)
    settings.validate(seeds)
    components, detector = load_components(model), load_detector(detector)
    runtime = runtime or Runtime()
    chosen = local_pairs(pairs)
    renderer = Renderer(components, settings, runtime, progress, desc="inpainting with negatives",
                        total=seeds * len(chosen) * 3)
    rows = []
    try:
        for pair in chosen:
            rows.append(_row(pair, renderer, components, detector, settings, seeds, strength, method, runtime))
    finally:
        renderer.close()
    return rows


def _row(pair: Pair, renderer: Renderer, components, detector, settings: Settings, seeds: int, strength: float,
         method: Method, runtime) -> InpaintRow:
    from avert.world import CONCEPT_INDEX

    inits = renderer.images(pair.prompt, "", seeds)
    present = np.asarray(detector.predict(inits), dtype=bool)[:, CONCEPT_INDEX[pair.concept]]
    made: dict[str, list[np.ndarray]] = {"": [], pair.negative: []}
    masked, outside, unlocated = [], 0, 0
    for i in np.flatnonzero(present):
        mask = concept_mask(inits[i], detector, pair.concept)
        if mask is None:
            unlocated += 1
            continue
        masked.append(mask.mean())
        for negative in made:
            image, off = inpainted(components, settings, pair.prompt, negative, settings.first_seed + int(i),
                                   inits[i], mask, strength, method, runtime)
            made[negative].append(image)
            outside = max(outside, off)
        if renderer.bar is not None:
            renderer.bar.update(2)
    rates = [float(np.asarray(detector.predict(np.stack(v)), dtype=bool)[:, CONCEPT_INDEX[pair.concept]].mean())
             if v else 0.0 for v in made.values()]
    return InpaintRow(pair.prompt, pair.negative, pair.concept, len(masked), unlocated,
                      float(np.mean(masked)) if masked else 0.0, rates[0], rates[1], outside)


def table(rows: Sequence[InpaintRow]) -> str:
    lines = ["| prompt | negative (concept) | images (not placed) | masked area | inpainted without -> with the "
             "negative | suppression | outside the mask, largest change |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.prompt} | {r.negative} ({r.concept}) | {r.images} ({r.unlocated}) | {100 * r.masked:.0f}% | "
                     f"{fmt(r.rate_without)} -> {fmt(r.rate_with)} | {fmt(r.suppression)} | {r.outside_max}/255 |")
    return "\n".join(lines)


def summary(rows: Sequence[InpaintRow]) -> list[str]:
    values = [r.suppression for r in rows if r.suppression is not None]
    below = [r for r in rows if r.suppression is not None and r.suppression < 0.8]
    return [f"- inpainting: mean suppression over {len(values)} pairs: {fmt(float(np.mean(values)) if values else None)}",
            f"- inpainting: pairs under 0.8: {len(below)}" + "".join(f"; {r.negative} {fmt(r.suppression)}" for r in below),
            f"- inpainting: largest change outside the blurred masks: {max((r.outside_max for r in rows), default=0)}/255 "
            f"over {sum(2 * r.images for r in rows)} images"]


def figure(rows: Sequence[InpaintRow], components, settings: Settings, method: Method, strength: float, detector=None,
           runtime=None, scale: int = 4) -> Image.Image:
    """For a few pairs: the init image, its mask, inpainted without and with the negative, side by side."""
    from avert.evaluation.negatives import hstack
    from avert.output.grid import upscale
    from avert.world import CONCEPT_INDEX

    detector = load_detector(detector)
    renderer = Renderer(components, settings, runtime, progress=False)
    known = {(r.prompt, r.negative): r for r in rows}
    tiles = []
    for prompt, negative in [p for p in FIGURE_PAIRS if p in known]:
        concept = known[(prompt, negative)].concept
        inits = renderer.images(prompt, "", 16)
        blocks = []
        for i in np.flatnonzero(np.asarray(detector.predict(inits), bool)[:, CONCEPT_INDEX[concept]]):
            mask = concept_mask(inits[i], detector, concept)
            if mask is None:
                continue
            plain, _ = inpainted(components, settings, prompt, "", settings.first_seed + int(i), inits[i], mask,
                                 strength, method, runtime)
            with_, _ = inpainted(components, settings, prompt, negative, settings.first_seed + int(i), inits[i], mask,
                                 strength, method, runtime)
            shown = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
            blocks.append(np.concatenate([inits[i], shown, plain, with_], axis=1))
            if len(blocks) == FIGURE_SEEDS:
                break
        if blocks:
            tiles.append(upscale(Image.fromarray(np.concatenate(blocks, axis=0)), scale))
    return hstack(tiles)


def section(rows: Sequence[InpaintRow], strength: float, method: Method, picture: str | None) -> list[str]:
    parts = [
        "## Inpainting",
        "",
        "For each pair whose concept sits in one place (colour tones are left out), the init images are the prompt's "
        "renders in which the detector finds the concept; the mask is where occluding an 8-pixel square lowers the "
        "detector's probability of the concept by at least half the largest drop. Each is inpainted inside its mask "
        f"(mask blur {MASK_BLUR}, masked content original, paste-back on) at strength {strength:g}, without and with "
        f"the negative ({method.label}). Suppression is 1 - rate with / rate without; the last column is the "
        "largest difference from the init image of any pixel outside the blurred mask.",
        "",
        *summary(rows),
        "",
        table(rows),
    ]
    if picture:
        parts += ["", f"![init, mask, inpainted without, inpainted with the negative]({picture})", "",
                  "Each block: left the init image, then its mask, inpainted without the negative, inpainted with it. "
                  "Pairs, left to right: " + "; ".join(f"{p} / {n}" for p, n in FIGURE_PAIRS) + "."]
    return parts
