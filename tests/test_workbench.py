"""The server's side of the page's workbench: the schema's sections and each method's options, presets of negatives
per client (API key), an infotext read into request fields, a live preview of a running job, and what each model
is."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from avert.schema import GUIDANCE_METHODS, PARAMS
from avert.server.app import create_app
from avert.server.config import ServerConfig
from avert.server.presets_store import MAX_PRESETS
from avert.validation import METHOD_ONLY, ONE_SCALE

KEY_A, KEY_B = "a" * 24, "b" * 24


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    path = tmp_path_factory.mktemp("presets") / "presets.json"
    with TestClient(create_app(ServerConfig(presets_file=path)), base_url="http://127.0.0.1") as c:
        c.presets_path = path
        yield c


def test_the_schema_places_every_field_and_names_each_methods_options(client):
    schema = client.get("/v1/schema").json()
    placed = [n for names in schema["groups"].values() for n in names]
    page_fields = {"prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "sampler",
                   "schedule_type", "eta", "batch_size"}  # the page's first section
    assert sorted(placed + sorted(page_fields)) == sorted(p.name for p in PARAMS)
    assert len(placed) == len(set(placed))
    assert schema["method_options"]["apg"] == list(METHOD_ONLY[("apg",)])
    assert schema["method_options"]["cfg"] == []
    assert set(schema["method_options"]["seg"]) == {*METHOD_ONLY[("pag", "seg", "slg")], "seg_blur_sigma"}
    assert set(schema["method_options"]) == set(GUIDANCE_METHODS)
    assert schema["one_scale"] == list(ONE_SCALE)


def test_models_say_what_they_are(client):
    about = client.get("/v1/models").json()["about"]
    assert "32x32 model of a small procedural world" in about["embedded"]["about"]
    assert len(about["embedded"]["concepts"]) == 27


def test_presets_are_saved_listed_and_deleted_per_client_and_kept_in_one_file(client):
    body = {"negatives": ["sun", {"text": "trees", "weight": 0.5, "start": 0.2}], "negatives_rule": "mean",
            "guidance": "gated"}
    saved = client.put("/v1/presets/sky, no trees", json=body)
    assert saved.status_code == 200, saved.text
    preset = client.get("/v1/presets").json()["presets"]["sky, no trees"]
    assert preset["negatives"][1] == {"text": "trees", "weight": 0.5, "start": 0.2, "end": 1.0}
    assert preset["negatives_rule"] == "mean" and preset["guidance"] == "gated"
    stored = json.loads(client.presets_path.read_text())
    assert stored["local"]["sky, no trees"] == preset
    assert oct(client.presets_path.stat().st_mode & 0o777) == "0o600"
    assert client.delete("/v1/presets/sky, no trees").json() == {"deleted": "sky, no trees"}
    assert client.get("/v1/presets").json()["presets"] == {}
    gone = client.delete("/v1/presets/sky, no trees")
    assert gone.status_code == 404 and gone.json()["errors"][0]["field"] == "name"


@pytest.mark.parametrize("name, body, field", [
    ("..%2F..%2Fetc%2Fpasswd", {"negatives": ["sun"]}, "name"),  # a browser sends "../" encoded so
    ("a/b", {"negatives": ["sun"]}, "name"),
    ("x" * 65, {"negatives": ["sun"]}, "name"),
    (" lead", {"negatives": ["sun"]}, "name"),
    ("ok", {"negatives": []}, "negatives"),
    ("ok", {"negatives": ["a"] * 9}, "negatives"),
    ("ok", {"negatives": [{"text": "sun", "weight": 99}]}, "negatives[0].weight"),
    ("ok", {"negatives": [{"text": "sun", "start": 0.8, "end": 0.2}]}, "negatives[0].start"),
    ("ok", {"negatives": ["sun"], "guidance": "magic"}, "guidance"),
    ("ok", {"negatives": ["sun"], "negatives_rule": "most"}, "negatives_rule"),
    ("ok", {"negatives": ["sun"], "steps": 3}, "steps"),
])
def test_a_bad_preset_is_refused_by_name(client, name, body, field):
    answer = client.put(f"/v1/presets/{name}", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == field
    assert client.get("/v1/presets").json()["presets"] == {}


def test_each_api_key_has_its_own_presets_and_a_bounded_number(tmp_path):
    config = ServerConfig(api_keys=(KEY_A, KEY_B), presets_file=tmp_path / "p.json")
    with TestClient(create_app(config), base_url="http://127.0.0.1") as c:
        a, b = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
        assert c.put("/v1/presets/mine", json={"negatives": ["sun"]}, headers=a).status_code == 200
        assert c.get("/v1/presets", headers=b).json()["presets"] == {}
        assert c.delete("/v1/presets/mine", headers=b).status_code == 404
        assert list(c.get("/v1/presets", headers=a).json()["presets"]) == ["mine"]
        assert c.get("/v1/presets").status_code == 401
        for i in range(MAX_PRESETS - 1):
            assert c.put(f"/v1/presets/p{i}", json={"negatives": ["sun"]}, headers=a).status_code == 200
        full = c.put("/v1/presets/one more", json={"negatives": ["sun"]}, headers=a)
        assert full.status_code == 422 and "delete one first" in full.json()["detail"]
        assert c.put("/v1/presets/mine", json={"negatives": ["moon"]}, headers=a).status_code == 200  # a replacement
    again = create_app(config)  # a restarted server reads them back
    with TestClient(again, base_url="http://127.0.0.1") as c:
        assert c.get("/v1/presets", headers=a).json()["presets"]["mine"]["negatives"][0]["text"] == "moon"


def test_an_unreadable_presets_file_starts_empty_and_is_replaced(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with TestClient(create_app(ServerConfig(presets_file=path)), base_url="http://127.0.0.1") as c:
        assert c.get("/v1/presets").json()["presets"] == {}
        assert c.put("/v1/presets/new", json={"negatives": ["sun"]}).status_code == 200
    assert "new" in json.loads(path.read_text())["local"]


def test_an_infotext_reads_into_the_fields_that_differ_from_the_defaults(client):
    text = ("a red house\nNegative prompt: sun\nSteps: 12, Sampler: DDIM, CFG scale: 5, Seed: 3, Size: 32x48, "
            "Guidance: apg, APG eta: 0.5, NAG scale: 2")
    fields = client.post("/v1/infotext", json={"infotext": text}).json()["fields"]
    assert fields == {"prompt": "a red house", "negative_prompt": "sun", "steps": 12, "sampler": "DDIM",
                      "cfg_scale": 5.0, "seed": 3, "width": 32, "height": 48, "guidance": "apg", "apg_eta": 0.5,
                      "nag_scale": 2.0}
    several = ('a hill\nNegative prompt: sun, trees\nSteps: 20, Seed: 1, Negatives rule: mean, '
               'Negatives: "[{\\"text\\": \\"sun\\", \\"weight\\": 1.0, \\"start\\": 0.0, \\"end\\": 1.0}, '
               '{\\"text\\": \\"trees\\", \\"weight\\": 0.5, \\"start\\": 0.0, \\"end\\": 1.0}]"')
    fields = client.post("/v1/infotext", json={"infotext": several}).json()["fields"]
    assert fields["negatives"][1] == {"text": "trees", "weight": 0.5, "start": 0.0, "end": 1.0}
    assert "negative_prompt" not in fields and fields["negatives_rule"] == "mean"


@pytest.mark.parametrize("body, field", [({"infotext": ""}, "infotext"), ({"infotext": 5}, "infotext"),
                                         ({"infotext": "x" * 40000}, "infotext"), ({"text": "a"}, "text")])
def test_a_bad_infotext_is_refused_by_name(client, body, field):
    answer = client.post("/v1/infotext", json=body)
    assert answer.status_code == 422
    assert field in [e["field"] for e in answer.json()["errors"]]


def test_a_running_job_has_a_live_preview_and_a1111_progress_its_current_image(client):
    job = client.post("/v1/generate?wait=false", json={"prompt": "a red house", "steps": 150, "batch_size": 16}).json()
    try:
        deadline = time.time() + 60
        preview = None
        while time.time() < deadline and not preview:
            preview = client.get(f"/v1/jobs/{job['id']}?images=false&preview=true").json()["progress"].get("preview")
        assert preview, "no preview while the job ran"
        from avert.init_image import decode_base64

        assert decode_base64(preview, "preview")[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get("/sdapi/v1/progress").json()["current_image"]
        assert client.get("/sdapi/v1/progress?skip_current_image=true").json()["current_image"] is None
        assert "preview" not in client.get(f"/v1/jobs/{job['id']}?images=false").json()["progress"]
    finally:
        client.delete(f"/v1/jobs/{job['id']}")
    done = client.get(f"/v1/jobs/{job['id']}?images=false&preview=true")
    deadline = time.time() + 30
    while done.json()["status"] not in ("done", "cancelled", "failed") and time.time() < deadline:
        done = client.get(f"/v1/jobs/{job['id']}?images=false&preview=true")
    assert done.json()["progress"]["preview"] is None  # an ended job has its images, not a preview


def test_a_preset_is_bounded_in_size_and_presets_count_against_the_rate_limit(client, tmp_path):
    big = client.put("/v1/presets/big", json={"negatives": ["x" * 8000] * 3})
    assert big.status_code == 422 and "must take at most 16384 characters" in big.json()["detail"]
    with TestClient(create_app(ServerConfig(rate_limit=2, presets_file=tmp_path / "p.json")),
                    base_url="http://127.0.0.1") as c:
        codes = [c.put(f"/v1/presets/p{i}", json={"negatives": ["sun"]}).status_code for i in range(3)]
        assert codes == [200, 200, 429]
        assert c.get("/v1/presets").status_code == 200  # reading is not limited
