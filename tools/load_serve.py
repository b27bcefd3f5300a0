"""Load and fault run of `avert serve` on the embedded model; prints a table and writes docs/benchmarks/serve.md.

    python tools/load_serve.py [--requests 100] [--rounds 3] [--steps 20]

It starts real servers (`python -m avert.cli serve`) as child processes and, for each:

* fires N concurrent A1111 txt2img requests per round (default queue of 16, then a queue that holds them all)
  and counts what came back: 200, a clean 429/503 with Retry-After, or anything else (a failure of the run);
  the server's resident memory (VmRSS) is read during the run and after each round; worker health after;
* cancels a running job through DELETE /v1/jobs/{id} and times how soon it stops;
* sends malformed and hostile bodies and checks each gets a 4xx naming the field.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from avert.evaluation.common import machine  # noqa: E402
from avert.testing.live import ServerProcess  # noqa: E402

FAULTS = [  # (label, path, raw body or JSON, field the answer must name)
    ("malformed JSON", "/sdapi/v1/txt2img", b'{"prompt": "a', "body"),
    ("not an object", "/v1/generate", b"[1, 2, 3]", "body"),
    ("steps as text", "/sdapi/v1/txt2img", {"steps": "20"}, "steps"),
    ("cfg_scale as list", "/v1/generate", {"cfg_scale": [7]}, "cfg_scale"),
    ("width 100000", "/sdapi/v1/txt2img", {"width": 100000, "height": 32}, "width"),
    ("batch_size 10^9", "/v1/generate", {"batch_size": 10**9}, "batch_size"),
    ("steps 10^6", "/v1/generate", {"steps": 10**6}, "steps"),
    ("prompt of 100k chars", "/v1/generate", {"prompt": "x" * 100_000}, "prompt"),
    ("unknown sampler", "/sdapi/v1/txt2img", {"sampler_name": "Euler z"}, "sampler_name"),
    ("unknown model", "/v1/generate", {"model": "sd-xl-turbo"}, "model"),
    ("path-like model ../", "/v1/generate", {"model": "../../etc/passwd"}, "model"),
    ("absolute model path", "/sdapi/v1/txt2img", {"override_settings": {"sd_model_checkpoint": "/etc/passwd"}},
     "override_settings.sd_model_checkpoint"),
    ("path in options", "/sdapi/v1/options", {"sd_model_checkpoint": "..\\..\\x.safetensors"}, "sd_model_checkpoint"),
    ("URL in png-info", "/sdapi/v1/png-info", {"image": "http://169.254.169.254/latest"}, "image"),
    ("unknown field", "/v1/generate", {"prompt": "a", "callback_url": "http://x"}, "callback_url"),
    ("body of 20 MiB", "/v1/generate", b'{"prompt": "' + b"x" * (20 << 20) + b'"}', "body"),
]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Server(ServerProcess):
    """`avert serve` in a child process on a free port, its log in a file (an unread pipe would stall it); no rate
    limit: this is a load test of the queue, from one address."""

    def __init__(self, queue_size: int):
        super().__init__("--queue-size", str(queue_size), "--rate-limit", "0")
        self.__enter__()

    def stop(self) -> None:
        self.__exit__()


def burst(server: Server, n: int, steps: int, round_no: int) -> dict:
    """N concurrent txt2img requests; counts by outcome, latencies, memory during and after."""
    samples: list[float] = []
    stop = threading.Event()

    def sample_memory():
        while not stop.is_set():
            samples.append(rss_mib(server.process.pid))
            time.sleep(0.1)

    def one(i: int):
        start = time.perf_counter()
        body = {"prompt": "a house on a hill", "negative_prompt": "green tones", "seed": 1000 * round_no + i,
                "steps": steps, "width": 32, "height": 32, "sampler_name": "Euler a"}
        r = requests.post(server.url + "/sdapi/v1/txt2img", json=body, timeout=600)
        ok = r.status_code == 200 and len(r.json()["images"]) == 1
        clean = r.status_code in (429, 503) and r.headers.get("retry-after", "").isdigit() and "detail" in r.json()
        return ("ok" if ok else "busy" if clean else f"bad {r.status_code}"), time.perf_counter() - start

    before = rss_mib(server.process.pid)
    sampler = threading.Thread(target=sample_memory)
    sampler.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    status = requests.get(server.url + "/v1/status").json()
    done = sorted(t for kind, t in outcomes if kind == "ok")
    return {"ok": len(done), "busy": sum(k == "busy" for k, _ in outcomes),
            "bad": [k for k, _ in outcomes if k not in ("ok", "busy")], "wall": wall,
            "p50": done[len(done) // 2] if done else None, "max": done[-1] if done else None,
            "rss_before": before, "rss_peak": max(samples + [before]), "rss_after": rss_mib(server.process.pid),
            "workers": status["workers"], "alive": server.process.poll() is None}


def cancel_mid_run(server: Server) -> dict:
    body = {"prompt": "a boat", "steps": 150, "width": 32, "height": 32}
    job = requests.post(server.url + "/v1/generate?wait=false", json=body).json()
    url = f"{server.url}/v1/jobs/{job['id']}?images=false"
    while requests.get(url).json()["progress"]["step"] < 5:
        time.sleep(0.01)
    asked = time.perf_counter()
    requests.delete(f"{server.url}/v1/jobs/{job['id']}")
    while (state := requests.get(url).json())["status"] == "running":
        time.sleep(0.01)
    after = requests.post(server.url + "/v1/generate", json={**body, "steps": 4})
    return {"status": state["status"], "step": state["progress"]["step"], "steps": 150,
            "stopped_in": time.perf_counter() - asked, "next_ok": after.status_code == 200}


def faults(server: Server) -> list[dict]:
    rows = []
    for label, path, body, field in FAULTS:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"})
        named = [e.get("field") for e in r.json().get("errors", [])]
        rows.append({"case": label, "status": r.status_code, "field": field,
                     "ok": 400 <= r.status_code < 500 and field in named,
                     "message": (r.json().get("errors") or [{}])[0].get("message", r.json().get("detail", ""))})
    return rows


def report(args, runs: list[tuple[int, list[dict]]], cancel: dict, fault_rows: list[dict]) -> str:
    lines = [
        "# `avert serve` under load and faults",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python tools/load_serve.py --requests "
        f"{args.requests} --rounds {args.rounds} --steps {args.steps}` on {machine()}. "
        f"Each round: {args.requests} concurrent `POST /sdapi/v1/txt2img` (embedded model, 32x32, {args.steps} "
        "steps, Euler a, a negative prompt) against one `avert serve` child process.",
        "",
        "| queue size | round | 200 | clean 503 + Retry-After | other | wall s | p50 s (200s) | max s | "
        "RSS before MiB | RSS peak MiB | RSS after MiB | worker alive |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, rounds in runs:
        for i, r in enumerate(rounds, 1):
            lines.append(f"| {size} | {i} | {r['ok']} | {r['busy']} | {len(r['bad'])} | {r['wall']:.1f} | "
                         f"{_num(r['p50'])} | {_num(r['max'])} | {r['rss_before']:.0f} | {r['rss_peak']:.0f} | "
                         f"{r['rss_after']:.0f} | {'yes' if r['alive'] and all(r['workers'].values()) else 'NO'} |")
    lines += [
        "",
        f"**Cancel mid-run**: a 150-step job cancelled with `DELETE /v1/jobs/{{id}}` at step >= 5 ended "
        f"`{cancel['status']}` at step {cancel['step']} of {cancel['steps']}, {cancel['stopped_in'] * 1000:.0f} ms "
        f"after the request; the next job {'succeeded' if cancel['next_ok'] else 'FAILED'}.",
        "",
        "**Faults** (each must be a 4xx naming the field):",
        "",
        "| case | status | field named | message |",
        "|---|---|---|---|",
        *[f"| {f['case']} | {f['status']} | {f['field'] if f['ok'] else 'NO'} | {_cell(f['message'])} |"
          for f in fault_rows],
    ]
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cell(text: str) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) < 110 else text[:107] + "..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "serve.md")
    args = parser.parse_args()
    runs, cancel, fault_rows = [], None, None
    for size in (16, args.requests):
        server = Server(size)
        try:
            requests.post(server.url + "/sdapi/v1/txt2img", json={"steps": 2, "width": 32, "height": 32})  # warm
            rounds = [burst(server, args.requests, args.steps, i) for i in range(args.rounds if size == 16 else 1)]
            runs.append((size, rounds))
            if cancel is None:
                cancel, fault_rows = cancel_mid_run(server), faults(server)
        finally:
            server.stop()
    text = report(args, runs, cancel, fault_rows)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    bad = any(r["bad"] or not r["alive"] for _, rs in runs for r in rs) or not all(f["ok"] for f in fault_rows)
    return 1 if bad or cancel["status"] != "cancelled" else 0


if __name__ == "__main__":
    sys.exit(main())
