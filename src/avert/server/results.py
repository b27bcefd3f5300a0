"""Job results as JSON: images as base64 PNGs carrying A1111's `parameters` chunk and avert's record."""

from __future__ import annotations

import base64
import io
from typing import Any

from avert.output.maps import difference, overlay, shared_range
from avert.output.pnginfo import png_bytes
from avert.pipeline.metadata import negative_line
from avert.pipeline.result import GeneratedImage
from avert.request import GenerationRequest
from avert.server.http import failure_json
from avert.server.jobs import FINISHED, Job


def png_base64(generated: GeneratedImage) -> str:
    return base64.b64encode(png_bytes(generated.image, generated.infotext, generated.record)).decode("ascii")


def job_images(job: Job) -> list[tuple[str, GeneratedImage]]:
    """(part label, image) for every image made, in order (skipped parts have none)."""
    return [(part.label, g) for part, r in zip(job.parts, job.results) if r is not None for g in r.images]


def job_warnings(job: Job) -> list[str]:
    return list(dict.fromkeys(w for r in job.results if r is not None for w in r.warnings))


def preview_base64(job: Job) -> str | None:
    """The running job's live preview as a base64 PNG (`Job.preview`), or None."""
    image = job.preview()
    return _png(image) if image is not None else None


def job_json(job: Job, images: bool = True, preview: bool = False) -> dict[str, Any]:
    """A job's status, progress (with `preview`, the running part's live preview, a base64 PNG or null) and (once
    done, when asked) its images, seeds and metadata."""
    done, total = job.step
    body: dict[str, Any] = {
        "id": job.id, "kind": job.kind, "model": job.model, "status": job.status,
        "progress": {"fraction": round(job.progress, 4), "part": min(len(job.results) + 1, len(job.parts)),
                     "parts": len(job.parts), "step": done, "steps": total},
        "created": job.created, "started": job.started, "ended": job.ended,
        "error": failure_json(job.failure) if job.failure else None,
    }
    if preview:
        body["progress"]["preview"] = preview_base64(job)
    if job.status in FINISHED:
        made = job_images(job)
        body["seeds"] = [g.seed for _, g in made]
        body["warnings"] = job_warnings(job)
        body["labels"] = list(dict.fromkeys(p.label for p in job.parts)) if job.kind == "compare" else []
        if images:
            body["images"] = [image_json(label, g) for label, g in made]
            if any(g.maps for _, g in made):
                for entry, extra in zip(body["images"], map_json(made)):
                    entry.update(extra)
    return body


def map_json(made: list[tuple[str, GeneratedImage]]) -> list[dict[str, Any]]:
    """Per image of a comparison with maps: its map over it and its change from the image of the same seed without
    a negative (the first of that seed), as base64 PNGs; the maps of one seed share one range
    (`avert.output.maps`). Images without a map get nothing."""
    plain: dict[int, GeneratedImage] = {}
    for _, g in made:
        plain.setdefault(g.seed, g)
    ranges = {seed: shared_range(m.values for _, g in made if g.seed == seed for m in g.maps) for seed in plain}
    extras: list[dict[str, Any]] = []
    for _, g in made:
        if not g.maps:
            extras.append({})
            continue
        low, high = ranges[g.seed]
        extras.append({"map_png": _png(overlay(g.image, g.maps[0].values, low, high)),
                       "difference_png": _png(difference(plain[g.seed].image, g.image))})
    return extras


def _png(image) -> str:
    """A picture without generation metadata (it is not a generation: `--from` must not read it as one)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def negative_text(generated: GeneratedImage) -> str:
    """The image's negatives as one text, as its A1111 `Negative prompt:` line shows them."""
    return negative_line(GenerationRequest.from_dict(generated.record["request"]))


def image_json(label: str, generated: GeneratedImage) -> dict[str, Any]:
    return {"png": png_base64(generated), "seed": generated.seed, "label": label,
            "negative_prompt": negative_text(generated), "infotext": generated.infotext,
            "record": generated.record, "width": generated.image.width, "height": generated.image.height}
