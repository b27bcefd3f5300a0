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


def readme_commands(readme: str, evals: bool = False) -> list[str]:
    """The README's `avert` command lines, in order, each once, without comments (with `evals`, its `avert eval`
    lines instead)."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", readme, flags=re.S):
        parts = [part for line in block.replace("\\\n", " ").splitlines() for part in line.split(" && ")]
        for line in parts:
            words = shlex.split(line, comments=True) if line.lstrip().startswith("avert ") else []
            if len(words) < 2 or not _wanted(words, evals):
                continue
            command = shlex.join(words)
            if command not in commands:
                commands.append(command)
    return commands


def _wanted(words: list[str], evals: bool) -> bool:
    """An `avert eval` line when `evals`; else a usage line: not a long run, and of the benchmarks only engine."""
    if evals:
        return words[1] == EVAL
    return words[1] not in LONG_RUNS and (words[1] != "bench" or words[2:3] == ["engine"])


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


def quick_start(readme: str) -> tuple[str, str]:
    """The Quick start's line, as (the install, the first avert command)."""
    section = readme.split("## Quick start", 1)[1]
    line = re.search(r"```sh\n(.*?)\n```", section, flags=re.S).group(1).strip()
    install, _, command = line.rpartition(" && avert ")
    return install, "avert " + command


def run_first_run_benchmark(readme: Path = Path("README.md"), docs: Path = Path("docs")) -> dict[str, float]:
    """From `git clone` to the Quick start's picture, as a new user: a clone of this repository's HEAD in a fresh
    folder, its install line in a new virtual environment with pip's cache off (what a fresh machine downloads),
    then its command."""
    install, command = quick_start(readme.read_text(encoding="utf-8"))
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
        for step, shell in (("git clone", f"git clone -q {shlex.quote(str(Path.cwd()))} repo"),
                            ("install", f"cd repo && {install}"),
                            ("first picture", f"cd repo && . .venv/bin/activate && {command}")):
            start = time.perf_counter()
            subprocess.run(["bash", "-c", shell], cwd=folder, env=env, check=True, capture_output=True)
            times[step] = time.perf_counter() - start
            print(f"{times[step]:7.1f} s  {step}", file=sys.stderr)
    publish(first_run_table(install, command, times), docs / "benchmarks" / "first-run.md")
    return times


def first_run_table(install: str, command: str, times: dict[str, float]) -> str:
    return "\n".join([
        "# From git clone to the first picture",
        "",
        f"Measured {date.today().isoformat()} by `avert bench first-run` on {machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}: a clone of the repository in a fresh folder, the README's Quick start "
        "line in a new virtual environment with pip's cache off (packages from the registry, torch's CPU wheel from "
        "this machine's disk), then its first command.",
        "",
        f"Install: `{install}`",
        "",
        f"Command: `{command}`",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {step} | {t:.1f} |" for step, t in times.items()],
        f"| in all | {sum(times.values()):.1f} |",
    ])
