"""Red-team run of `avert serve` and the `avert` command; prints the table and writes it into docs/security.md.

    python tools/redteam.py [--memory-requests 1000] [--no-cli]

Every hostile input of `avert.testing.hostile` (HTTP requests to a real server process on 127.0.0.1, and
invocations of the real command) is tried once; the table lists the status each got, the status it must get,
and the time. Then, on the same server: the memory after N mixed bad requests, how long /sdapi/v1/progress
takes to answer while hostile requests are being refused, and how many model evaluations a job runs after a
DELETE. The section between the markers in docs/security.md is replaced; the rest of the page is kept.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from avert.testing.hostile import ServerProcess, cli_cases, http_cases, run_cli_many, send  # noqa: E402

ERROR_LINE = re.compile(r"^avert(?: [\w-]+)*: error: .+$", re.M)  # one error line: ours, or argparse's
BEGIN, END = "<!-- redteam:begin -->", "<!-- redteam:end -->"


def http_rows(url: str) -> list[dict]:
    rows = []
    for case in http_cases():
        status, seconds, text = send(url, case)
        rows.append({"kind": "HTTP", "group": case.group, "label": case.label, "want": case.status, "got": status,
                     "seconds": seconds, "traceback": "Traceback" in text})
    return rows


def cli_rows(folder: Path) -> list[dict]:
    cases = cli_cases(folder)
    results = run_cli_many(cases)  # each in its own process, forked from one that has imported avert
    return [{"kind": "CLI", "group": c.group, "label": c.label, "want": c.status, "got": code, "seconds": seconds,
             "traceback": "Traceback" in err or len(ERROR_LINE.findall(err)) != 1}
            for c, (code, seconds, err) in zip(cases, results)]


def memory(server: ServerProcess, count: int) -> dict:
    """RSS after a warm-up of 100 bad requests, then after `count` more, cycling through the HTTP cases that
    are refused (no image is made)."""
    refused = [c for c in http_cases() if c.status != 200 and len(c.data() or b"") < 2**20]
    for case in refused[:100]:
        send(server.url, case)
    before = server.rss_bytes()
    for case in itertools.islice(itertools.cycle(refused), count):
        send(server.url, case)
    after = server.rss_bytes()
    return {"requests": count, "before": before, "after": after, "change": after / before - 1}


def progress_latency(server: ServerProcess, seconds: float = 15.0) -> dict:
    """Poll /sdapi/v1/progress every 0.1 s while two threads send the heaviest refused requests."""
    heavy = [c for c in http_cases() if c.status in (413, 422) and c.group in ("prompt bombs", "png-info", "JSON (generate)",
                                                                           "work budget", "headers and origin")]
    stop = threading.Event()

    def attack():
        for case in itertools.cycle(heavy):
            if stop.is_set():
                return
            send(server.url, case)

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    latencies = []
    end = time.time() + seconds
    while time.time() < end:
        started = time.perf_counter()
        requests.get(server.url + "/sdapi/v1/progress", timeout=30)
        latencies.append(time.perf_counter() - started)
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(60)
    return {"polls": len(latencies), "median": statistics.median(latencies), "max": max(latencies)}


def cancel_run(server: ServerProcess) -> dict:
    """A 150-step Heun job (300 model evaluations) at 64x64; DELETE it after a few evaluations; count the
    evaluations it ran after the DELETE returned."""
    body = {"prompt": "a house", "negative_prompt": "trees", "steps": 150, "sampler": "Heun", "width": 64, "height": 64}
    job = requests.post(server.url + "/v1/generate?wait=false", json=body, timeout=30).json()
    url = f"{server.url}/v1/jobs/{job['id']}"
    while requests.get(url, params={"images": "false"}, timeout=30).json()["progress"]["step"] < 4:
        time.sleep(0.01)
    answer = requests.delete(url, timeout=30).json()
    at_delete = answer["progress"]["step"]
    started = time.perf_counter()
    while (state := requests.get(url, params={"images": "false"}, timeout=30).json())["status"] == "running":
        time.sleep(0.01)
    return {"status": state["status"], "at_delete": at_delete, "at_end": state["progress"]["step"],
            "total": state["progress"]["steps"], "seconds": time.perf_counter() - started}


def work_rate(server: ServerProcess) -> list[dict]:
    """Seconds per megapixel step of the served model: plain CFG requests of known work, timed whole."""
    rows = []
    for size, steps in ((64, 20), (256, 4), (512, 2)):
        body = {"prompt": "a house", "guidance": "cfg", "width": size, "height": size, "steps": steps, "seed": 1}
        requests.post(server.url + "/v1/generate", json={**body, "steps": 1}, timeout=600)  # warm
        started = time.perf_counter()
        assert requests.post(server.url + "/v1/generate", json=body, timeout=600).ok
        seconds = time.perf_counter() - started
        work = size * size / 1e6 * steps * 2  # Euler a: one evaluation a step; cfg without a negative: 2 branches
        rows.append({"size": size, "steps": steps, "work": work, "seconds": seconds, "rate": seconds / work})
    return rows


def longest_text(server: ServerProcess) -> dict:
    """The most text one request may make the server encode (65536 characters: a prompt and 7 negatives of
    8192), each a different text, at 32x32 and one step: the time is the text encoder's."""
    words = [f"w{i}" for i in range(20000)]
    texts = [" ".join(words[k * 2000:(k + 1) * 2000])[:8192] for k in range(8)]
    body = {"prompt": texts[0], "negatives": texts[1:], "guidance": "cfg", "width": 32, "height": 32, "steps": 1}
    started = time.perf_counter()
    r = requests.post(server.url + "/v1/generate", json=body, timeout=600)
    return {"status": r.status_code, "seconds": time.perf_counter() - started, "chars": sum(map(len, texts))}


def machine() -> str:
    from avert.evaluation.common import cpu_flags

    model = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores, CPU flags: {cpu_flags()}; Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    lines = ["| # | kind | group | input | status | must be | s |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        mark = "" if r["got"] == r["want"] and not r["traceback"] else " **(differs)**"
        lines.append(f"| {i} | {r['kind']} | {r['group']} | {r['label'].replace('|', '&#124;')} | {r['got']}{mark} | "
                     f"{r['want']} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def report(rows: list[dict], mem: dict, latency: dict, cancel: dict, rate: list[dict], text: dict) -> str:
    http = [r for r in rows if r["kind"] == "HTTP"]
    cli = [r for r in rows if r["kind"] == "CLI"]
    wrong = [r for r in rows if r["got"] != r["want"] or r["traceback"]]
    five = [r for r in http if r["got"] >= 500]
    slow = max(r["seconds"] for r in http if r["want"] != 200)
    return "\n".join([
        BEGIN,
        f"Made by `python tools/redteam.py` on {datetime.now(timezone.utc):%Y-%m-%d} ({machine()}), against "
        "`avert serve --rate-limit 0` (loopback, no key, default budget) on the embedded model.",
        "",
        f"- **{len(rows)} distinct hostile inputs**: {len(http)} HTTP requests, {len(cli)} CLI invocations. "
        f"Status other than the one required: {len(wrong)}. HTTP 5xx: {len(five)}. "
        f"Tracebacks: {sum(r['traceback'] for r in rows)}.",
        f"- Slowest answer to a refused HTTP request: {slow:.2f} s. The 8190-character parser bomb "
        f"(910 x `(a:1.1), `) renders in {next(r['seconds'] for r in http if r['label'].startswith('910 x ' + chr(39) + '(')):.2f} s.",
        f"- Memory: {mem['before'] / 2**20:.0f} MiB after a warm-up, {mem['after'] / 2**20:.0f} MiB after "
        f"{mem['requests']} more bad requests ({mem['change'] * 100:+.1f}%).",
        f"- `/sdapi/v1/progress` while two clients send the heaviest refused requests: {latency['polls']} polls, median "
        f"{latency['median'] * 1000:.0f} ms, slowest {latency['max'] * 1000:.0f} ms.",
        f"- DELETE of a running 150-step Heun job: evaluation {cancel['at_delete']} of {cancel['total']} when the "
        f"DELETE returned, {cancel['at_end']} when it stopped ({cancel['status']}, {cancel['seconds']:.2f} s later).",
        "- The embedded model's cost per megapixel step (plain CFG, Euler a, whole requests): " + "; ".join(
            f"{r['size']}x{r['size']}, {r['steps']} steps ({r['work']:.3g} MP steps): {r['seconds']:.1f} s, "
            f"{r['rate']:.1f} s per MP step" for r in rate) + f". At the slowest rate the default budget of 16 MP "
        f"steps is {16 * max(r['rate'] for r in rate) / 60:.1f} minutes.",
        f"- The most text a request may have encoded ({text['chars']} characters, a prompt and 7 negatives, 32x32, one "
        f"step): status {text['status']} in {text['seconds']:.1f} s (one batched forward of the text encoder, not "
        "interrupted by a cancel).",
        "",
        table(rows),
        END,
    ])


def write(page: Path, section: str) -> None:
    text = page.read_text() if page.exists() else f"# Security\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    page.write_text(head + section + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-requests", type=int, default=1000)
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI cases (faster)")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "security.md")
    args = parser.parse_args()
    with ServerProcess("--rate-limit", "0") as server:
        rows = http_rows(server.url)
        mem = memory(server, args.memory_requests)
        latency = progress_latency(server)
        cancel = cancel_run(server)
        rate = work_rate(server)
        text = longest_text(server)
    if not args.no_cli:
        with tempfile.TemporaryDirectory() as folder:
            rows += cli_rows(Path(folder))
    section = report(rows, mem, latency, cancel, rate, text)
    print(section)
    write(args.page, section)
    return 0 if all(r["got"] == r["want"] and not r["traceback"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
