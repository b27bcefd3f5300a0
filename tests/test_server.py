"""`avert serve` through FastAPI's TestClient on the embedded model: A1111 shapes, the native API, jobs,
the queue, failures, validation and security."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fastapi.testclient import TestClient
from PIL import Image

from avert.errors import AvertError, ValidationError
from avert.output.pnginfo import parse_parameters, read_png_metadata
from avert.pipeline.generate import generate
from avert.request import GenerationRequest
from avert.server.app import create_app
from avert.server.config import ServerConfig
from avert.server.registry import ModelRegistry

FAST = {"steps": 4, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(ServerConfig()), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def embedded():
    return ModelRegistry().components("embedded")


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def alone(embedded, seed: int, negative: str, **fields) -> np.ndarray:
    request = GenerationRequest("a house on a hill", negative_prompt=negative, seed=seed, **fields)
    return np.asarray(generate(request, embedded).images[0].image.convert("RGB"), dtype=np.int16)


class Gate:
    """A render that holds every job at its first step until `release`, to test jobs mid-run."""

    def __init__(self):
        self.reached = threading.Event()
        self.opened = threading.Event()

    def render(self, request, components, **kw):
        on_step = kw["on_step"]

        def step(event):
            on_step(event)
            self.reached.set()
            self.opened.wait(30)

        return generate(request, components, **{**kw, "on_step": step})

    def release(self):
        self.opened.set()


def assert_names(response, status: int, field: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert field in [e["field"] for e in body["errors"]], body
    assert "Traceback" not in response.text
    return body


# ---------------------------------------------------------------- A1111


@pytest.mark.parametrize("sampler, scheduler, shown", [("Euler", "karras", "Sampler: Euler, Schedule type: Karras"),
                                                       ("DPM++ 2M", "karras", "Sampler: DPM++ 2M Karras, CFG"),
                                                       ("DDIM", "sgm_uniform", "Schedule type: SGM Uniform"),
                                                       ("Euler", "Exponential", "Schedule type: Exponential"),
                                                       ("Euler", "automatic", "Sampler: Euler, CFG")])
def test_a1111_schedulers_are_schedule_types(client, sampler, scheduler, shown):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a house", "sampler_name": sampler, "scheduler": scheduler,
                                               **FAST})
    assert r.status_code == 200, r.text
    assert shown in json.loads(r.json()["info"])["infotexts"][0]


def test_txt2img_has_a1111_shape_metadata_and_defaults(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a house on a hill", "negative_prompt": "green tones",
                                               "seed": 7, "batch_size": 2, "sampler_name": "DPM++ 2M",
                                               "scheduler": "karras", **FAST})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"} and len(body["images"]) == 2
    assert body["parameters"]["steps"] == 4 and body["parameters"]["n_iter"] == 1  # echoed, defaults filled
    assert body["parameters"]["cfg_scale"] == 7.0 and body["parameters"]["styles"] == []
    info = json.loads(body["info"])
    assert info["all_seeds"] == [7, 8] and info["seed"] == 7
    assert info["all_negative_prompts"] == ["green tones", "green tones"]
    assert info["sampler_name"] == "DPM++ 2M Karras" and info["sd_model_name"] and info["width"] == 32
    meta = read_png_metadata(base64.b64decode(body["images"][1]))
    parsed = parse_parameters(meta.parameters)
    assert parsed.negative_prompt == "green tones" and parsed.get("Seed") == "8"
    assert meta.parameters == info["infotexts"][1]


def test_txt2img_negative_per_image_equals_each_seed_alone(client, embedded):
    negatives = ["green tones", "sun", "green tones"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a house on a hill", "negative_prompt": negatives,
                                               "seed": 40, "batch_size": 3, "sampler_name": "Euler a", **FAST})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["all_negative_prompts"] == negatives and info["all_seeds"] == [40, 41, 42]
    for i, (b64, negative) in enumerate(zip(r.json()["images"], negatives)):
        assert np.abs(pixels(b64) - alone(embedded, 40 + i, negative, **FAST, sampler="Euler a")).max() == 0


def test_txt2img_takes_the_models_default_guidance_and_override_settings_can_ask_for_cfg(client, embedded):
    """The embedded model recommends gated: an A1111 body gets it (the image equals gated alone);
    override_settings.avert_guidance "cfg" gives plain CFG; a method that is not one is refused by that name.
    On the native API a negative_scale, which gated refuses, is a 422 that says the method is the model's."""
    body = {"prompt": "a house on a hill", "negative_prompt": "green tones", "seed": 2, "sampler_name": "Euler a",
            **FAST}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert "Guidance: gated" in json.loads(r.json()["info"])["infotexts"][0]
    gated, cfg = (alone(embedded, 2, "green tones", **FAST, sampler="Euler a", guidance=g) for g in ("gated", "cfg"))
    assert np.abs(pixels(r.json()["images"][0]) - gated).max() == 0 and np.abs(gated - cfg).mean() > 10
    plain = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"avert_guidance": "cfg"}})
    assert plain.status_code == 200, plain.text
    assert "Guidance" not in json.loads(plain.json()["info"])["infotexts"][0]
    assert np.abs(pixels(plain.json()["images"][0]) - cfg).max() == 0
    assert client.get("/sdapi/v1/options").json()["avert_guidance"] is None
    assert_names(client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {"avert_guidance": "best"}}),
                 422, "override_settings.avert_guidance")
    native = {"prompt": "a house on a hill", "negative_prompt": "green tones", "negative_scale": 9.0, **FAST}
    refused = assert_names(client.post("/v1/generate", json=native), 422, "negative_scale")
    assert "gated (the model's default; set guidance, e.g. cfg, for another)" in json.dumps(refused)
    assert client.post("/v1/generate", json={**native, "guidance": "cfg"}).status_code == 200


def test_txt2img_n_iter_continues_the_seeds(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a boat", "seed": 3, "batch_size": 2, "n_iter": 2, **FAST})
    assert json.loads(r.json()["info"])["all_seeds"] == [3, 4, 5, 6]


@pytest.mark.parametrize("body, field", [
    ({"steps": "20"}, "steps"),
    ({"steps": 0}, "steps"),
    ({"cfg_scale": "high"}, "cfg_scale"),
    ({"width": 100000, "height": 32}, "width"),
    ({"batch_size": 10**9}, "batch_size"),
    ({"seed": 2**40}, "seed"),
    ({"sampler_name": "Euler z"}, "sampler_name"),
    ({"scheduler": "polyexponential"}, "scheduler"),
    ({"sampler_name": "Euler a", "scheduler": "karras"}, "scheduler"),
    ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"sd_model_checkpoint": "../../etc/passwd"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"sd_model_checkpoint": "/tmp"}}, "override_settings.sd_model_checkpoint"),
    ({"enable_hr": "yes"}, "enable_hr"),
    ({"styles": ["cinematic"]}, "styles"),
    ({"eta": 1.5, "sampler_name": "DPM++ 2M SDE"}, "eta"),
    ({"eta": 1.5, "sampler_name": "Euler a"}, "eta"),
    ({"n_iter": 0}, "n_iter"),
    ({"negative_prompt": ["a", "b"]}, "negative_prompt"),
    ({"prompt": "x" * 9000}, "prompt"),
])
def test_txt2img_bad_fields_are_422_naming_the_field(client, body, field):
    assert_names(client.post("/sdapi/v1/txt2img", json={**FAST, **body}), 422, field)


def test_txt2img_names_every_bad_field_at_once(client):
    body = assert_names(client.post("/sdapi/v1/txt2img", json={"steps": 0, "cfg_scale": 99, "restore_faces": True,
                                                                "sampler_name": "Euler z"}), 422, "steps")
    assert {e["field"] for e in body["errors"]} == {"steps", "cfg_scale", "restore_faces", "sampler_name"}


def test_txt2img_ignores_fields_a1111_does_not_have_and_names_them_in_info(client):
    body = {**FAST, "mystery": 1, "callback_url": "http://x", **{f"extra{i}": i for i in range(40)}}
    answer = client.post("/sdapi/v1/txt2img", json=body).json()
    info = json.loads(answer["info"])
    assert info["ignored_fields"][:3] == ["mystery", "callback_url", "extra0"]
    assert info["ignored_fields"][-1] == "... and 10 more" and len(info["ignored_fields"]) == 33
    assert "ignored fields A1111's txt2img does not have: mystery, callback_url" in info["warnings"][-1]
    assert "mystery" not in answer["parameters"] and answer["parameters"]["steps"] == FAST["steps"]
    assert json.loads(client.post("/sdapi/v1/txt2img", json=FAST).json()["info"])["ignored_fields"] == []
    assert_names(client.post("/v1/generate", json={"prompt": "a", "mystery": 1}), 422, "mystery")  # native: strict


JSON = {"Content-Type": "application/json"}


def test_malformed_json_and_non_objects_name_the_body(client):
    assert_names(client.post("/sdapi/v1/txt2img", content=b'{"prompt": ', headers=JSON), 422, "body")
    assert_names(client.post("/v1/generate", content=b"[1, 2]", headers=JSON), 422, "body")
    assert_names(client.post("/v1/generate", content=b'{"prompt": "a"}'), 415, "content-type")


def test_lists_options_and_styles(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    assert {"name", "aliases", "options"} <= set(samplers[0]) and "DPM++ 2M Karras" in [s["name"] for s in samplers]
    assert [s["name"] for s in client.get("/sdapi/v1/schedulers").json()] == ["automatic", "uniform", "karras",
                                                                           "exponential", "sgm_uniform"]
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["title"] == "embedded" and "/" not in models[0]["filename"]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "embedded"
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.get("/sdapi/v1/prompt-styles").json() == []
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert_names(client.post("/sdapi/v1/options", json={"samples_format": "jpg"}), 422, "samples_format")
    assert_names(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "../x"}), 422, "sd_model_checkpoint")
    assert_names(client.post("/sdapi/v1/img2img", json={}), 422, "init_images")


def test_options_switch_models_by_name_only(tiny_folder, tmp_path):
    shutil.copytree(tiny_folder, tmp_path / "tiny-sd")
    (tmp_path / "notes.txt").write_text("not a model")
    with TestClient(create_app(ServerConfig(models_dir=tmp_path)), base_url="http://127.0.0.1") as c:
        titles = [m["title"] for m in c.get("/sdapi/v1/sd-models").json()]
        assert titles == ["embedded", "tiny-sd"]
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd [0123456789]"}).status_code == 200
        assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny-sd"
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "a red car", "steps": 2, "width": None, "height": None})
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["info"])["width"] == 16  # the tiny model's native size
        assert_names(c.post("/v1/generate", json={"prompt": "x", "model": str(tmp_path / "tiny-sd")}), 422, "model")
        r = c.post("/v1/generate", json={"prompt": "a", "model": "embedded", **FAST})
        assert r.status_code == 200 and r.json()["model"] == "embedded"


def test_png_info_reads_parameters_and_refuses_urls(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a boat", "negative_prompt": "clouds", "seed": 9, **FAST})
    image = r.json()["images"][0]
    info = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image}).json()
    assert info["parameters"]["Negative prompt"] == "clouds" and info["parameters"]["Seed"] == "9"
    assert info["parameters"]["Size-1"] == "32" and info["items"]["avert"]["seed"] == 9
    assert info["info"].startswith("a boat\nNegative prompt: clouds")
    assert_names(client.post("/sdapi/v1/png-info", json={"image": "http://169.254.169.254/x.png"}), 422, "image")
    assert_names(client.post("/sdapi/v1/png-info", json={"image": "not base64!"}), 422, "image")
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    assert_names(client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(jpeg.getvalue()).decode()}),
                 422, "image")


# ---------------------------------------------------------------- native


def test_generate_returns_images_seeds_and_metadata(client, embedded):
    r = client.post("/v1/generate", json={"prompt": "a house on a hill", "negative_prompt": "sun", "seed": 5,
                                          "batch_size": 2, "sampler": "Euler", **FAST})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done" and body["seeds"] == [5, 6] and body["progress"]["fraction"] == 1.0
    first = body["images"][0]
    assert first["record"]["request"]["negative_prompt"] == "sun" and "Negative prompt: sun" in first["infotext"]
    assert np.abs(pixels(first["png"]) - alone(embedded, 5, "sun", **FAST, sampler="Euler")).max() <= 1


def test_generate_takes_every_request_field_and_refuses_unknown_ones(client):
    body = {name: GenerationRequest.__dataclass_fields__[name].default for name in GenerationRequest.__dataclass_fields__}
    body.update(prompt="a tree", seed=1, **FAST)
    assert client.post("/v1/generate", json=body).status_code == 200
    reused = client.post("/v1/generate", json={**body, "s_min_uncond": 100.0, "guidance_reuse": True}).json()
    assert reused["images"][0]["record"]["request"]["guidance_reuse"] is True
    assert "Guidance reuse: True" in reused["images"][0]["infotext"]
    assert_names(client.post("/v1/generate", json={"prompt": "a", "guidance_reuse": "yes"}), 422, "guidance_reuse")
    assert_names(client.post("/v1/generate", json={"prompt": "a", "sampler_name": "Euler"}), 422, "sampler_name")
    assert_names(client.post("/v1/generate", json={"prompt": "a", "steps": 1.5}), 422, "steps")
    assert_names(client.post("/v1/generate", json={"prompt": "a", "height": 33, "width": 32}), 422, "height")
    assert_names(client.post("/v1/generate", json={"prompt": "a", "model": "C:\\models\\x"}), 422, "model")


def test_generate_takes_negatives_with_weights_windows_and_methods(client):
    body = {"prompt": "a house on a hill", "seed": 4, "guidance": "perp-neg", "negative_scale": 5.0,
            "negatives": [{"text": "sun", "weight": 1.5, "start": 0, "end": 0.5}, "green tones"], **FAST}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    image = r.json()["images"][0]
    request = image["record"]["request"]
    assert request["negatives"] == [{"text": "sun", "weight": 1.5, "start": 0.0, "end": 0.5},
                                    {"text": "green tones", "weight": 1.0, "start": 0.0, "end": 1.0}]
    assert request["guidance"] == "perp-neg" and "Guidance: perp-neg" in image["infotext"]
    plain = client.post("/v1/generate", json={**body, "negatives": [], "guidance": "cfg"}).json()
    assert not np.array_equal(pixels(plain["images"][0]["png"]), pixels(image["png"]))
    bad = {**body, "negatives": [{"text": "sun", "weight": 99}, {"text": "x", "colour": "red"}]}
    assert_names(client.post("/v1/generate", json=bad), 422, "negatives[1].colour")
    assert_names(client.post("/v1/generate", json={**body, "negatives": [{"text": "sun", "weight": 99}]}), 422,
                 "negatives[0].weight")
    assert_names(client.post("/v1/generate", json={"prompt": "a", "guidance": "magic"}), 422, "guidance")


def test_both_apis_take_the_rule_for_several_negatives_and_record_it(client):
    body = {"prompt": "a house on a hill", "seed": 4, "negatives": ["sun", "clouds"], **FAST}
    default = client.post("/v1/generate", json=body).json()["images"][0]
    assert default["record"]["request"]["negatives_rule"] == "strongest-protect"
    assert "Negatives rule: strongest-protect" in default["infotext"]
    joined = client.post("/v1/generate", json={**body, "negatives_rule": "joined"}).json()["images"][0]
    one_text = client.post("/v1/generate", json={**body, "negatives": [], "negative_prompt": "sun, clouds"}).json()
    assert np.array_equal(pixels(joined["png"]), pixels(one_text["images"][0]["png"]))
    assert not np.array_equal(pixels(joined["png"]), pixels(default["png"]))
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a house on a hill", "seed": 4, "negative_prompt": "",
                                                   "negatives": ["sun", "clouds"], "negatives_rule": "mean", **FAST})
    assert a1111.status_code == 200, a1111.text
    assert "Negatives rule: mean" in json.loads(a1111.json()["info"])["infotexts"][0]
    assert_names(client.post("/v1/generate", json={**body, "negatives_rule": "max"}), 422, "negatives_rule")


def test_txt2img_maps_s_min_uncond_and_clip_skip(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a boat", "negative_prompt": "clouds", "s_min_uncond": 0.5,
                                               "override_settings": {"CLIP_stop_at_last_layers": 2}, **FAST})
    assert r.status_code == 200, r.text
    infotext = json.loads(r.json()["info"])["infotexts"][0]
    assert "NGMS: 0.5" in infotext and "Clip skip: 2" in infotext
    assert_names(client.post("/sdapi/v1/txt2img", json={"override_settings": {"CLIP_stop_at_last_layers": 99}}),
                 422, "override_settings.CLIP_stop_at_last_layers")


def test_embeddings_are_listed_and_used_by_name(tmp_path):
    import torch
    from safetensors.torch import save_file

    from avert.server.registry import ModelRegistry

    width = ModelRegistry().components("embedded").text_encoder.get_input_embeddings().weight.shape[1]
    save_file({"emb_params": torch.randn(2, width)}, str(tmp_path / "nosun.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a tensor file")
    with TestClient(create_app(ServerConfig(embeddings_dir=tmp_path)), base_url="http://127.0.0.1") as c:
        listed = c.get("/sdapi/v1/embeddings").json()
        assert listed["loaded"]["nosun"]["vectors"] == 2 and listed["loaded"]["nosun"]["shape"] == width
        assert "broken" in listed["skipped"]
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "a day scene", "negative_prompt": "nosun", "seed": 2, **FAST})
        plain = c.post("/sdapi/v1/txt2img", json={"prompt": "a day scene", "negative_prompt": "nosun!", "seed": 2,
                                                  **FAST})
        assert r.status_code == 200 and not np.array_equal(pixels(r.json()["images"][0]),
                                                          pixels(plain.json()["images"][0]))
        assert c.post("/sdapi/v1/txt2img", json={"prompt": "broken", **FAST}).status_code == 422


def test_compare_renders_the_same_seed_without_and_with_each_negative(client):
    r = client.post("/v1/compare", json={"prompt": "a day scene", "columns": ["sun", "clouds"], "seed": 12, **FAST})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == ["No negative prompt", "Negative prompt: sun", "Negative prompt: clouds"]
    assert body["seeds"] == [12, 12, 12]
    assert [i["negative_prompt"] for i in body["images"]] == ["", "sun", "clouds"]
    plain = client.post("/v1/generate", json={"prompt": "a day scene", "seed": 12, **FAST}).json()
    assert np.array_equal(pixels(plain["images"][0]["png"]), pixels(body["images"][0]["png"]))
    assert_names(client.post("/v1/compare", json={"prompt": "a", "columns": []}), 422, "columns")
    assert_names(client.post("/v1/compare", json={"prompt": "a", "columns": ["x" * 9000]}), 422, "columns[0].text")
    assert_names(client.post("/v1/compare", json={"prompt": "a", "columns": [3]}), 422, "columns[0]")
    weighted = client.post("/v1/compare", json={"prompt": "a", "columns": [{"text": "sun", "weight": 2}], **FAST})
    assert weighted.json()["labels"] == ["No negative prompt", "Negative prompt: sun (weight 2)"]


def test_compare_with_maps_adds_a_map_and_a_pixel_change_to_each_negatives_images(client):
    body = {"prompt": "a day scene", "columns": ["sun"], "seed": 12, "map": True, **FAST}
    r = client.post("/v1/compare", json=body)
    assert r.status_code == 200, r.text
    plain, negative = r.json()["images"]
    assert "map_png" not in plain and "negative_maps" not in plain["record"]
    assert negative["record"]["negative_maps"][0]["negative"] == "sun"
    shown, change = (Image.open(io.BytesIO(base64.b64decode(negative[k]))) for k in ("map_png", "difference_png"))
    assert shown.size == change.size == (32, 32) and not shown.info
    expected = np.abs(pixels(plain["png"]).astype(int) - pixels(negative["png"]).astype(int)).mean(-1) * 2
    assert np.array_equal(np.asarray(change)[..., 0], np.clip(np.round(expected), 0, 255).astype(np.uint8))
    alone = client.post("/v1/compare", json={**body, "map": False}).json()["images"][1]
    assert np.array_equal(pixels(alone["png"]), pixels(negative["png"])) and "map_png" not in alone  # same image
    assert_names(client.post("/v1/compare", json={**body, "map": "yes"}), 422, "map")
    assert_names(client.post("/v1/generate", json={"prompt": "a", "map": True}), 422, "map")


def test_unknown_job_is_404_naming_it(client):
    assert_names(client.get("/v1/jobs/nope"), 404, "job_id")
    assert_names(client.delete("/v1/jobs/nope"), 404, "job_id")


# ---------------------------------------------------------------- jobs and queue


def test_job_progress_and_cancellation_at_the_next_step():
    gate = Gate()
    with TestClient(create_app(ServerConfig(), render=gate.render), base_url="http://127.0.0.1") as c:
        job = c.post("/v1/generate?wait=false", json={"prompt": "a house", "steps": 20, "width": 32, "height": 32})
        assert job.status_code == 202 and job.headers["location"] == f"/v1/jobs/{job.json()['id']}"
        job_id = job.json()["id"]
        assert gate.reached.wait(30)
        running = c.get(f"/v1/jobs/{job_id}").json()
        assert running["status"] == "running" and running["progress"]["step"] == 1
        assert running["progress"]["steps"] == 20 and 0 < running["progress"]["fraction"] < 0.1
        assert c.get("/sdapi/v1/progress").json()["state"]["job"] == job_id
        assert c.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        gate.release()
        state = c.app.state.avert
        assert state.queue.get(job_id).finished.wait(30)
        final = c.get(f"/v1/jobs/{job_id}").json()
        assert final["status"] == "cancelled" and final["progress"]["step"] == 1 and final["images"] == []
        assert c.post("/v1/generate", json={"prompt": "next", **FAST}).status_code == 200


def test_full_queue_answers_503_with_retry_after_and_cancelled_waiting_jobs_leave():
    gate = Gate()
    with TestClient(create_app(ServerConfig(queue_size=1), render=gate.render), base_url="http://127.0.0.1") as c:
        running = c.post("/v1/generate?wait=false", json={"prompt": "a", **FAST}).json()
        assert gate.reached.wait(30)
        waiting = c.post("/v1/generate?wait=false", json={"prompt": "b", **FAST}).json()
        full = c.post("/v1/generate?wait=false", json={"prompt": "c", **FAST})
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
        assert c.post("/sdapi/v1/txt2img", json={"prompt": "d", **FAST}).status_code == 503
        assert c.delete(f"/v1/jobs/{waiting['id']}").json()["status"] == "cancelled"
        again = c.post("/v1/generate?wait=false", json={"prompt": "e", **FAST})
        assert again.status_code == 202
        gate.release()
        queue = c.app.state.avert.queue
        for job_id in (running["id"], again.json()["id"]):
            assert queue.get(job_id).finished.wait(30)
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "done"


def test_a_failing_job_is_reported_on_that_job_and_the_server_keeps_serving():
    def render(request, components, **kw):
        if request.prompt == "oom":
            raise MemoryError("cannot allocate 64 GiB")
        if request.prompt == "cpu oom":  # what torch's CPU allocator raises: a RuntimeError, not OutOfMemoryError
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 68719476736 bytes")
        if request.prompt == "bug":
            raise RuntimeError("something broke")
        return generate(request, components, **kw)

    with TestClient(create_app(ServerConfig(), render=render), base_url="http://127.0.0.1") as c:
        oom = c.post("/sdapi/v1/txt2img", json={"prompt": "oom", **FAST})
        assert oom.status_code == 503 and "out of memory" in oom.json()["detail"]
        cpu = c.post("/v1/generate", json={"prompt": "cpu oom", **FAST})
        assert cpu.status_code == 503 and int(cpu.headers["retry-after"]) > 0 and cpu.json()["job"]["status"] == "failed"
        bug = c.post("/v1/generate", json={"prompt": "bug", **FAST})
        assert bug.status_code == 500 and "something broke" in bug.json()["detail"]
        assert bug.json()["job"]["status"] == "failed" and "Traceback" not in bug.text
        assert c.post("/sdapi/v1/txt2img", json={"prompt": "fine", **FAST}).status_code == 200
        assert c.get("/v1/status").json()["workers"] == {"embedded": True}


# ---------------------------------------------------------------- security


def test_binding_beyond_localhost_needs_a_key_or_insecure():
    ServerConfig().check_bind()
    with pytest.raises(AvertError, match="api-key"):
        ServerConfig(host="0.0.0.0").check_bind()
    ServerConfig(host="0.0.0.0", api_keys=("k" * 16,)).check_bind()
    ServerConfig(host="0.0.0.0", insecure=True).check_bind()
    with pytest.raises(AvertError, match="at least 16 characters"):
        ServerConfig(host="0.0.0.0", api_keys=("k",)).check_bind()
    ServerConfig(host="0.0.0.0", api_keys=("k",), insecure_key=True).check_bind()


def test_api_key_as_bearer_or_basic_auth_guards_everything():
    with TestClient(create_app(ServerConfig(api_keys=("s3cret-s3cret-s3cret",))), base_url="http://127.0.0.1") as c:
        for path in ("/", "/sdapi/v1/samplers", "/v1/models", "/docs"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/sdapi/v1/samplers", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/sdapi/v1/samplers", headers={"Authorization": "Bearer s3cret-s3cret-s3cret"}).status_code == 200
        assert c.get("/sdapi/v1/samplers", auth=("anyone", "s3cret-s3cret-s3cret")).status_code == 200
        assert c.get("/sdapi/v1/samplers", auth=("anyone", "nope")).status_code == 401


def test_body_size_is_bounded_and_cors_is_off_unless_configured(client):
    with TestClient(create_app(ServerConfig(max_body_bytes=1000)), base_url="http://127.0.0.1") as c:
        assert_names(c.post("/v1/generate", json={"prompt": "x" * 2000}), 413, "body")
    r = client.get("/sdapi/v1/samplers", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    with TestClient(create_app(ServerConfig(cors_origins=("http://app.example",))), base_url="http://127.0.0.1") as c:
        r = c.get("/sdapi/v1/samplers", headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_page_openapi_and_fixed_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt"' in page.text and 'id="compare-view"' in page.text
    assert "fetch(" in client.get("/static/app.js").text
    assert client.get("/static/..%2f..%2fapp.py").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/sdapi/v1/txt2img", "/v1/generate", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(paths)
    schema = client.get("/v1/schema").json()
    assert "negative_prompt" in schema["fields"] and schema["params"][3]["max"] == 150


def _nesting(value) -> int:
    if isinstance(value, list):
        return 1 + max((_nesting(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    return 0


JSON_VALUES = st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_the_body_depth_check_counts_brackets_outside_strings_only(value):
    from avert.server.bodies import _depth

    raw = json.dumps(value).encode()
    assert _depth(raw) == _nesting(value)


def test_strict_json_refuses_what_python_would_accept():
    from avert.server.bodies import parse_json

    for raw, field in ((b'{"cfg_scale": NaN}', "body"), (b'{"a": Infinity}', "body"), (b'{"prompt": "\\ud800"}', "prompt"),
                       (b"[" * 50 + b"]" * 50, "body"), (b'{"a": ' + b"[" * 33 + b"]" * 33 + b"}", "body")):
        with pytest.raises(ValidationError) as error:
            parse_json(raw)
        assert error.value.problems[0].field == field, raw
    assert parse_json(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "b": [[1]]}')["b"] == [[1]]


def test_work_counts_pixels_evaluations_branches_and_images(client):
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.store import get_model
    from avert.pipeline import work
    from avert.request import Negative

    components = get_model(EMBEDDED_MODEL)
    base = GenerationRequest("a house", width=512, height=512, steps=20)
    assert work.estimate(base, components, "cfg").megapixel_steps == pytest.approx(0.262144 * 20 * 2)
    heun = work.estimate(base.replace(sampler="Heun", batch_size=3), components, "cfg")
    assert (heun.evaluations, heun.branches, heun.images) == (39, 2, 3)  # Heun: two a step but the last
    assert work.branches(base.replace(negative_prompt="trees"), "cfg") == 2  # the negative replaces the empty prompt
    assert work.branches(base.replace(negative_prompt="trees"), "gated") == 3
    assert work.branches(base.replace(prompt="a AND b :0.5", negatives=(Negative("x"), Negative("y AND z"))),
                         "cfg") == 2 + 3 + 1
    with pytest.raises(ValidationError, match="must be at most 16 megapixel steps"):
        work.check([heun], 16.0)
    body = assert_names(client.post("/v1/generate", json={"prompt": "a", "width": 1024, "height": 1024}), 422, "work")
    assert "megapixel steps" in body["detail"] and "--max-work" in body["detail"]


def test_host_names_and_redaction():
    from avert.server.guards import host_name
    from avert.server.http import redact

    assert host_name("[::1]:7860") == "::1" and host_name("Example.ORG:80") == "example.org" and host_name("x") == "x"
    assert ServerConfig().host_names() == {"127.0.0.1", "localhost", "::1"}
    assert ServerConfig(host="0.0.0.0", api_keys=("k" * 16,)).host_names() is None
    assert "proxy.example" in ServerConfig(allowed_hosts=("proxy.example",)).host_names()
    assert redact("model: '/home/op/models/x.safetensors' is bad") == "model: '.../x.safetensors' is bad"
    assert redact("see http://example.com/a/b and 1/2/3") == "see http://example.com/a/b and 1/2/3"


@pytest.mark.parametrize("path", ["/sdapi/v1/sd-vae", "/sdapi/v1/hypernetworks", "/sdapi/v1/face-restorers", "/sdapi/v1/realesrgan-models",
                                  "/sdapi/v1/loras", "/sdapi/v1/script-info"])
def test_lists_avert_has_nothing_in_answer_empty(client, path):
    assert client.get(path).json() == []


def test_upscalers_list_the_hires_fixs_own_in_a1111s_shapes(client):
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()] == ["Lanczos", "Nearest"]
    assert set(client.get("/sdapi/v1/upscalers").json()[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()] == [
        "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
        "Latent (nearest-exact)"]  # A1111's shared.latent_upscale_modes


def test_refreshes_answer_null_and_cmd_flags_show_no_secret_or_folder(tmp_path):
    keys = ("k" * 20,)
    config = ServerConfig(api_keys=keys, embeddings_dir=tmp_path, models_dir=tmp_path)
    with TestClient(create_app(config), base_url="http://127.0.0.1",
                    headers={"Authorization": f"Bearer {keys[0]}"}) as c:
        for path in ("/sdapi/v1/refresh-vae", "/sdapi/v1/refresh-loras"):
            assert c.post(path, headers=JSON).json() is None
        assert c.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
        from safetensors.torch import save_file
        import torch

        save_file({"emb_params": torch.zeros(2, 384)}, str(tmp_path / "late.safetensors"))
        assert c.post("/sdapi/v1/refresh-embeddings", headers=JSON).json() is None
        assert c.get("/sdapi/v1/embeddings").json()["loaded"]["late"]["vectors"] == 2
        flags = c.get("/sdapi/v1/cmd-flags").json()
        assert flags["api"] is True and flags["port"] == 7860 and flags["api_auth"] is True
        assert keys[0] not in json.dumps(flags) and str(tmp_path) not in json.dumps(flags)


def test_options_round_trip_keeps_what_avert_does_not_act_on_and_acts_on_what_it_does(tiny_folder):
    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        options = c.get("/sdapi/v1/options").json()
        options.update({"send_seed": True, "outdir_samples": "", "img2img_color_correction": False})
        assert c.post("/sdapi/v1/options", json=options).status_code == 200
        again = c.get("/sdapi/v1/options").json()
        assert again["send_seed"] is True and again == options  # a read-change-write is a fixed point
        # the acting options set clip skip and guidance for requests that do not set them
        assert c.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "avert_guidance": "perp-neg"}
                      ).status_code == 200
        body = {"prompt": "a", "negative_prompt": "b", "steps": 2, "width": 16, "height": 16, "seed": 3}
        info = json.loads(c.post("/sdapi/v1/txt2img", json=body).json()["info"])
        assert info["clip_skip"] == 2 and "Guidance: perp-neg" in info["infotexts"][0]
        override = {**body, "override_settings": {"CLIP_stop_at_last_layers": 1, "avert_guidance": None}}
        info = json.loads(c.post("/sdapi/v1/txt2img", json=override).json()["info"])
        assert info["clip_skip"] == 1 and "Guidance: perp-neg" not in info["infotexts"][0]
        assert c.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": None}).status_code == 200
        assert c.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
        # what avert cannot honour is refused by name, and nothing of such a request is applied
        r = c.post("/sdapi/v1/options", json={"send_seed": False, "eta_ancestral": 1.5})
        assert_names(r, 422, "eta_ancestral")
        assert c.get("/sdapi/v1/options").json()["send_seed"] is True
        assert_names(c.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 13}), 422,
                     "CLIP_stop_at_last_layers")
        assert_names(c.post("/sdapi/v1/options", json={"avert_guidance": "nope"}), 422, "avert_guidance")
        assert_names(c.post("/sdapi/v1/options", json={"x" * 200: 1}), 422, "options")
        assert_names(c.post("/sdapi/v1/options", json={"big": "x" * 9000}), 422, "big")
        many = {f"k{i}": i for i in range(600)}
        assert_names(c.post("/sdapi/v1/options", json=many), 422, "options")


def test_eta_is_a1111s_request_field_then_option_and_ignored_where_the_sampler_takes_none(tiny_folder):
    """A1111's default payload sends eta 0 with Euler a: it runs (deterministically, so as Euler) and says
    `Eta: 0.0`; a null eta takes eta_ancestral (eta_ddim for DDIM), from options or override_settings; samplers
    without eta ignore it, as A1111 does."""
    base = {"prompt": "a red car", "negative_prompt": "blue", "seed": 4, "steps": 3, "width": 16, "height": 16}
    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        def run(**fields):
            answer = c.post("/sdapi/v1/txt2img", json={**base, **fields})
            assert answer.status_code == 200, answer.text
            return pixels(answer.json()["images"][0]).tobytes(), json.loads(answer.json()["info"])["infotexts"][0]

        zero, text = run(sampler_name="Euler a", eta=0)
        assert "Eta: 0.0" in text and zero == run(sampler_name="Euler")[0]
        full, text = run(sampler_name="Euler a", eta=None)
        assert "Eta" not in text and full != zero
        assert run(sampler_name="Euler a", override_settings={"eta_ancestral": 0})[0] == zero
        assert "Eta" not in run(sampler_name="DPM++ 2M", eta=0)[1]
        assert "Eta DDIM: 0.5" in run(sampler_name="DDIM", eta=0.5)[1]
        assert c.post("/sdapi/v1/options", json={"eta_ancestral": 0, "eta_ddim": 0.5}).status_code == 200
        assert c.get("/sdapi/v1/options").json()["eta_ancestral"] == 0
        assert_names(c.post("/sdapi/v1/options", json={"eta_ancestral": None}), 422, "eta_ancestral")
        assert_names(c.post("/sdapi/v1/options", json={"eta_ddim": "x"}), 422, "eta_ddim")
        assert run(sampler_name="Euler a")[0] == zero
        assert "Eta DDIM: 0.5" in run(sampler_name="DDIM")[1]
        assert run(sampler_name="Euler a", eta=1)[0] == full  # the request's eta wins over the option
        assert run(infotext="a red car\nNegative prompt: blue\nSteps: 3, Sampler: Euler a, Seed: 4, Size: 16x16, "
                            "Eta: 1.0", eta=None, override_settings=None)[0] == full


def test_the_page_has_an_icon_and_favicon_ico_answers(client):
    assert 'rel="icon" href="/static/favicon.svg"' in client.get("/").text
    for path in ("/favicon.ico", "/static/favicon.svg"):
        answer = client.get(path)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml")
        assert answer.text.startswith("<svg")


def test_several_init_images_make_a_batch_each_image_from_its_own(tiny_folder):
    from avert.init_image import InitImage
    from avert.models.loader import load_model

    pictures = [Image.fromarray((np.random.default_rng(k).random((16, 16, 3)) * 255).astype(np.uint8)) for k in (1, 2)]
    encoded = []
    for picture in pictures:
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    body = {"init_images": encoded, "prompt": "a car", "steps": 3, "width": 16, "height": 16, "seed": 5,
            "batch_size": 3, "n_iter": 2, "sampler_name": "Euler a", "override_settings": {"avert_guidance": "cfg"}}
    components = load_model(tiny_folder)
    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        answer = c.post("/sdapi/v1/img2img", json=body).json()
        assert json.loads(answer["info"])["all_seeds"] == [5, 6, 7, 8]  # a batch of 2 (the images), 2 rounds
        for k, made in enumerate(answer["images"]):
            alone = generate(GenerationRequest("a car", seed=5 + k, steps=3, width=16, height=16, guidance="cfg",
                                               init_image=InitImage.from_pil(pictures[k % 2])), components)
            assert np.array_equal(pixels(made), np.asarray(alone.images[0].image, dtype=np.int16)), k
        assert_names(c.post("/sdapi/v1/img2img", json={**body, "batch_size": 1}), 422, "init_images")
        # a negative per image (avert's extension) counts the images made: 2 init images x 2 rounds, not 3 x 2
        negatives = ["blue", "", "red", "blue"]
        answer = c.post("/sdapi/v1/img2img", json={**body, "negative_prompt": negatives}).json()
        for k, made in enumerate(answer["images"]):
            alone = generate(GenerationRequest("a car", negatives[k], seed=5 + k, steps=3, width=16, height=16,
                                               guidance="cfg", init_image=InitImage.from_pil(pictures[k % 2])),
                             components)
            assert np.array_equal(pixels(made), np.asarray(alone.images[0].image, dtype=np.int16)), k
        refused = c.post("/sdapi/v1/img2img", json={**body, "negative_prompt": negatives + ["a", "b"]})
        assert_names(refused, 422, "negative_prompt")
        assert "a list of 4 strings" in refused.text


def test_img2img_renders_what_the_engine_renders_from_a1111s_and_the_native_body(tiny_folder):
    from avert.init_image import InitImage
    from avert.models.loader import load_model

    picture = Image.fromarray((np.random.default_rng(1).random((24, 40, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    body = {"init_images": [image], "prompt": "a car", "negative_prompt": "blue", "steps": 4, "width": 32,
            "height": 16, "seed": 1, "resize_mode": 1, "denoising_strength": 0.6, "sampler_name": "Euler a"}
    expected = generate(GenerationRequest("a car", "blue", seed=1, steps=4, width=32, height=16, sampler="Euler a",
                                          init_image=InitImage.from_pil(picture), strength=0.6,
                                          resize_mode="crop and resize", guidance="cfg"), load_model(tiny_folder))
    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        answer = c.post("/sdapi/v1/img2img", json=body).json()
        assert np.array_equal(pixels(answer["images"][0]), np.asarray(expected.images[0].image, dtype=np.int16))
        assert answer["parameters"]["init_images"] is None  # include_init_images false, as A1111
        info = json.loads(answer["info"])
        assert "Denoising strength: 0.6" in info["infotexts"][0] and info["ignored_fields"] == []
        echoed = c.post("/sdapi/v1/img2img", json={**body, "include_init_images": True}).json()
        assert echoed["parameters"]["init_images"] == [image]
        native = c.post("/v1/generate", json={"prompt": "a car", "negative_prompt": "blue", "steps": 4, "width": 32,
                                              "height": 16, "seed": 1, "sampler": "Euler a", "guidance": "cfg",
                                              "init_image": "data:image/png;base64," + image, "strength": 0.6,
                                              "resize_mode": "crop and resize"}).json()
        assert np.array_equal(pixels(native["images"][0]["png"]), pixels(answer["images"][0]))
        assert native["images"][0]["record"]["request"]["init_image"]["width"] == 40
        inpainted = c.post("/sdapi/v1/img2img", json={**body, "mask": image})
        assert inpainted.status_code == 200 and inpainted.json()["parameters"]["mask"] is None  # not echoed
        assert "Inpaint area: Only masked" in json.loads(inpainted.json()["info"])["infotexts"][0]  # A1111's default
        blurs = c.post("/sdapi/v1/img2img", json={**body, "mask": image, "mask_blur_x": 1, "mask_blur_y": 3}).json()
        assert "Mask blur: 1, Mask blur y: 3" in json.loads(blurs["info"])["infotexts"][0]
        assert_names(c.post("/sdapi/v1/img2img", json={**body, "mask": image, "mask_blur_y": 65}), 422, "mask_blur_y")
        assert_names(c.post("/sdapi/v1/img2img", json={**body, "mask": image, "mask_blur": 65, "mask_blur_y": 65}),
                     422, "mask_blur")  # mask_blur sets both: only it is named
        assert_names(c.post("/sdapi/v1/img2img", json={**body, "init_images": [image, image]}), 422, "init_images")
        assert_names(c.post("/sdapi/v1/img2img", json={**body, "denoising_strength": 2}), 422, "denoising_strength")


def test_the_noise_multiplier_comes_from_the_request_else_override_settings_else_the_option(tiny_folder):
    picture = Image.fromarray((np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "prompt": "a car", "steps": 2, "width": 16,
            "height": 16, "seed": 1}
    small = {"prompt": "a car", "steps": 2, "width": 16, "height": 16}

    def multiplier(answer):
        assert answer.status_code == 200, answer.text
        text = json.loads(answer.json()["info"])["infotexts"][0]
        return float(text.split("Noise multiplier: ")[1].split(",")[0]) if "Noise multiplier" in text else 1.0

    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        assert multiplier(c.post("/sdapi/v1/img2img", json=body)) == 1.0
        assert multiplier(c.post("/sdapi/v1/img2img", json={**body, "initial_noise_multiplier": 0.5})) == 0.5
        assert c.post("/sdapi/v1/options", json={"initial_noise_multiplier": 0.8}).status_code == 200
        assert c.get("/sdapi/v1/options").json()["initial_noise_multiplier"] == 0.8
        assert multiplier(c.post("/sdapi/v1/img2img", json=body)) == 0.8
        assert multiplier(c.post("/sdapi/v1/img2img", json={**body, "initial_noise_multiplier": None})) == 0.8
        overridden = {**body, "override_settings": {"initial_noise_multiplier": 0.6}}
        assert multiplier(c.post("/sdapi/v1/img2img", json=overridden)) == 0.6
        assert multiplier(c.post("/sdapi/v1/img2img", json={**overridden, "initial_noise_multiplier": 0.7})) == 0.7
        assert multiplier(c.post("/sdapi/v1/txt2img", json=small)) == 1.0  # an img2img option: txt2img unchanged
        assert_names(c.post("/sdapi/v1/img2img", json={**body, "initial_noise_multiplier": 2}), 422,
                     "initial_noise_multiplier")
        assert_names(c.post("/sdapi/v1/options", json={"initial_noise_multiplier": -1}), 422, "initial_noise_multiplier")


def test_an_infotext_fills_what_the_request_leaves_out_and_remakes_the_image(tiny_folder):
    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        first = c.post("/sdapi/v1/txt2img", json={"prompt": "a (red:1.2) car", "negative_prompt": "blue", "seed": 5,
                                                   "steps": 3, "width": 16, "height": 16, "cfg_scale": 5,
                                                   "sampler_name": "DPM++ 2M", "scheduler": "karras",
                                                   "override_settings": {"CLIP_stop_at_last_layers": 2}}).json()
        infotext = json.loads(first["info"])["infotexts"][0]
        again = c.post("/sdapi/v1/txt2img", json={"infotext": infotext}).json()
        assert again["images"] == first["images"]
        assert again["parameters"]["prompt"] == "a (red:1.2) car" and again["parameters"]["steps"] == 3
        assert json.loads(again["info"])["clip_skip"] == 2
        # explicit fields win; override_settings wins over the infotext's options
        mine = c.post("/sdapi/v1/txt2img", json={"infotext": infotext, "steps": 2, "seed": -1,
                                                 "override_settings": {"CLIP_stop_at_last_layers": 1}}).json()
        info = json.loads(mine["info"])
        assert (info["steps"], info["clip_skip"], info["prompt"]) == (2, 1, "a (red:1.2) car")
        assert info["seed"] != 5  # -1: a fresh seed (one in 2^32 would be 5)
        assert_names(c.post("/sdapi/v1/txt2img", json={"infotext": "a\nSteps: many, Seed: 1, Size: 16x16"}), 422,
                     "steps")
        assert_names(c.post("/sdapi/v1/txt2img", json={"infotext": 5}), 422, "infotext")
        assert_names(c.post("/sdapi/v1/txt2img", json={"infotext": "a\nSteps: 2, Seed: 1, Eta: 3"}), 422,
                     "override_settings.eta_ancestral")
