"""Prompt styles: saved pairs of prompt and negative text, kept in A1111's `styles.csv` and applied by name.

A file has a header row naming at least `name`, `prompt` and `negative_prompt` (A1111's columns; other columns
are ignored), one style a row. A style is applied to a prompt as A1111 applies it: a style text holding
"{prompt}" has the prompt put in its place; any other style text is appended after ", " (an empty prompt or an
empty style text adds no comma). The negative gets the style's negative the same way, and several styles apply
one after the other, in the order they are named. The result is plain prompt text, so the infotext records what
was rendered and `--from` re-makes it without the file.

Files are read within bounds (`MAX_BYTES`, `MAX_STYLES`, `MAX_TEXT`) and refused with the file, line and rule.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from avert.errors import AvertError, FieldProblem, ValidationError

MAX_BYTES = 1024 * 1024
MAX_STYLES = 1000
MAX_TEXT = 4096  # characters of a style's prompt or negative
MAX_NAME = 128
COLUMNS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    """One saved style: its name, and the text it adds to the prompt and to the negative."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""

    def as_a1111(self) -> dict[str, str]:
        """A1111's `/sdapi/v1/prompt-styles` entry."""
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def merge(style_text: str, text: str) -> str:
    """The text with one style's text applied: in place of "{prompt}", else appended after ", "."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    return ", ".join(part for part in (text.strip(), style_text.strip()) if part)


def styled(styles: Sequence[Style], names: Sequence[str], text: str, part: str = "prompt",
           field: str = "styles") -> str:
    """The text with the named styles' `part` ("prompt" or "negative_prompt") applied in order; an unknown name is
    a ValidationError naming `field` and the names there are."""
    by_name = {s.name: s for s in styles}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        known = ", ".join(repr(n) for n in list(by_name)[:20]) or "none are configured"
        raise ValidationError([FieldProblem(field, unknown[0], f"must name saved styles ({known})")])
    for name in names:
        text = merge(getattr(by_name[name], part), text)
    return text


def apply(styles: Sequence[Style], names: Sequence[str], prompt: str, negative: str,
          field: str = "styles") -> tuple[str, str]:
    """The prompt and the negative with the named styles applied (`styled`)."""
    return styled(styles, names, prompt, "prompt", field), styled(styles, names, negative, "negative_prompt", field)


def read_styles(path: Path) -> tuple[Style, ...]:
    """The styles of an A1111 styles.csv, in file order; AvertError naming the file, line and rule otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise AvertError(f"styles: {path} has {size} bytes; must be at most {MAX_BYTES}")
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise AvertError(f"styles: cannot read {path} as UTF-8 text ({error.__class__.__name__})") from None
    return parse_styles(text, str(path))


def parse_styles(text: str, source: str = "styles") -> tuple[Style, ...]:
    """Styles from the text of a styles.csv (`source` names it in errors)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise AvertError(f"styles: {source} line 1 must be a header naming {', '.join(COLUMNS)}; "
                             f"{', '.join(missing)} missing")
        styles: dict[str, Style] = {}
        for row in reader:
            style = _style(row, source, reader.line_num)
            if style.name in styles:
                raise AvertError(f"styles: {source} line {reader.line_num}: the name {style.name!r} is given twice")
            styles[style.name] = style
            if len(styles) > MAX_STYLES:
                raise AvertError(f"styles: {source} has more than {MAX_STYLES} styles")
    except csv.Error as error:
        raise AvertError(f"styles: {source} line {reader.line_num + 1} is not CSV ({error})") from None
    return tuple(styles.values())


def _style(row: dict, source: str, line: int) -> Style:
    values = {c: row.get(c) or "" for c in COLUMNS}
    if not isinstance(row.get("name"), str) or not values["name"].strip():
        raise AvertError(f"styles: {source} line {line}: a style needs a name")
    if len(values["name"]) > MAX_NAME:
        raise AvertError(f"styles: {source} line {line}: a name must be at most {MAX_NAME} characters")
    long = [c for c in COLUMNS[1:] if len(values[c]) > MAX_TEXT]
    if long:
        raise AvertError(f"styles: {source} line {line}: {long[0]} must be at most {MAX_TEXT} characters")
    return Style(values["name"], values["prompt"], values["negative_prompt"])
