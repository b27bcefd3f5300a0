"""LoRA files through diffusers and peft: an image with a LoRA equals diffusers' pipeline with `load_lora_weights` on
the same components; the kohya / A1111 layout reads as diffusers' own; `<lora:NAME:WEIGHT>` in the prompt is
applied, kept in the infotext and unloaded after the run; bad tags are refused by name."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from avert.errors import ValidationError
from avert.models.lora import LoraLibrary, applied, lora_uses, without_tags
from avert.pipeline.generate import generate
from avert.request import GenerationRequest

BASE = GenerationRequest("a red house", "blue tree", seed=7, steps=4, cfg_scale=7.0, width=64, height=64,
                         sampler="Euler")
TARGETS = {"unet": ["to_q", "to_k", "to_v", "to_out.0"], "text": ["q_proj", "k_proj", "v_proj", "out_proj"]}


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _random_lora(module, seed: int, targets: list[str]) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA of random weights (both factors non-zero) on a module's attention projections, as peft names it."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(seed)
    inject_adapter_in_model(config, module, adapter_name="made")
    state = {k: v.detach().clone() * 3 for k, v in get_peft_model_state_dict(module, adapter_name="made").items()}
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():  # take the layers out again: the fixture's components stay plain
        if isinstance(layer, BaseTunerLayer):
            layer.delete_adapter("made")
    if hasattr(module, "peft_config"):
        del module.peft_config
    return state


@pytest.fixture(scope="module")
def lora_file(tiny, tmp_path_factory):
    """A LoRA for the tiny UNet and text encoder, written by diffusers' own `save_lora_weights` (diffusers' layout)."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("lora")
    unet = _random_lora(tiny.unet, 1, TARGETS["unet"])
    text = _random_lora(tiny.text_encoder, 2, TARGETS["text"])
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet, text_encoder_lora_layers=text,
                                              weight_name="tiny-style.safetensors")
    return folder / "tiny-style.safetensors"


def test_a_lora_equals_diffusers_load_lora_weights(tiny, diffusers_pipe, lora_file):
    library = LoraLibrary({"tiny-style": lora_file})
    request = BASE.replace(prompt="a red house <lora:tiny-style:0.8>")
    ours = generate(request, tiny, loras=library).images[0]
    diffusers_pipe.scheduler = __import__("diffusers").EulerDiscreteScheduler.from_config(tiny.scheduler_config)
    diffusers_pipe.load_lora_weights(str(lora_file), adapter_name="style")
    diffusers_pipe.set_adapters(["style"], [0.8])
    try:
        theirs = diffusers_pipe("a red house", negative_prompt="blue tree", num_inference_steps=4, guidance_scale=7.0,
                                width=64, height=64, generator=torch.Generator().manual_seed(7)).images[0]
    finally:
        diffusers_pipe.unload_lora_weights()
    assert np.abs(pixels(ours.image) - pixels(theirs)).max() <= 1
    plain = generate(BASE, tiny).images[0]
    assert np.abs(pixels(ours.image) - pixels(plain.image)).max() > 8  # the LoRA changed the image
    assert "a red house <lora:tiny-style:0.8>" in ours.infotext and "Lora hashes: \"tiny-style: " in ours.infotext


def test_a_lora_is_gone_after_its_run_and_after_a_failed_one(tiny, lora_file):
    library = LoraLibrary({"tiny-style": lora_file})
    before = pixels(generate(BASE, tiny).images[0].image)
    generate(BASE.replace(prompt="a red house <lora:tiny-style>"), tiny, loras=library)
    assert np.array_equal(pixels(generate(BASE, tiny).images[0].image), before)  # nothing leaks into the next run
    with pytest.raises(RuntimeError), applied(tiny, lora_uses("<lora:tiny-style:1>"), library):
        assert any("lora" in name for name, _ in tiny.unet.named_modules())
        raise RuntimeError("a run that fails")
    assert not any("lora" in name for name, _ in tiny.unet.named_modules())
    assert not hasattr(tiny.text_encoder, "_avert_loras")


def test_the_kohya_layout_reads_as_diffusers_own(tiny, lora_file, tmp_path):
    """The same weights under kohya's / A1111's names (lora_unet_..., lora_te_..., lora_down / lora_up, alpha) make
    the same image."""
    from safetensors.torch import load_file

    kohya = {}
    for key, value in load_file(lora_file).items():
        prefix, _, rest = key.partition(".")
        module, _, kind = rest.rpartition(".lora_")
        name = ("lora_unet_" if prefix == "unet" else "lora_te_") + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(kohya, tmp_path / "kohya.safetensors")
    made = [generate(BASE.replace(prompt=f"a red house <lora:{n}:0.8>"), tiny,
                     loras=LoraLibrary({n: p})).images[0].image
            for n, p in (("tiny-style", lora_file), ("kohya", tmp_path / "kohya.safetensors"))]
    assert np.abs(pixels(made[0]) - pixels(made[1])).max() <= 1


@pytest.mark.parametrize("prompt, negative, says", [
    ("a <lora:missing:1>", "", "must name a LoRA file; known: tiny-style"),
    ("a <lora:tiny-style:9>", "", "weight from -4 to 4"),
    ("a", "<lora:tiny-style:1>", "write it in the prompt"),
    ("a " + " ".join(["<lora:tiny-style:1>"] * 9), "", "at most 8"),
])
def test_a_bad_lora_tag_is_refused_by_name(tiny, lora_file, prompt, negative, says):
    with pytest.raises(ValidationError) as error:
        generate(BASE.replace(prompt=prompt, negative_prompt=negative), tiny,
                 loras=LoraLibrary({"tiny-style": lora_file}))
    assert says in str(error.value)


def test_tags_are_read_and_taken_out_of_the_text():
    assert [(u.name, u.weight) for u in lora_uses("a <lora:x> b <lora:y z:-0.5>")] == [("x", 1.0), ("y z", -0.5)]
    assert without_tags("a <lora:x:0.5>, b") == "a , b"
    assert without_tags("(a:1.2) [b:c:0.5]") == "(a:1.2) [b:c:0.5]"


def test_the_cli_applies_a_lora_file_and_records_it(tiny_folder, lora_file, tmp_path):
    out = tmp_path / "made.png"
    done = subprocess.run([sys.executable, "-m", "avert.cli", "generate", "a red house", "--model", str(tiny_folder),
                           "--steps", "2", "--seed", "3", "--lora", f"{lora_file}:0.5", "-q", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from avert.output.pnginfo import read_png_metadata

    meta = read_png_metadata(out)
    assert meta.parameters.startswith("a red house <lora:tiny-style:0.5>") and "Lora hashes" in meta.parameters
    again = subprocess.run([sys.executable, "-m", "avert.cli", "generate", "--from", str(out), "--model",
                            str(tiny_folder), "--lora-dir", str(lora_file.parent), "-q", "-o", str(tmp_path / "b.png")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    from PIL import Image

    assert np.array_equal(pixels(Image.open(out)), pixels(Image.open(tmp_path / "b.png")))
    missing = subprocess.run([sys.executable, "-m", "avert.cli", "generate", "--from", str(out), "--model",
                              str(tiny_folder), "-q", "-o", str(tmp_path / "c.png")], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "<lora:tiny-style>" in missing.stderr


def test_the_server_applies_a_named_lora_for_one_request_only(tiny_folder, lora_file):
    """`--lora-dir`: a request's tag names a file by stem (never a path); the next request without it gets the
    plain model; /sdapi/v1/loras lists the names without the server's paths."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from avert.server.app import create_app
    from avert.server.config import ServerConfig

    config = ServerConfig(model=str(tiny_folder), lora_dir=lora_file.parent)
    body = {"prompt": "a red house", "seed": 5, "steps": 2, "width": 64, "height": 64}
    with TestClient(create_app(config), base_url="http://127.0.0.1") as c:
        assert c.get("/sdapi/v1/loras").json() == [{"name": "tiny-style", "alias": "tiny-style",
                                                    "path": "tiny-style.safetensors", "metadata": {}}]
        shown = [c.post("/v1/generate", json={**body, "prompt": prompt}).json()["images"][0]
                 for prompt in ("a red house", "a red house <lora:tiny-style:1>", "a red house")]
        images = [pixels(Image.open(io.BytesIO(base64.b64decode(s["png"])))) for s in shown]
        assert np.array_equal(images[0], images[2]) and np.abs(images[0] - images[1]).max() > 8
        assert "Lora hashes" in shown[1]["infotext"] and "Lora hashes" not in shown[2]["infotext"]
        bad = c.post("/v1/generate", json={**body, "prompt": "a <lora:../../etc/passwd:1>"})
        assert bad.status_code == 422 and "must name a LoRA file; known: tiny-style" in bad.json()["detail"]
        a1111 = c.post("/sdapi/v1/txt2img", json={**body, "prompt": "a red house <lora:tiny-style:1>"})
        assert a1111.status_code == 200 and "Lora hashes" in a1111.json()["info"]
