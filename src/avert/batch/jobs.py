"""A batch file: one request of the native API (`POST /v1/generate`'s body) per line, read and validated up front.

Every line is parsed and validated as the server validates a body (`avert.server.bodies`: every field of
`GenerationRequest` by name, a negative per image, `model` by name), against the model it names; every bad line
is reported at once with its line number before any image is made. A line without a seed (or with -1) gets one
derived from its text, so a retried or resumed request re-makes the same image. Each request is identified by
the hash of its canonical JSON (keys sorted, model named, seed set): the manifest records it, a resumed run
skips it, and identical lines are one request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from avert.errors import AvertError, FieldProblem, ValidationError

MAX_LINES = 1_000_000
MAX_LINE_BYTES = 16 * 1024 * 1024  # the server's body limit: an init image fits
MAX_REPORTED = 50  # bad lines listed with their problems; the rest by number


class BatchFileError(AvertError):
    """The batch file cannot be used as given: every bad line by number, the first `MAX_REPORTED` with their
    problems (a file of a million bad lines must not print a gigabyte)."""

    def __init__(self, path: Path, problems: list[tuple[int, str]], others: list[int] = ()):
        self.path, self.problems, self.others = path, problems, list(others)
        bad = len(problems) + len(self.others)
        shown = "\n".join(f"  {path.name}:{line}: {text}" for line, text in problems)
        more = f"\n  and {len(self.others)} more bad lines: {_ranges(self.others)}" if self.others else ""
        super().__init__(f"{path}: {bad} bad line{'s' if bad != 1 else ''}, nothing was rendered:\n{shown}{more}")


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 7 -> "1-3, 7"."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


@dataclass(frozen=True)
class BatchRequest:
    """One request of the file: its lines (identical lines are one request), hash, model name and JSON body."""

    hash: str
    lines: tuple[int, ...]
    model: str
    body: str  # canonical JSON: the fields as given, `model` named, `seed` set

    @property
    def line(self) -> int:
        return self.lines[0]


@dataclass
class BatchFile:
    """The requests of a file, in file order, and what was folded (identical lines)."""

    requests: list[BatchRequest] = field(default_factory=list)
    duplicates: int = 0


def read_batch_file(path: Path, default_model: str, model_names: Iterable[str],
                    validate: Callable[[str, dict], None]) -> BatchFile:
    """Read and validate `path`; `validate(model, body)` raises ValidationError for a body that the model
    refuses. Raises BatchFileError with every bad line, or AvertError when the file itself cannot be read."""
    names = set(model_names)
    problems: list[tuple[int, str]] = []
    others: list[int] = []
    found: dict[str, BatchRequest] = {}
    duplicates = 0
    for number, raw in _lines(path):
        try:
            request = _request(number, raw, default_model, names, validate)
        except ValidationError as error:
            if len(problems) < MAX_REPORTED:
                problems.append((number, "; ".join(str(p) for p in error.problems)))
            else:
                others.append(number)
            continue
        if request is None:
            continue
        if request.hash in found:
            duplicates += 1
            first = found[request.hash]
            found[request.hash] = BatchRequest(first.hash, first.lines + (number,), first.model, first.body)
        else:
            found[request.hash] = request
    if problems:
        raise BatchFileError(path, problems, others)
    if not found:
        raise AvertError(f"{path}: holds no request (one JSON object per line, as the body of POST /v1/generate)")
    return BatchFile(list(found.values()), duplicates)


def _lines(path: Path):
    """(line number, bytes) of every line, each held to MAX_LINE_BYTES and the file to MAX_LINES."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise AvertError(f"jobs: {str(path)!r} cannot be read ({error.strerror or error})") from None
    with handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if number > MAX_LINES:
                raise AvertError(f"{path}: more than {MAX_LINES:,} lines; split the file")
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise AvertError(f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes; a request must "
                                 "fit in the server's body limit")
            yield number, raw


def _request(number: int, raw: bytes, default_model: str, names: set[str],
             validate: Callable[[str, dict], None]) -> BatchRequest | None:
    from avert.server.bodies import parse_json

    if not raw.strip():
        return None  # blank lines are allowed (and skipped)
    body = parse_json(raw.strip())
    model = body.get("model", default_model)
    if not isinstance(model, str) or model not in names:
        raise ValidationError([FieldProblem("model", model, "must be one of the models: " + ", ".join(sorted(names)))])
    body = {**body, "model": model}
    if body.get("seed") in (None, -1):
        body["seed"] = derived_seed(body)
    validate(model, body)
    text = canonical(body)
    return BatchRequest(hashlib.sha256(text.encode()).hexdigest(), (number,), model, text)


def canonical(body: dict) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def derived_seed(body: dict) -> int:
    """A seed from the request's text (without its seed), the same on every run and every worker."""
    text = canonical({k: v for k, v in body.items() if k != "seed"})
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def sort_key(request: BatchRequest) -> tuple:
    """Requests that can share a sampling loop sort next to each other (from their bodies alone, before any model
    is loaded: equal fields resolve alike), so chunks of the sorted list fill UNet batches."""
    body = json.loads(request.body)
    alone = any(body.get(k) not in (None, False, 1, 1.0) for k in ("init_image", "mask", "enable_hr", "nag_scale"))
    fields = ("width", "height", "sampler", "steps", "eta", "tiling")
    return (request.model, alone, *(json.dumps(body.get(k)) for k in fields))
