"""Metadata of a generated image: A1111's `parameters` infotext and avert's structured record."""

from __future__ import annotations

from avert import __version__
from avert.models.components import ModelSource
from avert.output.pnginfo import ParsedParameters, format_parameters
from avert.request import GenerationRequest

RECORD_FORMAT = 1


def infotext(request: GenerationRequest, seed: int, model: ModelSource) -> str:
    """The A1111 `parameters` text for one image of `request`, rendered with `seed`."""
    params = (
        ("Steps", request.steps),
        ("Sampler", request.sampler),
        ("CFG scale", request.cfg_scale),
        ("Seed", seed),
        ("Size", f"{request.width}x{request.height}"),
        ("Model hash", model.hash),
        ("Model", model.name),
        ("Version", f"avert {__version__}"),
    )
    return format_parameters(request.prompt, request.negative_prompt, params)


def record(request: GenerationRequest, seed: int, index: int, model: ModelSource) -> dict:
    """The structured record: the full request, this image's index and seed, and the model's name and hash.

    `request.replace(seed=seed, batch_size=1)` re-makes exactly this image (see `request_from_record`).
    """
    return {
        "format": RECORD_FORMAT,
        "generator": f"avert {__version__}",
        "request": request.to_dict(),
        "image_index": index,
        "seed": seed,
        "model": {"name": model.name, "hash": model.hash, "kind": model.kind},
    }


def request_from_record(data: dict) -> GenerationRequest:
    """The request that re-makes the one image a record describes."""
    return GenerationRequest.from_dict(data["request"]).replace(seed=int(data["seed"]), batch_size=1)


def request_from_a1111(parsed: ParsedParameters) -> GenerationRequest:
    """A request from an A1111 infotext (an image made elsewhere): prompt, negative and the settings we share.

    Values that do not convert are passed through as text, so validation names them.
    """
    request = GenerationRequest(prompt=parsed.prompt, negative_prompt=parsed.negative_prompt, batch_size=1)
    fields = {"Steps": ("steps", int), "Sampler": ("sampler", str), "CFG scale": ("cfg_scale", float),
              "Seed": ("seed", int)}
    changes = {name: _convert(parsed.get(key), kind) for key, (name, kind) in fields.items() if parsed.get(key)}
    if parsed.get("Schedule type") == "Karras" and isinstance(changes.get("sampler"), str):
        changes["sampler"] = changes["sampler"] + " Karras"  # A1111 1.9+ writes the schedule apart
    size = parsed.get("Size")
    if size and "x" in size:
        width, _, height = size.partition("x")
        changes.update(width=_convert(width, int), height=_convert(height, int))
    return request.replace(**changes)


def _convert(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        return text
