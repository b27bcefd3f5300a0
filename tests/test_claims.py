"""Every figure in the README and docs/ can be traced to the command that made it: each page with figures names a
command, each section added to a page by hand names its own, and each README paragraph with a figure names a
command or links the page that holds the figure (which names its command)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
FIGURE = re.compile(r"\b\d+(?:\.\d+)? (?:s|ms|min)\b|\b\d+(?:\.\d+)?(?:%| ?MiB| ?GiB| ?GB)|\b0\.\d\d+\b|\b\d+ of \d+\b")
COMMAND = re.compile(r"(?:`|^)(?:avert [a-z]|python (?:tools/|-m )|\.ci/run)", re.M)  # in prose or a code block
LINK = re.compile(r"\]\(((?:docs/|\.\./)?[\w/.-]+\.md)(?:#[\w-]*)?\)")
PAGES = sorted(p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*.md"))


def prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_a_page_with_figures_names_the_command_that_made_them(page):
    text = (ROOT / page).read_text()
    if FIGURE.search(prose(text)):
        assert COMMAND.search(text), f"{page} has figures but names no command"


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_a_section_added_by_hand_names_its_command(page):
    sections = re.split(r"\n(?=#+ )", (ROOT / page).read_text())
    for section in sections:
        heading = section.splitlines()[0]
        if "by hand" in heading and FIGURE.search(prose(section)):
            assert COMMAND.search(section), f"{page}: section {heading!r} has figures but names no command"


SENTENCE = re.compile(r"(?<=[.!?:])\s+(?=[A-Z*\"(-])")


@pytest.mark.parametrize("page", PAGES, ids=str)
def test_a_one_off_figure_names_the_command_that_made_it(page):
    """A figure from a one-off run is quoted only with the repo command it was a run of (`avert eval ...` with
    its flags); figures of one-off scripts that are not in the repo are not quoted at all (the history has them).
    Checked per sentence of prose; a table's rows are held by the sentence after the table that names the command."""
    for paragraph in re.split(r"\n\s*\n", prose((ROOT / page).read_text())):
        if paragraph.lstrip().startswith("|"):
            continue
        for sentence in SENTENCE.split(paragraph):
            if re.search(r"one-off", sentence, re.I) and FIGURE.search(sentence):
                assert COMMAND.search(sentence), f"{page}: {sentence[:200]!r}"


def test_each_readme_paragraph_with_a_figure_names_a_command_or_links_its_page():
    for paragraph in re.split(r"\n\s*\n", (ROOT / "README.md").read_text()):
        if not FIGURE.search(prose(paragraph)) or paragraph.lstrip().startswith("|"):
            continue
        linked = [ROOT / link for link in LINK.findall(paragraph) if (ROOT / link).exists()]
        assert COMMAND.search(paragraph) or any(COMMAND.search(p.read_text()) for p in linked), paragraph[:200]


def mean_suppression(record: str) -> float:
    import json

    rows = json.loads((ROOT / "docs" / "eval" / record).read_text())
    values = [r["suppression"] for r in rows if r["suppression"] is not None]
    return sum(values) / len(values)


@pytest.mark.parametrize("claim, record", [
    ("mean suppression 0.89 against 0.96", "negatives-posterior.json"),
    ("(mean suppression 0.96, worst drop 9 points", "negatives-gated.json"),
])
def test_the_readmes_method_figures_are_those_of_the_records_they_come_from(claim, record):
    """The README quotes posterior's and gated's mean suppression from the runs recorded in docs/eval (made by
    `avert eval negatives --method ... --json`); a re-made record with other figures must change the README."""
    readme = (ROOT / "README.md").read_text()
    assert claim in readme
    assert f"{mean_suppression(record):.2f}" == re.search(r"suppression ([\d.]+)", claim).group(1)
