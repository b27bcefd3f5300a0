"""`avert batch --ray-address` and `avert serve --ray` on a real local Ray cluster: a head and two worker nodes on
this machine (loopback only, 1 CPU each), started and stopped by these tests.

One cluster at a time on the machine (a lock file: two test workers must not start two), shared by the tests of
this module; a test that removes a worker node adds one back.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from ray import cluster_utils as ray_cluster_utils  # in the test extras: these tests never skip

from serving import free_port, wait_until

MANIFEST = "manifest.jsonl"


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # never swap in the machine's network address
    with open(Path(tempfile.gettempdir()) / "avert-ray-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cluster = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        try:
            cluster.workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
            cluster.wait_for_nodes()
            yield cluster
        finally:
            cluster.shutdown()


def _jobs(path: Path, count: int, steps: int = 1) -> Path:
    path.write_text("".join(json.dumps({"prompt": "a red house on a hill", "negative_prompt": "clouds", "seed": i,
                                        "steps": steps}) + "\n" for i in range(count)))
    return path


def _rows(out: Path) -> list[dict]:
    if not (out / MANIFEST).exists():
        return []
    rows = []
    for line in (out / MANIFEST).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def _driver(jobs: Path, out: str, address: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "avert.cli", "batch", str(jobs), "--out", out, "--ray-address",
                             address, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _exactly_once(out: Path, count: int) -> list[dict]:
    rows = _rows(out)
    hashes = [r["hash"] for r in rows]
    assert len(hashes) == len(set(hashes)) == count, "a request lost or recorded twice"
    assert {r["status"] for r in rows} == {"done"}
    assert sorted(r["line"] for r in rows) == list(range(1, count + 1))
    files = sorted(f for r in rows for f in r["files"])
    assert files == sorted(f"images/{p.name}" for p in (out / "images").iterdir()), "a file lost or made twice"
    return rows


def _ray_listeners() -> list[str]:
    """The addresses every listening TCP socket of this machine's Ray processes is bound to (from /proc)."""
    listening = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening[fields[9]] = fields[1].split(":")[0]
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes()
            if not any(k in command for k in (b"gcs_server", b"raylet", b"ray::", b"site-packages/ray/")):
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in listening:
                    found.append(listening[target[8:-1]])
        except OSError:
            continue  # a process that ended meanwhile
    return found


# 127.0.0.1, ::ffff:127.0.0.1 and ::1 as /proc/net writes them (never 0.0.0.0, :: or the machine's address)
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def test_every_node_of_the_test_cluster_listens_on_loopback_only(cluster):
    addresses = _ray_listeners()
    assert addresses, "no listening socket of Ray's was found: the check would pass on nothing"
    assert set(addresses) <= LOOPBACK, addresses


def test_a_job_runs_over_both_workers_and_survives_losing_one(cluster, tmp_path):
    jobs, out = _jobs(tmp_path / "jobs.jsonl", 200), tmp_path / "out"
    driver = _driver(jobs, str(out), cluster.address)
    try:
        wait_until(lambda: driver.poll() is not None or (
            len(_rows(out)) >= 40 and len({r["worker"] for r in _rows(out)}) >= 2), timeout=240, every=0.2)
        before = _rows(out)
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert len({r["worker"] for r in before}) == 2  # both workers' actors made images
        cluster.remove_node(cluster.workers.pop())  # a worker node dies mid-run
        _, err = driver.communicate(timeout=400)
        assert driver.returncode == 0, err[-2000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        cluster.workers.append(cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1"))
    assert len(before) < 200
    _exactly_once(out, 200)


def test_a_resumed_run_after_the_driver_is_killed_finishes_the_rest_on_a_filesystem_uri(cluster, tmp_path):
    jobs, out = _jobs(tmp_path / "jobs.jsonl", 60), tmp_path / "out"
    uri = f"file://{out}"  # through pyarrow's filesystem, as s3:// or gs:// would be
    driver = _driver(jobs, uri, cluster.address)
    try:
        wait_until(lambda: driver.poll() is not None or len(_rows(out)) >= 16, timeout=240, every=0.1)
        assert driver.poll() is None, driver.communicate()[1][-2000:]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    first = len(_rows(out))
    assert 16 <= first < 60
    done = subprocess.run([sys.executable, "-m", "avert.cli", "batch", str(jobs), "--out", uri, "--ray-address",
                           cluster.address, "-q"], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already done (of 60 requests)" in done.stdout
    assert int(done.stdout.split(" done,")[0].split()[-1]) == 60 - first
    _exactly_once(out, 60)


def test_avert_serve_on_ray_spreads_requests_over_two_replicas(cluster, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "avert.cli", "serve", "--ray", "--ray-address", cluster.address,
                               "--replicas", "2", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.poll() is not None or _answers(base), timeout=180, every=0.5)
        assert server.poll() is None, server.communicate()[0][-3000:]
        processes = set()
        wait_until(lambda: processes.add(requests.get(f"{base}/v1/status", timeout=10).json()["process"])
                   or len(processes) == 2, timeout=60, every=0.05)
        body = {"prompt": "a red house on a hill", "negative_prompt": "clouds", "steps": 1, "seed": 5}
        answer = requests.post(f"{base}/v1/generate", json=body, timeout=120)
        assert answer.status_code == 200 and answer.json()["seeds"] == [5]
        a1111 = requests.post(f"{base}/sdapi/v1/txt2img", json={**body, "width": 32, "height": 32}, timeout=120)
        assert a1111.status_code == 200 and len(a1111.json()["images"]) == 1
        bad = requests.post(f"{base}/v1/generate", json={**body, "steps": 0}, timeout=60)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "steps"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode == 0, server.communicate()[0][-3000:]


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/v1/status", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_the_ray_serve_cli_builder_makes_the_deployment_without_starting_anything():
    from ray import serve

    from avert.server.on_ray import app_builder

    app = app_builder({"replicas": "3", "cpus": "2"})
    assert isinstance(app, serve.Application)
