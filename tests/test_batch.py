"""`avert batch` run locally: up-front validation, PNGs and manifest, resume, failures recorded, kills survived."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avert.batch import jobs as batch_jobs
from avert.batch.local import run_local
from avert.batch.render import Settings
from avert.batch.storage import MANIFEST, Manifest, Storage
from avert.cli import main
from avert.output.pnginfo import read_png_metadata


def _write(path: Path, bodies) -> Path:
    path.write_text("".join((b if isinstance(b, str) else json.dumps(b)) + "\n" for b in bodies))
    return path


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines() if line.strip()]


def _request(i: int, **extra) -> dict:
    return {"prompt": "a red house on a hill", "negative_prompt": "clouds", "seed": i, "steps": 2, **extra}


def test_every_bad_line_is_reported_with_its_number_and_nothing_is_made(tmp_path, capsys):
    jobs = _write(tmp_path / "jobs.jsonl", [_request(0), {"prompt": "x", "steps": 0}, "", {"prompt": "y", "colour": 1},
                                            "not json", {"prompt": "z", "model": "../etc"}, _request(1),
                                            {"prompt": "w", "model": ["embedded"]}])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "5 bad lines, nothing was rendered" in err
    for line, text in ((2, "steps: 0"), (4, "colour: 1"), (5, "body: 'not json' is not allowed; must be a JSON object"),
                       (6, "model: '../etc'"), (8, "model: ['embedded']")):
        assert f"jobs.jsonl:{line}: {text}" in err
    assert "jobs.jsonl:1:" not in err and "jobs.jsonl:7:" not in err
    assert len(err.strip().splitlines()) == 6  # one line each
    assert not (tmp_path / "out").exists()


def test_a_local_run_writes_pngs_with_generates_metadata_and_a_manifest_and_a_second_run_skips_them(tmp_path, capsys):
    bodies = [_request(i) for i in range(3)] + [
        {"prompt": "a boat on a lake", "negatives": [{"text": "sun", "weight": 0.5, "start": 0.2}], "steps": 2,
         "batch_size": 2},                                            # no seed: one derived from the line
        {"prompt": "a tree", "steps": 3, "sampler": "DPM++ 2M", "negative_prompt": ["rain", "snow"], "batch_size": 2},
        _request(0)]                                                 # the first line again: one request
    jobs = _write(tmp_path / "jobs.jsonl", bodies)
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--out", str(out), "-q"]) == 0
    assert "5 done, 0 failed, 0 already done (of 5 requests, 1 duplicate lines folded); 7 images" in \
        capsys.readouterr().out
    rows = _rows(out)
    assert sorted(r["line"] for r in rows) == [1, 2, 3, 4, 5] and {r["status"] for r in rows} == {"done"}
    assert next(r for r in rows if r["line"] == 1)["lines"] == [1, 6]
    files = sorted(f for r in rows for f in r["files"])
    assert files == sorted(f"images/{p.name}" for p in (out / "images").iterdir())
    boat = next(r for r in rows if r["line"] == 4)
    assert boat["seeds"][1] == boat["seeds"][0] + 1
    # the image and its metadata are what `avert generate` makes of the same request
    from avert import GenerationRequest, generate
    from avert.request import Negative

    alone = generate(GenerationRequest("a boat on a lake", negatives=(Negative("sun", 0.5, 0.2),), steps=2,
                                       batch_size=2, seed=boat["seeds"][0]))
    for generated, name in zip(alone.images, boat["files"]):
        meta = read_png_metadata(out / name)
        assert meta.parameters == generated.infotext
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_image = next(r for r in rows if r["line"] == 5)
    assert [read_png_metadata(out / f).parameters.split("\n")[1] for f in per_image["files"]] == \
        ["Negative prompt: rain", "Negative prompt: snow"]
    # run again: nothing to do, the same seeds
    assert main(["batch", str(jobs), "--out", str(out), "-q"]) == 0
    assert "0 done, 0 failed, 5 already done" in capsys.readouterr().out
    assert len(_rows(out)) == 5
    again = batch_jobs.derived_seed({k: v for k, v in bodies[3].items()} | {"model": "embedded"})
    assert boat["seeds"][0] == again


def test_a_failing_request_is_recorded_with_its_error_and_the_run_goes_on(tmp_path, monkeypatch):
    import avert.batch.render as render

    real = render.generate_together

    def failing(requests, *a, **k):
        if any("explode" in r.prompt for r in requests):
            raise RuntimeError("the UNet exploded")
        return real(requests, *a, **k)

    monkeypatch.setattr(render, "generate_together", failing)
    jobs = _write(tmp_path / "jobs.jsonl", [_request(0), _request(1, prompt="explode"), _request(2)])
    summary = run_local(jobs, str(tmp_path / "out"), Settings(), progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    rows = {r["line"]: r for r in _rows(tmp_path / "out")}
    assert rows[2]["status"] == "failed" and rows[2]["error"] == "RuntimeError: the UNet exploded"
    assert rows[1]["status"] == rows[3]["status"] == "done"
    monkeypatch.setattr(render, "generate_together", real)  # fixed: a second run makes only the failed one
    summary = run_local(jobs, str(tmp_path / "out"), Settings(), progress=False)
    assert (summary.done, summary.failed, summary.skipped) == (1, 0, 2)


def test_the_cli_exit_status_is_1_when_a_request_failed(tmp_path, monkeypatch, capsys):
    import avert.batch.render as render

    monkeypatch.setattr(render, "generate_together", lambda *a, **k: (_ for _ in ()).throw(MemoryError("full")))
    jobs = _write(tmp_path / "jobs.jsonl", [_request(0)])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "-q"]) == 1
    assert "1 request failed; their errors are in the manifest" in capsys.readouterr().err


def test_a_killed_run_loses_at_most_its_chunk_and_the_next_run_makes_each_request_exactly_once(tmp_path):
    jobs = _write(tmp_path / "jobs.jsonl", [_request(i) for i in range(60)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "avert.cli", "batch", str(jobs), "--out", str(out), "-q", "--batch-images", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / MANIFEST).exists() and len(_rows(out)) >= 8:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = len(_rows(out))
    assert 8 <= first < 60
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    hashes = [r["hash"] for r in rows]
    assert len(hashes) == len(set(hashes)) == 60 and sorted(r["line"] for r in rows) == list(range(1, 61))
    files = sorted(f for r in rows for f in r["files"])
    assert files == sorted(f"images/{p.name}" for p in (out / "images").iterdir())  # no stray or temporary file


def test_a_cut_last_manifest_line_is_ignored_and_its_request_made_again(tmp_path):
    jobs = _write(tmp_path / "jobs.jsonl", [_request(0), _request(1)])
    out = tmp_path / "out"
    run_local(jobs, str(out), Settings(), progress=False)
    text = (out / MANIFEST).read_text().splitlines()
    (out / MANIFEST).write_text(text[0] + "\n" + text[1][: len(text[1]) // 2])
    summary = run_local(jobs, str(out), Settings(), progress=False)
    assert (summary.done, summary.skipped) == (1, 1)
    assert len(_rows_parsed(out)) == 2


def _rows_parsed(out: Path) -> list[dict]:
    rows = []
    for line in (out / MANIFEST).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def test_an_output_in_use_by_another_run_is_refused(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    first = Manifest(storage)
    try:
        with pytest.raises(Exception, match="in use by another avert batch run"):
            Manifest(storage)
    finally:
        first.close()
    Manifest(storage).close()  # free again once the first run has ended


def test_past_the_first_bad_lines_the_rest_are_listed_by_number(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batch_jobs, "MAX_REPORTED", 2)
    bad = {"prompt": "x", "steps": 0}
    jobs = _write(tmp_path / "jobs.jsonl", [bad, _request(0), bad, bad, bad, bad, _request(1), bad])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "6 bad lines" in err and "jobs.jsonl:1: steps" in err and "jobs.jsonl:3: steps" in err
    assert err.strip().endswith("and 4 more bad lines: 4-6, 8")


def test_the_file_is_bounded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batch_jobs, "MAX_LINE_BYTES", 64)
    jobs = _write(tmp_path / "jobs.jsonl", [_request(0, prompt="x" * 100)])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "jobs.jsonl:1: a line longer than 64 bytes" in capsys.readouterr().err
    monkeypatch.setattr(batch_jobs, "MAX_LINE_BYTES", 1 << 20)
    monkeypatch.setattr(batch_jobs, "MAX_LINES", 2)
    jobs = _write(tmp_path / "jobs.jsonl", [_request(i) for i in range(3)])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "more than 2 lines" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "cannot be read" in capsys.readouterr().err
    _write(tmp_path / "empty.jsonl", ["", ""])
    assert main(["batch", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out"), "-q"]) == 2
    assert "holds no request" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--workers", "2"], "--workers: 2 is not allowed; applies only with --ray-address"),
    (["--cpus-per-worker", "2"], "--cpus-per-worker: 2.0 is not allowed; applies only with --ray-address"),
    (["--out", "s3://bucket/run"], "is a URI; a local run writes to a folder"),
    (["--batch-images", "0"], "batch-images"),
])
def test_flags_that_do_not_apply_are_refused_by_name(tmp_path, capsys, flags, message):
    jobs = _write(tmp_path / "jobs.jsonl", [_request(0)])
    args = ["batch", str(jobs), "--out", str(tmp_path / "out"), "-q", *flags]
    with pytest.raises(SystemExit) if flags[0] == "--batch-images" else contextlib.nullcontext():
        assert main(args) == 2
    assert message in capsys.readouterr().err


def test_without_ray_the_ray_address_flag_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    jobs = _write(tmp_path / "jobs.jsonl", [_request(0)])
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--ray-address", "auto", "-q"]) == 2
    assert "pip install 'avert[ray]'" in capsys.readouterr().err


def test_serve_refuses_its_ray_flags_without_ray(capsys):
    assert main(["serve", "--replicas", "2"]) == 2
    assert "--replicas: 2 is not allowed; applies only with --ray" in capsys.readouterr().err
