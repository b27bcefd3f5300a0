"""Each benchmark page in docs/ has the format its command writes today (so a page made by an older command,
or edited by hand, is caught): the same lines, with numbers, the date and the machine left free; the
measured line names the CPU flags."""

from __future__ import annotations

import importlib.util
import re
from argparse import Namespace
from pathlib import Path

import pytest

from avert.bench import engine, nag, readme, scale, sdxl, startup
from avert.evaluation.common import machine

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs" / "benchmarks"


def load_serve_page() -> str:
    """tools/load_serve.py's report on made-up figures: 3 rounds at queue 16 and one at 100, every fault case."""
    spec = importlib.util.spec_from_file_location("load_serve", ROOT / "tools" / "load_serve.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    r = {"ok": 1, "busy": 1, "bad": [], "wall": 1.0, "p50": 1.0, "max": 1.0, "rss_before": 1.0, "rss_peak": 1.0,
         "rss_after": 1.0, "workers": {"w": True}, "alive": True}
    cancel = {"status": "cancelled", "step": 1, "steps": 150, "stopped_in": 1.0, "next_ok": True}
    faults = [{"case": label, "status": 422, "field": field, "ok": True, "message": "\1"}
              for label, _, _, field in tool.FAULTS]
    return tool.report(Namespace(requests=100, rounds=3, steps=20), [(16, [r] * 3), (100, [r])], cancel, faults)


def pattern(rendered: str) -> list[re.Pattern]:
    """One pattern a line: the rendered line with its numbers, date and machine description left free."""
    lines = []
    for line in rendered.splitlines():
        text = re.escape(line.replace(machine(), "\0"))
        text = text.replace("\0", ".+CPU flags: .+")
        text = re.sub(r"(?:\\-)?\d+(?:\\\.\d+)?", r"-?[\\d.]+", text).replace(re.escape("\1"), ".*")
        lines.append(re.compile(text + "$"))
    return lines


@pytest.mark.parametrize("page, rendered", [
    ("engine.md", engine._table([engine.Row(s, b, 1.0, 1.0, 0) for s, b in engine.CASES], 5, 20, 64)),
    ("startup.md", startup.table([1.0] * 5)),
    ("serve.md", load_serve_page()),
    ("sdxl.md", sdxl._table([sdxl.Run("avert", 1.0, 1.0, 1.0), sdxl.Run("diffusers", 1.0, 1.0, 1.0)], 1024, 1, 1.0,
                            0, 2)),
    ("nag.md", nag.table([nag.Row(name, 1.0, 20, 20) for name, _ in nag.CASES], 5, 20)),
    ("scale-out.md", scale.table([scale.Run(name, 1, 1, 1.0, 1.0, 1.0, 1.0) for name in
                                  ("one process (no Ray)", "Ray, 1 worker node", "Ray, 2 worker nodes")], 96, 8)),
    ("first-run.md", readme.first_run_table(*readme.quick_start((ROOT / "README.md").read_text()),
                                            {"git clone": 1.0, "install": 1.0, "first picture": 1.0})),
])
def test_each_benchmark_page_is_in_its_commands_current_format(page, rendered):
    written = (DOCS / page).read_text().strip().splitlines()
    expected = pattern(rendered)
    assert len(written) == len(expected), f"{page}: {len(written)} lines, the command writes {len(expected)}"
    for line, regex in zip(written, expected):
        assert regex.match(line), f"{page}: {line!r} does not match the command's {regex.pattern!r}"


def test_the_scale_benchmarks_steady_rate_counts_images_after_every_workers_first_chunk():
    rows = [{"chunk": c, "finished": 10.0 * c + 0.001 * i, "files": ["a.png"], "worker": w}
            for w in ("a", "b") for c in range(3) for i in range(4)]
    rows.append({"chunk": 0, "finished": 15.0, "files": ["c.png"], "worker": "c"})  # a worker that started late
    # from 15.0 (the last first chunk) to 20.003: the chunks written after it (b's and a's third: 8 images)
    assert scale.steady_rate(rows) == pytest.approx(8 / 5.003)


def test_the_readme_page_times_exactly_the_readmes_commands_and_each_succeeded():
    """docs/benchmarks/readme-commands.md (`avert bench readme`) lists the README's usage commands as they are now,
    in order, each with exit status 0: a command added or changed in the README without a new run is caught."""
    from avert.bench import readme

    page = (DOCS / "readme-commands.md").read_text()
    rows = re.findall(r"^\| `(.+)` \| ([\d.]+) \| (\d+) \|$", page, flags=re.M)
    commands = [c for c, _, _ in rows if not c.endswith(")")]  # the evals' rows end "(at --seeds N)"
    assert commands == readme.readme_commands((ROOT / "README.md").read_text())
    assert all(code == "0" for _, _, code in rows), [c for c, _, code in rows if code != "0"]
    assert page.splitlines()[2].startswith("Measured ") and "CPU flags: " in page.splitlines()[2]


def test_the_readmes_commands_are_read_as_a_user_runs_them():
    from avert.bench import readme

    text = ("```sh\npython3 -m venv .venv && pip install -e . && avert compare \"a b\" -n c -o x.png\n```\n"
            "```sh\navert generate \"a\" \\\n    --seed 1   # a comment\navert eval negatives --seeds 8\n"
            "avert bench engine\navert bench startup\navert serve\navert generate \"a\" --seed 1\n```\n")
    assert readme.readme_commands(text) == ["avert compare 'a b' -n c -o x.png", "avert generate a --seed 1",
                                            "avert bench engine"]
    assert readme.readme_commands(text, evals=True) == ["avert eval negatives --seeds 8"]
    assert readme.at_seeds("avert eval methods --only cfg --json > a.json --seeds 64", 8, "/t") == [
        "avert", "eval", "methods", "--only", "cfg", "--json", "--seeds", "8", "-q", "--docs", "/t/docs"]
    assert readme.quick_start("## Quick start\n\n```sh\npython3 -m venv .venv && pip install -e . && avert compare "
                              "a -n b\n```\n") == ("python3 -m venv .venv && pip install -e .", "avert compare a -n b")
