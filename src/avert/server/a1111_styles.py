"""A1111's `styles` field: the named prompt styles of the server's --styles file applied to a body's prompts.

A1111 applies a request's styles to the prompt and the negative (each of a per-image list) and to the hires prompts;
`avert.prompts.styles` has the rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from avert.errors import FieldProblem, ValidationError
from avert.prompts.styles import Style, styled

MAX_STYLES_NAMED = 32
STYLED_FIELDS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "hr_prompt": "prompt",
                 "hr_negative_prompt": "negative_prompt"}  # A1111 applies styles to the hires prompts too


def styled_fields(styles: Sequence[Style], settings: dict, problems: list[FieldProblem]) -> dict:
    """The body's fields with its `styles` applied (`avert.prompts.styles`) to the prompt and the negative (each of a
    per-image list), and to the hires prompts where given (empty, they are the styled prompts); fields of other
    types are left for validation to name."""
    names = settings.get("styles")
    if names in (None, []):
        return settings
    if not isinstance(names, list) or len(names) > MAX_STYLES_NAMED or not all(isinstance(n, str) for n in names):
        problems.append(FieldProblem("styles", names, f"must be a list of at most {MAX_STYLES_NAMED} style names"))
        return settings
    result = dict(settings)
    try:
        for key, part in STYLED_FIELDS.items():
            value = settings.get(key)
            if isinstance(value, str) and (value or not key.startswith("hr_")):
                result[key] = styled(styles, names, value, part)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                result[key] = [styled(styles, names, v, part) for v in value]
    except ValidationError as error:
        problems += error.problems
        return settings
    return result
