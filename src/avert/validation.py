"""Validation of a request, up front and in one place, against the declared schema.

Every problem names the field, the value and what is allowed; all problems are reported at once.
"""

from __future__ import annotations

import math

from avert.errors import FieldProblem, ValidationError
from avert.request import GenerationRequest
from avert.schema import PARAMS, Limits, Param


def validate(request: GenerationRequest, limits: Limits = Limits()) -> GenerationRequest:
    """Return the request unchanged if valid, else raise `ValidationError` listing every bad field."""
    problems = [p for param in PARAMS if (p := check_field(param, getattr(request, param.name), limits))]
    if problems:
        raise ValidationError(problems)
    return request


def check_field(param: Param, value: object, limits: Limits) -> FieldProblem | None:
    """The problem with one field's value, or None when it is allowed."""
    bad = FieldProblem(param.name, value, param.describe_allowed(limits))
    if value is None:
        return None if param.default is None else bad
    if not _has_type(value, param.type):
        return bad
    if value in param.allow:
        return None
    if param.choices:
        return None if value in param.choices else bad
    if param.type is str:
        return None if param.high is None or len(value) <= param.high(limits) else bad
    if isinstance(value, float) and not math.isfinite(value):
        return bad
    if param.low is not None and value < param.low(limits):
        return bad
    if param.high is not None and value > param.high(limits):
        return bad
    if param.multiple_of and value % param.multiple_of:
        return bad
    return None


def _has_type(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)
