"""Loading offline: diffusers folders, SD-layout single files, refused pickles, model hashes."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_single_file

from avert.errors import ModelLoadError
from avert.models.loader import load_model
from avert.pipeline.generate import generate
from avert.request import GenerationRequest

REQUEST = GenerationRequest("a red house", "blue tree", seed=7, steps=4, width=64, height=64)


@pytest.fixture(scope="module")
def single_file(tiny_folder, tmp_path_factory):
    return write_tiny_single_file(tiny_folder, tmp_path_factory.mktemp("single") / "tiny-v1.safetensors")


def image(components) -> np.ndarray:
    return np.asarray(generate(REQUEST, components).images[0].image, dtype=np.int16)


def test_single_file_renders_the_same_image_as_the_folder(tiny, tiny_folder, single_file):
    loaded = load_model(single_file, config_dir=tiny_folder)
    assert loaded.source.kind == "single-file" and loaded.source.name == "tiny-v1"
    assert np.abs(image(loaded) - image(tiny)).max() <= 1


def test_model_hash_is_a1111_sha256_prefix(single_file, tiny_folder):
    loaded = load_model(single_file, config_dir=tiny_folder)
    assert loaded.source.hash == hashlib.sha256(single_file.read_bytes()).hexdigest()[:10]


def test_folder_hash_is_stable_and_changes_with_weights(tiny, tiny_folder, tmp_path):
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    assert load_model(copy).source.hash == tiny.source.hash
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    state[next(iter(state))] += 1
    save_file(state, weights)
    assert load_model(copy).source.hash != tiny.source.hash


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickles_are_refused_unless_allowed(single_file, tiny_folder, tmp_path, suffix):
    from safetensors.torch import load_file

    pickle = tmp_path / f"model{suffix}"
    torch.save({"state_dict": load_file(single_file)}, pickle)
    with pytest.raises(ModelLoadError, match="pickle.*--allow-pickle"):
        load_model(pickle, config_dir=tiny_folder)
    loaded = load_model(pickle, config_dir=tiny_folder, allow_pickle=True)
    assert loaded.source.name == "model" and loaded.source.path == pickle


def test_allowed_pickle_is_still_read_weights_only(tmp_path, tiny_folder):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, evil)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_model(evil, config_dir=tiny_folder, allow_pickle=True)


@pytest.mark.parametrize("name, message", [
    ("missing", "does not exist"),
    ("weights.onnx", "unknown type"),
    ("empty-folder", "no model_index.json"),
])
def test_bad_paths_are_clear_errors(tmp_path, name, message):
    path = tmp_path / name
    if name == "weights.onnx":
        path.write_bytes(b"x")
    if name == "empty-folder":
        path.mkdir()
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_a_folder_with_only_the_second_text_encoder_is_refused_as_an_sdxl_refiner(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"],
                                                            "text_encoder_2": ["transformers", "X"]}))
    with pytest.raises(ModelLoadError, match="is an SDXL refiner"):
        load_model(tmp_path)


def test_unknown_text_encoder_class_is_refused(tiny_folder, tmp_path):
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    index = json.loads((copy / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "SomethingElse"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="text_encoder class 'SomethingElse'"):
        load_model(copy)


def test_folder_with_only_pickled_weights_needs_allow_pickle(tiny_folder, tmp_path):
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    unet_dir = copy / "unet"
    from safetensors.torch import load_file

    torch.save(load_file(unet_dir / "diffusion_pytorch_model.safetensors"), unet_dir / "diffusion_pytorch_model.bin")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(copy)


def test_prediction_type_override(tiny_folder):
    assert load_model(tiny_folder, prediction_type="v_prediction").scheduler_config["prediction_type"] == "v_prediction"


OFFLINE_SCRIPT = r"""
import socket, sys, threading, time
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
attempts = []
connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

def allowed(sock, address):
    return sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[0] in LOOPBACK)

def guard(method):
    def guarded(self, address):
        if not allowed(self, address):
            attempts.append(repr(address))
            raise OSError("network blocked by the test")
        return method(self, address)
    return guarded

def lookup(host, *args, **kwargs):
    if host not in LOOPBACK and host is not None:
        attempts.append(f"dns {host}")
        raise socket.gaierror("name lookup blocked by the test")
    return getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = guard(connect), guard(connect_ex), lookup

from avert.api import generate, load
from avert.request import GenerationRequest
load(sys.argv[1])                                        # a diffusers folder
result = generate(GenerationRequest("a house", "trees", steps=2, seed=1))  # the embedded model
assert result.images

import requests, uvicorn
from avert.server.app import create_app
server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
for _ in range(300):
    try:
        answer = requests.post(f"http://127.0.0.1:{sys.argv[2]}/v1/generate", json={"prompt": "a house", "steps": 2},
                               timeout=60)
        break
    except requests.ConnectionError:
        time.sleep(0.1)
server.should_exit = True
assert answer.status_code == 200, answer.text
print("attempts:", attempts)
sys.exit(1 if attempts else 0)
"""


def test_loading_generating_and_serving_open_no_connection_beyond_this_machine(tiny_folder):
    """In a fresh process whose sockets refuse every address but loopback (and whose name lookups refuse every
    name), with HF_HUB_OFFLINE unset: load a folder, generate on the embedded model, serve a request. Any attempt
    to reach a hub, through any library, is recorded and fails the test."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(tiny_folder), str(port)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0 and "attempts: []" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]


def test_a_folder_without_avert_json_keeps_plain_cfg(tiny):
    assert tiny.default_guidance == "cfg"
    assert generate(REQUEST, tiny).request.guidance == "cfg"


def test_avert_json_sets_the_guidance_a_request_without_one_gets(tiny, tiny_folder, tmp_path):
    """A folder's avert.json names its default guidance: a request without `guidance` renders, image for image,
    what naming that method renders; naming cfg still gives plain CFG; the weights' hash does not change."""
    from avert.models.defaults import defaults_file_text

    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    (copy / "avert.json").write_text(defaults_file_text("perp-neg"))
    model = load_model(copy)
    assert model.default_guidance == "perp-neg" and model.source.hash == tiny.source.hash
    result = generate(REQUEST, model)
    assert result.request.guidance == "perp-neg" and "Guidance: perp-neg" in result.images[0].infotext
    assert np.array_equal(image(model), np.asarray(generate(REQUEST.replace(guidance="perp-neg"), tiny)
                                                   .images[0].image, dtype=np.int16))
    assert not np.array_equal(image(model), image(tiny))  # perp-neg differs from plain CFG on this request
    assert np.array_equal(np.asarray(generate(REQUEST.replace(guidance="cfg"), model).images[0].image,
                                     dtype=np.int16), image(tiny))


@pytest.mark.parametrize("text, message", [
    ('{"defaults": {"guidance": "magic"}}', "defaults.guidance 'magic' is not allowed; must be one of: cfg, apg"),
    ('{"defaults": {"cfg_scale": 5}}', "defaults.cfg_scale is not allowed; a model may set only defaults.guidance"),
    ('{"guidance": "gated"}', 'must be an object with one key, "defaults"'),
    ('["gated"]', 'must be an object with one key, "defaults"'),
    ("{not json", "is not readable JSON"),
])
def test_a_bad_avert_json_is_a_clear_error(tiny_folder, tmp_path, text, message):
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    (copy / "avert.json").write_text(text)
    with pytest.raises(ModelLoadError, match="avert.json") as info:
        load_model(copy)
    assert message in str(info.value)


def test_the_embedded_model_is_named_in_results_as_the_server_lists_it(tmp_path):
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import model_name
    from avert.models.loader import EMBEDDED_NAME

    assert model_name(EMBEDDED_MODEL) == EMBEDDED_NAME == "embedded"  # the infotext's "Model: embedded"
    (tmp_path / "model").mkdir()
    (tmp_path / "v1-5.safetensors").write_bytes(b"")
    assert (model_name(tmp_path / "model"), model_name(tmp_path / "v1-5.safetensors")) == ("model", "v1-5")
