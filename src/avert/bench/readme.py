"""`avert bench readme`: every usage command of the README, run as a user runs it, on the embedded model, timed.

The commands are the `avert ...` lines of the README's ```sh blocks (continuation lines joined, comments left out;
the Quick start's install line gives its last part),
except the long runs that say their time beside them (`eval`, `train`, `serve`, `batch` and the other benchmarks;
`bench engine`, in the usage block, is run). They run in order, in one fresh folder, each as a new process, so the
files one makes (outputs/00000-42.png) are there for the next; `hole.png`, the inpainting example's mask, is drawn
first (a white square on black, 32x32). The page says how long each took and whether it succeeded.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from avert.bench import publish
from avert.evaluation.common import machine

LONG_RUNS = ("eval", "train", "serve", "batch")  # each says beside it how long it takes
EVAL = "eval"
SKIPPED_BENCH = ("startup", "sdxl", "scale", "nag", "readme")


def readme_commands(readme: str, evals: bool = False) -> list[str]:
    """The README's `avert` command lines, in order, each once, without comments (with `evals`, its `avert eval`
    lines instead)."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        parts = [part for line in block.replace("\\\n", " ").splitlines() for part in line.split(" && ")]
        for line in parts:
            words = shlex.split(line, comments=True) if line.lstrip().startswith("avert ") else []
            if len(words) < 2 or (words[1] == EVAL) != evals or words[1] in LONG_RUNS and not evals \
                    or (words[1] == "bench" and words[2:3] != ["engine"]):
                continue
            command = shlex.join(words)
            if command not in commands:
                commands.append(command)
    return commands


def at_seeds(command: str, seeds: int, folder: str) -> list[str]:
    """An `avert eval` line run at `seeds` seeds, quietly, its pages written into `folder` (not docs/); a `> FILE`
    redirection is left out (the output is not kept)."""
    words = shlex.split(command)
    if ">" in words:
        del words[words.index(">"):]
    if "--seeds" in words:
        at = words.index("--seeds")
        del words[at:at + 2]
    return [*words, "--seeds", str(seeds), "-q", "--docs", str(Path(folder) / "docs")]


def run_readme_benchmark(readme: Path = Path("README.md"), docs: Path = Path("docs"),
                         eval_seeds: int = 0) -> list[tuple[str, float, int]]:
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        hole = Image.new("L", (32, 32), 0)
        hole.paste(255, (8, 8, 24, 24))
        hole.save(Path(folder) / "hole.png")
        for command in readme_commands(readme.read_text(encoding="utf-8")):
            words = shlex.split(command)
            if words[1] == "bench":
                words += ["--docs", str(Path(folder) / "docs")]  # the run's own table, not docs/'s
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "avert.cli", *words[1:]], cwd=folder, capture_output=True,
                                  text=True)
            rows.append((command, time.perf_counter() - start, done.returncode))
            print(f"{rows[-1][1]:7.1f} s  exit {done.returncode}  {command}", file=sys.stderr)
        evals = readme_commands(readme.read_text(encoding="utf-8"), evals=True) if eval_seeds else []
        for command in [c for c in evals if not c.startswith("avert eval pool")]:  # pool: merges files, instant
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "avert.cli", *at_seeds(command, eval_seeds, folder)[1:]],
                                  cwd=folder, capture_output=True, text=True)
            rows.append((f"{command} (at --seeds {eval_seeds})", time.perf_counter() - start, done.returncode))
            print(f"{rows[-1][1]:7.1f} s  exit {done.returncode}  {rows[-1][0]}", file=sys.stderr)
    publish(table(rows), docs / "benchmarks" / "readme-commands.md")
    return rows


def table(rows: list[tuple[str, float, int]]) -> str:
    return "\n".join([
        "# The README's commands on the embedded model",
        "",
        f"Measured {date.today().isoformat()} by `avert bench readme` on {machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}: each `avert` line of the README's code blocks (the long runs, "
        "`avert eval`, `train`, `serve`, `batch` and the other benchmarks, say their time beside them), in order, "
        "as a fresh process in one folder, imports and model loading included; with `--eval-seeds N`, the "
        "`avert eval` lines too, each at N seeds (an eval's time grows about in proportion to its seeds: the "
        "default is 64).",
        "",
        "| command | seconds | exit status |",
        "|---|---|---|",
        *[f"| `{c}` | {t:.1f} | {code} |" for c, t, code in rows],
    ])
