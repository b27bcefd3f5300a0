"""Each benchmark page in docs/ has the format its command writes today (so a page made by an older command,
or edited by hand, is caught): the same lines, with numbers, the date and the machine left free; the
measured line names the CPU flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from avert.bench import engine, startup
from avert.evaluation.common import machine

DOCS = Path(__file__).parents[1] / "docs" / "benchmarks"


def pattern(rendered: str) -> list[re.Pattern]:
    """One pattern a line: the rendered line with its numbers, date and machine description left free."""
    lines = []
    for line in rendered.splitlines():
        text = re.escape(line.replace(machine(), "\0"))
        text = text.replace("\0", ".+CPU flags: .+")
        text = re.sub(r"\d+(?:\\\.\d+)?", r"[\\d.]+", text)
        lines.append(re.compile(text + "$"))
    return lines


@pytest.mark.parametrize("page, rendered", [
    ("engine.md", engine._table([engine.Row(s, b, 1.0, 1.0, 0) for s, b in engine.CASES], 5, 20, 64)),
    ("startup.md", startup.table([1.0] * 5)),
])
def test_each_benchmark_page_is_in_its_commands_current_format(page, rendered):
    written = (DOCS / page).read_text().strip().splitlines()
    expected = pattern(rendered)
    assert len(written) == len(expected), f"{page}: {len(written)} lines, the command writes {len(expected)}"
    for line, regex in zip(written, expected):
        assert regex.match(line), f"{page}: {line!r} does not match the command's {regex.pattern!r}"
