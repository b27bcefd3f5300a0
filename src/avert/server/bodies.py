"""JSON bodies to validated requests: the native body by reflection over `GenerationRequest`, and the parts.

The native body takes every field of `GenerationRequest` by name (so fields the engine adds flow through
unchanged), converted generically from JSON (lists to tuples, objects to nested frozen dataclasses), then
held to `avert.validation.validate` with the server's `Limits`, exactly like the CLI. Unknown fields are
refused by name, never ignored.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any, Callable, Sequence

import numpy as np

from avert.errors import FieldProblem, ValidationError
from avert.init_image import InitImage, Mask
from avert.pipeline import work
from avert.pipeline.generate import check as validate_for_model, request_work
from avert.request import GenerationRequest
from avert.sampling.noise import image_seeds, resolve_seed
from avert.schema import Limits
from avert.server.jobs import Part

REQUEST_FIELDS = {f.name: f for f in dataclasses.fields(GenerationRequest)}


MAX_DEPTH = 32  # nesting of arrays and objects; no field of any body needs more than 4


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object of strict JSON, or a ValidationError naming `body` or the field.

    Refused: text that is not UTF-8 JSON, the NaN and Infinity literals (not JSON; Python would accept them),
    nesting deeper than `MAX_DEPTH` (checked before parsing, so no recursion limit is reached), and strings
    holding lone surrogates (they cannot be encoded, tokenized or written back)."""
    allowed = "must be a JSON object (strict JSON, UTF-8)"
    if _depth(raw) > MAX_DEPTH:
        raise ValidationError([FieldProblem("body", _short(raw), f"must nest arrays and objects at most {MAX_DEPTH} "
                                            "deep")])
    try:
        data = json.loads(raw or b"null", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ValidationError([FieldProblem("body", _short(raw), f"{allowed} ({str(error)[:120]})")]) from None
    if not isinstance(data, dict):
        raise ValidationError([FieldProblem("body", _short(raw), allowed)])
    bad = _lone_surrogate(data)
    if bad is not None:
        raise ValidationError([FieldProblem(bad or "body", "(text with a lone surrogate)", "must be text of valid "
                                            "Unicode characters (no unpaired \\ud800-\\udfff escapes)")])
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled (Friedl): no alternation tried per character
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _depth(raw: bytes) -> int:
    """The deepest nesting of [ and { outside strings (regular expressions and numpy: no Python loop per byte)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1)).max())


def _lone_surrogate(data: dict) -> str | None:
    """The top-level field whose text (a key or a value, at any depth) holds a lone surrogate, or None."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    for key, value in data.items():
        try:
            json.dumps({key: value}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return key if not any(0xD800 <= ord(c) <= 0xDFFF for c in key) else "body"
    return "body"


def _short(raw: bytes) -> str:
    text = raw[:80].decode("utf-8", "replace")
    return text + ("..." if len(raw) > 80 else "")


def request_from_fields(values: dict[str, Any]) -> GenerationRequest:
    """A request from JSON values keyed by request field name, converted by each field's declared type."""
    hints = typing.get_type_hints(GenerationRequest)
    problems: list[FieldProblem] = []
    converted = {name: convert(value, hints[name], name, problems) for name, value in values.items()}
    if problems:
        raise ValidationError(problems)
    try:
        return GenerationRequest(**converted)
    except ValidationError:
        raise
    except (TypeError, ValueError) as error:
        raise ValidationError([FieldProblem("body", values, str(error))]) from None


def convert(value: Any, kind: Any, name: str, problems: list[FieldProblem]) -> Any:
    """JSON to the declared type where it is structural (tuples, nested dataclasses, float from int)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], name, problems) if len(inner) == 1 else value
    if origin is tuple and isinstance(value, list):
        item = args[0] if args else Any
        return tuple(convert(v, item, f"{name}[{i}]", problems) for i, v in enumerate(value))
    if kind in (InitImage, Mask) and not isinstance(value, kind):  # from JSON only as an encoded image
        return kind.from_value(value, name)
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):
        return _dataclass(kind, value, name, problems)
    if dataclasses.is_dataclass(kind) and isinstance(value, str) and hasattr(kind, "from_value"):
        return kind.from_value(value)  # e.g. a negative given as plain text
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _dataclass(kind: type, value: dict, name: str, problems: list[FieldProblem]) -> Any:
    hints = typing.get_type_hints(kind)
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = [k for k in value if k not in names]
    for key in unknown:
        problems.append(FieldProblem(f"{name}.{key}", value[key], "unknown field; allowed: " + ", ".join(sorted(names))))
    if unknown:
        return None
    try:
        return kind(**{k: convert(v, hints[k], f"{name}.{k}", problems) for k, v in value.items()})
    except (TypeError, ValueError) as error:
        problems.append(FieldProblem(name, value, str(error)))
        return None


def unknown_fields(body: dict, allowed: Sequence[str]) -> list[FieldProblem]:
    """A problem for each key of `body` not in `allowed`."""
    listed = ", ".join(sorted(allowed))
    return [FieldProblem(k, body[k], f"unknown field; allowed: {listed}") for k in body if k not in allowed]


def split_negatives(value: Any, count: int, field: str = "negative_prompt") -> tuple[str, tuple[str, ...] | None]:
    """A negative for the whole batch (a string) or one per image (a list of `count` strings).

    Returns the first negative (the batch's own field) and the per-image list, or None for a single string.
    """
    if not isinstance(value, list):
        return value, None
    if len(value) != count or not all(isinstance(v, str) for v in value):
        raise ValidationError([FieldProblem(field, value, f"must be a string, or a list of {count} strings "
                                            "(one per image of the batch)")])
    return (value[0] if value else ""), tuple(value)


def check(request: GenerationRequest, limits: Limits, components, per_image: Sequence[str] | None,
          field: str = "negative_prompt") -> GenerationRequest:
    """Validate as the CLI does (the model's native size and default guidance), each per-image negative
    included."""
    validate_for_model(request, limits, components)
    for i, negative in enumerate(per_image or ()):
        try:
            validate_for_model(request.replace(negative_prompt=negative), limits, components)
        except ValidationError as error:
            raise ValidationError([dataclasses.replace(p, field=f"{field}[{i}]") if p.field == "negative_prompt"
                                   else p for p in error.problems]) from None
    return request


def generate_parts(body: dict, limits: Limits, components: Callable[[], Any]) -> list[Part]:
    """The engine calls of a native generate body (`POST /v1/generate`, or a line of `avert batch`): every field of
    `GenerationRequest` by name (plus `model`, which the caller resolves), `negative_prompt` one string or one per
    image, validated against the model `components()` loads; one call per run of images sharing a negative."""
    problems = unknown_fields(body, (*REQUEST_FIELDS, "model"))
    if problems:
        raise ValidationError(problems)
    values = {k: v for k, v in body.items() if k in REQUEST_FIELDS}
    negative = values.pop("negative_prompt", "")
    request = request_from_fields(values)
    first, per_image = split_negatives(negative, request.batch_size if isinstance(request.batch_size, int) else 0)
    request = check(request.replace(negative_prompt=first), limits, components(), per_image)
    return batch_parts(request, per_image)


def check_work(parts: Sequence[Part], components, limits: Limits) -> None:
    """Hold a job's parts together to the server's work budget (`avert.pipeline.work`)."""
    work.check([request_work(p.request, components, p.maps) for p in parts], limits.max_work)


def batch_parts(request: GenerationRequest, per_image: Sequence[str] | None, rounds: int = 1) -> list[Part]:
    """Engine calls for `rounds` batches of `request` (A1111's n_iter), the seed resolved once.

    Image k of the whole run uses seed + k. With a negative per image, each batch is cut into runs of
    consecutive images that share a negative; a run starting at image k is rendered with seed + k, and
    since image i of a batch equals its seed rendered alone, the merged images equal one batch exactly.
    """
    first = resolve_seed(request.seed)
    size = request.batch_size
    negatives = list(per_image) if per_image else [request.negative_prompt] * (size * rounds)
    seeds = image_seeds(first, size * rounds)
    parts = []
    for start in range(0, size * rounds, size):
        k = start
        while k < start + size:
            end = k
            while end < start + size and negatives[end] == negatives[k]:
                end += 1
            parts.append(Part(request.replace(seed=seeds[k], batch_size=end - k, negative_prompt=negatives[k])))
            k = end
    return parts


def one_init_image_each(parts: list[Part], inits: Sequence) -> list[Part]:
    """The parts cut into single images, image n of the run (over every round) from init image n mod k, as A1111
    gives image i of each batch init image i; image i of a batch equals its seed rendered alone, so nothing
    else changes."""
    singles = []
    for part in parts:
        for seed in image_seeds(part.request.seed, part.request.batch_size):
            init = inits[len(singles) % len(inits)]
            singles.append(Part(part.request.replace(seed=seed, batch_size=1, init_image=init), part.label))
    return singles
