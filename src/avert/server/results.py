"""Job results as JSON: images as base64 PNGs carrying A1111's `parameters` chunk and avert's record."""

from __future__ import annotations

import base64
from typing import Any

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


def job_json(job: Job, images: bool = True) -> dict[str, Any]:
    """A job's status, progress and (once done, when asked) its images, seeds and metadata."""
    done, total = job.step
    body: dict[str, Any] = {
        "id": job.id, "kind": job.kind, "model": job.model, "status": job.status,
        "progress": {"fraction": round(job.progress, 4), "part": min(len(job.results) + 1, len(job.parts)),
                     "parts": len(job.parts), "step": done, "steps": total},
        "created": job.created, "started": job.started, "ended": job.ended,
        "error": failure_json(job.failure) if job.failure else None,
    }
    if job.status in FINISHED:
        made = job_images(job)
        body["seeds"] = [g.seed for _, g in made]
        body["warnings"] = job_warnings(job)
        body["labels"] = list(dict.fromkeys(p.label for p in job.parts)) if job.kind == "compare" else []
        if images:
            body["images"] = [image_json(label, g) for label, g in made]
    return body


def negative_text(generated: GeneratedImage) -> str:
    """The image's negatives as one text, as its A1111 `Negative prompt:` line shows them."""
    return negative_line(GenerationRequest.from_dict(generated.record["request"]))


def image_json(label: str, generated: GeneratedImage) -> dict[str, Any]:
    return {"png": png_base64(generated), "seed": generated.seed, "label": label,
            "negative_prompt": negative_text(generated), "infotext": generated.infotext,
            "record": generated.record, "width": generated.image.width, "height": generated.image.height}
