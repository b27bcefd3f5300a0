"""The embedded default model: shipped in the repo, loaded by the same loader, equal to diffusers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from avert.errors import ModelLoadError
from avert.models.default import EMBEDDED_MODEL, resolve_model_path
from avert.models.loader import load_model
from avert.pipeline.generate import generate
from avert.request import GenerationRequest

REQUEST = GenerationRequest("a red house on green grass", "green tones", seed=3, steps=8)


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_MODEL)


def test_default_model_is_the_embedded_one(monkeypatch):
    monkeypatch.delenv("AVERT_MODEL", raising=False)
    assert resolve_model_path(None) == EMBEDDED_MODEL


def test_shipped_weights_are_small_and_safetensors():
    files = [p for p in EMBEDDED_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 1000 * 1000
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert [p.name for p in weights] == ["diffusion_pytorch_model.safetensors"]


def test_embedded_model_loads_with_the_pretrained_text_encoder(embedded):
    assert type(embedded.text_encoder).__name__ == "BertModel"
    assert embedded.text_encoder.config.hidden_size == 384
    assert embedded.vae is None and embedded.unet.dtype == torch.float32
    assert embedded.scheduler_config["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras", "DDIM"])
def test_embedded_model_equals_diffusers_pipeline_on_the_same_components(embedded, sampler):
    """diffusers' StableDiffusionPipeline over the same (pixel-space, so VAE-less) components.

    Without a VAE diffusers assumes a latent scale factor of 8 and returns the raw sample with
    output_type="latent", so it is asked for 8x the size and its sample is mapped to pixels as avert does.
    """
    from diffusers import StableDiffusionPipeline

    from sampler_reference import reference_scheduler

    request = REQUEST.replace(sampler=sampler, guidance="cfg")  # diffusers' pipeline is plain CFG
    pipe = StableDiffusionPipeline(unet=embedded.unet, vae=None, text_encoder=embedded.text_encoder,
                                   tokenizer=embedded.tokenizer,
                                   scheduler=reference_scheduler(sampler, embedded.scheduler_config, request.seed),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    native = embedded.unet.config.sample_size
    sample = pipe(request.prompt, negative_prompt=request.negative_prompt, num_inference_steps=request.steps,
                  guidance_scale=request.cfg_scale, height=native * 8, width=native * 8, output_type="latent",
                  generator=torch.Generator("cpu").manual_seed(request.seed)).images
    theirs = ((sample[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    ours = np.asarray(generate(request, embedded).images[0].image)
    assert ours.shape == (native, native, 3)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_native_size_is_allowed_below_the_default_minimum(embedded):
    result = generate(REQUEST.replace(width=32, height=32, steps=2), embedded)
    assert result.images[0].image.size == (32, 32)


def test_a_wrong_text_encoder_hash_is_refused(tmp_path):
    copy = shutil.copytree(EMBEDDED_MODEL, tmp_path / "model")
    reference = copy / "text_encoder" / "external.json"
    data = json.loads(reference.read_text())
    reference.write_text(json.dumps({**data, "sha256": "0" * 64}))
    with pytest.raises(ModelLoadError, match="expected SHA-256"):
        load_model(copy)


def test_gated_leaves_a_standing_negative_alone_and_is_plain_cfg_where_the_concept_is_there(embedded):
    """Relations over golden images of the shipped model (seeds 0..3, Euler a, 20 steps; docs/embedded-model.md).
    A tone the prompt never makes ("sepia" on "a landscape", the README's "green tones" on "a house on a hill")
    wrecks the image under plain CFG; gated keeps it near the image without the negative (less than half of
    CFG's mean distance). Where the prompt makes the concept (the green and sun pairs), the gate stays open and
    gated renders CFG's image."""
    def px(result):
        return np.stack([np.asarray(i.image, dtype=np.float32) for i in result.images])

    def renders(prompt, negative):
        base = GenerationRequest(prompt, seed=0, batch_size=4, guidance="cfg")
        return [px(generate(r, embedded)) for r in (base, base.replace(negative_prompt=negative),
                                                   base.replace(negative_prompt=negative, guidance="gated"))]

    cfg_moved, gated_moved = [], []
    for prompt, negative in [("a landscape", "sepia"), ("a house on a hill", "green tones")]:
        alone, cfg, gated = renders(prompt, negative)
        cfg_moved.append(np.abs(cfg - alone).mean())
        gated_moved.append(np.abs(gated - alone).mean())
    assert min(cfg_moved) > 60  # plain CFG: colour fields
    assert sum(gated_moved) < 0.5 * sum(cfg_moved)
    for prompt, negative in [("a landscape in shades of green", "green tones"), ("a bright day", "sun")]:
        alone, cfg, gated = renders(prompt, negative)
        assert np.abs(cfg - alone).mean() > 10  # the negative works here
        assert np.abs(gated - cfg).max() <= 2


def test_the_embedded_model_recommends_gated_and_a_request_without_guidance_gets_it(embedded):
    """The shipped folder's avert.json names gated: the README's command without --guidance renders, image for
    image, what --guidance gated renders, and records it; --guidance cfg still gives plain CFG. Without a
    negative, gated is plain CFG, so a prompt alone is unchanged by the model's default."""
    assert embedded.default_guidance == "gated"
    base = GenerationRequest("a house on a hill", "green tones", seed=0, batch_size=2, steps=8)

    def px(request):
        result = generate(request, embedded)
        return result, np.stack([np.asarray(i.image, dtype=np.int16) for i in result.images])

    default, default_px = px(base)
    _, gated_px = px(base.replace(guidance="gated"))
    _, cfg_px = px(base.replace(guidance="cfg"))
    assert default.request.guidance == "gated" and "Guidance: gated" in default.images[0].infotext
    assert default.images[0].record["request"]["guidance"] == "gated"
    assert np.array_equal(default_px, gated_px)
    assert np.abs(default_px - cfg_px).mean() > 20  # plain CFG's colour fields
    default_alone, alone_default = px(base.replace(negative_prompt=""))
    cfg_alone, alone_cfg = px(base.replace(negative_prompt="", guidance="cfg"))
    assert np.array_equal(alone_default, alone_cfg)
    assert default_alone.branch_evaluations == cfg_alone.branch_evaluations == 8 * 2  # 8 steps x 2 branches
