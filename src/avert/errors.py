"""Errors avert reports to users: each names what is wrong and what is allowed."""

from __future__ import annotations

from dataclasses import dataclass


class AvertError(Exception):
    """Base of every error avert reports to a user (shown without a traceback)."""


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: its name, the value given and what is allowed."""

    field: str
    value: object
    allowed: str

    def __str__(self) -> str:
        return f"{self.field}: {self.value!r} is not allowed; {self.allowed}"


class ValidationError(AvertError):
    """A request with one or more invalid fields; all of them are listed."""

    def __init__(self, problems: list[FieldProblem] | tuple[FieldProblem, ...]):
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class ModelLoadError(AvertError):
    """A model path that cannot be loaded (missing, unreadable, unsafe or of an unknown layout)."""
