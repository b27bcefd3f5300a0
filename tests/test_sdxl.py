"""SDXL: against diffusers' StableDiffusionXLPipeline on tiny random components (two text encoders, pooled
projection, size values), the empty negative's two readings, the second prompts, negative micro-conditioning,
loading and refusals, the prompt language on both encoders, and the rest of avert on an SDXL model."""

from __future__ import annotations

import dataclasses
import json
import shutil

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from avert.errors import ModelLoadError, ValidationError
from avert.pipeline.conditioning import condition
from avert.pipeline.generate import generate
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest, Negative
from sampler_reference import reference_scheduler
from test_engine import pixels

STEPS = 5
BASE = GenerationRequest("a red car", seed=3, steps=STEPS, width=32, height=32, cfg_scale=7.0, guidance="cfg")
# (avert's request fields, diffusers' call arguments) for the same image
CASES = {
    "negative": ({"negative_prompt": "blue tree"}, {"negative_prompt": "blue tree"}),
    "empty negative, zeros": ({}, {}),  # diffusers zeros only a negative_prompt of None
    "empty negative, encoded": ({"empty_negative": "encoded"}, {"negative_prompt": ""}),
    "negative_prompt_2": ({"negative_prompt": "blue tree", "negative_prompt_2": "red house"},
                          {"negative_prompt": "blue tree", "negative_prompt_2": "red house"}),
    "negative micro-conditioning": (
        {"negative_prompt": "blue", "negative_original_size": "512x256", "negative_crop_top_left": "3,5",
         "negative_target_size": "16x48"},
        {"negative_prompt": "blue", "negative_original_size": (256, 512), "negative_crops_coords_top_left": (3, 5),
         "negative_target_size": (48, 16)}),
}


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl_folder):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_sdxl(pipe, components, request: GenerationRequest, **arguments) -> np.ndarray:
    pipe.scheduler = reference_scheduler(request.sampler, components.scheduler_config, request.seed)
    image = pipe(request.prompt, num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
                 height=request.height, width=request.width, generator=torch.Generator().manual_seed(request.seed),
                 **arguments).images[0]
    return pixels(image)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M Karras", "DDIM"])
def test_image_equals_diffusers_sdxl_within_one_level(tiny_sdxl, sdxl_pipe, sampler, case):
    ours_fields, theirs = CASES[case]
    request = BASE.replace(sampler=sampler, **ours_fields)
    ours = pixels(generate(request, tiny_sdxl).images[0].image)
    assert np.abs(ours - diffusers_sdxl(sdxl_pipe, tiny_sdxl, request, **theirs)).max() <= 1


def _image(components, **fields) -> np.ndarray:
    return pixels(generate(BASE.replace(sampler="Euler", **fields), components).images[0].image)


def test_each_sdxl_control_changes_the_image_and_the_defaults_change_nothing(tiny_sdxl):
    plain = _image(tiny_sdxl, negative_prompt="blue")
    assert np.array_equal(plain, _image(tiny_sdxl, negative_prompt="blue", negative_prompt_2="blue",
                                        prompt_2="a red car", original_size="32x32", target_size="32x32",
                                        crop_top_left="0,0", negative_original_size="32x32"))
    for fields in ({"negative_prompt_2": "tree"}, {"prompt_2": "a dog"}, {"negative_original_size": "256x256"},
                   {"negative_crop_top_left": "8,8"}, {"original_size": "256x256"}, {"target_size": "64x64"}):
        assert np.abs(plain - _image(tiny_sdxl, negative_prompt="blue", **fields)).max() > 2, fields
    zeros, encoded = _image(tiny_sdxl), _image(tiny_sdxl, empty_negative="encoded")
    assert np.abs(zeros - encoded).max() > 2
    assert np.array_equal(zeros, _image(tiny_sdxl, empty_negative="zeros"))
    config_encoded = dataclasses.replace(tiny_sdxl, force_zeros_for_empty_prompt=False)
    assert np.array_equal(encoded, _image(config_encoded))  # the model config's default, overridable
    assert np.array_equal(zeros, _image(config_encoded, empty_negative="zeros"))


def test_the_record_and_the_infotext_say_which_empty_negative_and_read_back(tiny_sdxl):
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    made = generate(BASE.replace(steps=2, prompt_2="a (dog:1.2), x", negative_prompt="blue",
                                 negative_prompt_2="tree", negative_crop_top_left="3,5"), tiny_sdxl).images[0]
    assert made.record["request"]["empty_negative"] == "zeros"
    assert "Empty negative: zeros" in made.infotext and 'Negative crop top left: "3,5"' in made.infotext
    back = request_from_a1111(parse_parameters(made.infotext))
    assert (back.prompt_2, back.negative_prompt_2, back.empty_negative, back.negative_crop_top_left) == (
        "a (dog:1.2), x", "tree", "zeros", "3,5")
    again = generate(back.replace(width=32, height=32), tiny_sdxl).images[0]
    assert np.array_equal(pixels(again.image), pixels(made.image))


def test_conditioning_is_both_encoders_side_by_side_with_the_second_ones_pooled_projection(tiny_sdxl):
    text = condition(BASE.replace(negative_prompt="blue"), tiny_sdxl, Runtime())
    prompt = text.branches[_branch("prompt")]
    states, pooled = prompt.at(0), prompt.pooled_at(0)
    assert states.shape == (77, 72) and pooled.shape == (32,)
    ids = tiny_sdxl.tokenizer("a red car", padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids_2 = tiny_sdxl.tokenizer_2("a red car", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids_2[0, -1] == tiny_sdxl.tokenizer_2.convert_tokens_to_ids("!")  # bigG pads with "!"
    with torch.no_grad():
        first = tiny_sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-2][0]
        out = tiny_sdxl.text_encoder_2(ids_2, output_hidden_states=True)
    assert torch.allclose(states[:, :32], first, atol=1e-6)  # penultimate layer, no final norm
    assert torch.allclose(states[:, 32:], out.hidden_states[-2][0], atol=1e-6)  # 40 wide
    assert torch.allclose(pooled, out.text_embeds[0], atol=1e-6)
    empty = text.branches[_branch("empty")]
    assert not empty.at(0).any() and not empty.pooled_at(0).any()  # zeros: the model's config
    sizes = text.sizes.rows((False, True), 1)
    assert sizes.tolist() == [[32, 32, 0, 0, 32, 32]] * 2


def _branch(role: str):
    from avert.guidance.strategy import EMPTY, prompt_branch

    return prompt_branch(0) if role == "prompt" else EMPTY


def test_the_prompt_language_acts_on_both_encoders(tiny_sdxl):
    def prompt(text: str):
        branches = condition(BASE.replace(prompt=text), tiny_sdxl, Runtime()).branches
        return branches[_branch("prompt")]

    plain, weighted = prompt("a red car").at(0), prompt("a (red:1.5) car").at(0)
    for half in (slice(0, 32), slice(32, 72)):  # the weight reaches both encoders' states
        assert (plain[:, half] - weighted[:, half]).abs().max() > 1e-3
        assert torch.isclose(plain[:, half].mean(), weighted[:, half].mean(), atol=1e-5)  # "Original": mean kept
    long = "a red car " * 30  # 90 tokens: two chunks in both encoders; pooled from the first chunk, as A1111
    chunked = prompt(long)
    assert chunked.at(0).shape == (154, 72)
    first_chunk = prompt("a red car " * 25)  # the first 75 tokens
    assert torch.allclose(chunked.pooled_at(0), first_chunk.pooled_at(0), atol=1e-6)
    assert prompt("a red car BREAK blue").at(0).shape == (154, 72)
    scheduled = prompt("a [red:blue:0.5] car")
    assert (scheduled.pooled_at(0) - scheduled.pooled_at(STEPS - 1)).abs().max() > 1e-4
    parts = condition(BASE.replace(prompt="a red car AND a blue tree"), tiny_sdxl, Runtime()).branches
    assert sum(b.role == "prompt" for b in parts) == 2


@pytest.mark.parametrize("method", ["cfg", "apg", "perp-neg", "dynamic", "posterior", "gated"])
def test_every_guidance_method_runs_with_several_negatives_on_sdxl(tiny_sdxl, method):
    negatives = (Negative("blue"), Negative("tree", weight=0.5, start=0.2))
    made = generate(BASE.replace(guidance=method, negatives=negatives, steps=3), tiny_sdxl).images[0]
    alone = generate(BASE.replace(guidance=method, steps=3), tiny_sdxl).images[0]
    assert np.abs(pixels(made.image) - pixels(alone.image)).max() > 0


def test_img2img_and_the_hires_fix_run_on_sdxl(tiny_sdxl):
    from avert.init_image import InitImage

    first = generate(BASE.replace(steps=3), tiny_sdxl).images[0]
    redrawn = generate(BASE.replace(steps=3, init_image=InitImage.from_pil(first.image), strength=0.5), tiny_sdxl)
    assert redrawn.images[0].image.size == (32, 32)
    hires = generate(BASE.replace(steps=2, enable_hr=True, hr_scale=1.5, strength=0.5), tiny_sdxl).images[0]
    assert hires.image.size == (48, 48)


@pytest.mark.parametrize("changes, field", [
    ({"negative_prompt_2": "tree"}, "negative_prompt_2"),  # needs negative_prompt
    ({"negative_original_size": "512"}, "negative_original_size"),
    ({"original_size": "0x5"}, "original_size"),
    ({"crop_top_left": "3;5"}, "crop_top_left"),
    ({"empty_negative": "none"}, "empty_negative"),
])
def test_sdxl_fields_are_refused_by_name(tiny_sdxl, changes, field):
    with pytest.raises(ValidationError) as error:
        generate(BASE.replace(**changes), tiny_sdxl)
    assert [p.field for p in error.value.problems] == [field]


@pytest.mark.parametrize("field, value", [("prompt_2", "a dog"), ("empty_negative", "zeros"),
                                          ("negative_target_size", "64x64")])
def test_sdxl_fields_are_refused_on_a_model_with_one_text_encoder(tiny, field, value):
    with pytest.raises(ValidationError) as error:
        generate(BASE.replace(**{field: value}), tiny)
    [problem] = error.value.problems
    assert problem.field == field and "applies only with an SDXL model" in problem.allowed


def test_a_refiner_or_an_sdxl_inpainting_folder_is_named_and_refused(tiny_sdxl_folder, tmp_path):
    from avert.models.loader import load_model

    refiner = tmp_path / "refiner"
    shutil.copytree(tiny_sdxl_folder, refiner)
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None],
                                                          "_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    with pytest.raises(ModelLoadError, match="an SDXL refiner"):
        load_model(refiner)
    inpainting = tmp_path / "inpainting"
    shutil.copytree(tiny_sdxl_folder, inpainting)
    config = json.loads((inpainting / "unet" / "config.json").read_text())
    (inpainting / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 9}))
    with pytest.raises(ModelLoadError, match="9 input channels"):
        load_model(inpainting)


def test_the_command_line_and_both_apis_run_sdxl_with_no_special_flag(tiny_sdxl_folder, tmp_path):
    from fastapi.testclient import TestClient

    from avert.cli import main
    from avert.output.pnginfo import read_png_metadata
    from avert.server.app import create_app
    from avert.server.config import ServerConfig

    made, again, grid = tmp_path / "made.png", tmp_path / "again.png", tmp_path / "grid.png"
    common = ["--model", str(tiny_sdxl_folder), "-q", "--steps", "2", "-W", "32", "-H", "32"]
    assert main(["generate", "a red car", *common, "-n", "blue", "--negative-prompt-2", "tree", "--seed", "4",
                 "--negative-original-size", "64x64", "--upscale", "1", "-o", str(made)]) == 0
    assert "Negative original size: 64x64" in read_png_metadata(made).parameters
    assert main(["generate", "--from", str(made), "--model", str(tiny_sdxl_folder), "-q", "--upscale", "1", "-o",
                 str(again)]) == 0
    assert np.array_equal(pixels(Image.open(made)), pixels(Image.open(again)))
    assert main(["compare", "a red car", *common, "-n", "blue", "-n", "tree", "-o", str(grid)]) == 0
    with TestClient(create_app(ServerConfig(model=str(tiny_sdxl_folder))), base_url="http://127.0.0.1") as c:
        answer = c.post("/sdapi/v1/txt2img", json={"prompt": "a red car", "negative_prompt": "blue", "steps": 2,
                                                   "width": 32, "height": 32, "seed": 4})
        assert answer.status_code == 200, answer.text
        assert "Model: tiny-sdxl" in json.loads(answer.json()["info"])["infotexts"][0]
        native = c.post("/v1/generate", json={"prompt": "a red car", "negative_prompt": "blue", "steps": 2,
                                              "width": 32, "height": 32, "seed": 4, "guidance": "cfg",
                                              "negative_prompt_2": "tree", "negative_original_size": "64x64"})
        assert native.status_code == 200, native.text
        png = base64.b64decode(native.json()["images"][0]["png"])
        assert np.array_equal(pixels(Image.open(io.BytesIO(png))), pixels(Image.open(made)))


def test_an_sdxl_single_file_loads_the_folders_weights_and_makes_its_image(tiny_sdxl_folder, tiny_sdxl, tmp_path):
    from safetensors.torch import load_file, save_file

    from avert.models.loader import load_model
    from tiny_models import write_tiny_sdxl_single_file

    path = write_tiny_sdxl_single_file(tiny_sdxl_folder, tmp_path / "tiny-sdxl.safetensors")
    single = load_model(path, config_dir=tiny_sdxl_folder)
    assert single.is_sdxl and single.source.kind == "single-file" and single.force_zeros_for_empty_prompt
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(single, name).state_dict(), getattr(tiny_sdxl, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    request = BASE.replace(negative_prompt="blue", steps=2)
    assert np.array_equal(pixels(generate(request, single).images[0].image),
                          pixels(generate(request, tiny_sdxl).images[0].image))
    marked = tmp_path / "tiny-sdxl-vpred.safetensors"  # NoobAI-style: an empty `v_pred` key says v-prediction
    save_file({**load_file(path), "v_pred": torch.zeros(0)}, str(marked))
    assert load_model(marked, config_dir=tiny_sdxl_folder).scheduler_config["prediction_type"] == "v_prediction"


def test_the_shipped_sdxl_configs_are_sdxl_base_10s():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from avert.models.single_file import shipped_config_dir

    folder = shipped_config_dir("sdxl")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    cat = [49406, 320, 1125, 539, 320, 2368, 49407]
    first, second = (CLIPTokenizer.from_pretrained(folder / name) for name in ("tokenizer", "tokenizer_2"))
    assert first("a photo of a cat").input_ids == second("a photo of a cat").input_ids == cat
    assert (first.pad_token, second.pad_token, second.pad_token_id) == ("<|endoftext|>", "!", 0)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        big_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    # parameter counts of SDXL base 1.0's UNet, VAE and OpenCLIP bigG text encoder
    assert [sum(p.numel() for p in m.parameters()) for m in (unet, vae, big_g)] == [2567463684, 83653863, 694659840]
    assert vae.config.scaling_factor == 0.13025 and unet.config.cross_attention_dim == 2048
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["_class_name"], scheduler["timestep_spacing"]) == ("EulerDiscreteScheduler", "leading")


def test_an_sdxl_embedding_gives_each_encoder_its_own_vectors(tiny_sdxl, tmp_path):
    """A file whose clip_l / clip_g vectors are each encoder's own embedding of "cat" stands exactly for "cat"."""
    from safetensors.torch import save_file

    from avert.conditioning.embeddings import EmbeddingError, load_embeddings

    vectors = {}
    for key, encoder, tokenizer in (("clip_l", tiny_sdxl.text_encoder, tiny_sdxl.tokenizer),
                                    ("clip_g", tiny_sdxl.text_encoder_2, tiny_sdxl.tokenizer_2)):
        token = tokenizer("cat", add_special_tokens=False).input_ids
        vectors[key] = encoder.get_input_embeddings().weight[token].detach().clone()
    save_file(vectors, str(tmp_path / "kitty.safetensors"))
    save_file({"emb_params": vectors["clip_l"]}, str(tmp_path / "only_l.safetensors"))
    library = load_embeddings(tmp_path)

    def states(text: str):
        return condition(BASE.replace(prompt=text), tiny_sdxl, Runtime(), library).branches[_branch("prompt")]

    same, word = states("a red kitty"), states("a red cat")
    assert torch.allclose(same.at(0), word.at(0), atol=1e-5) and torch.allclose(same.pooled_at(0), word.pooled_at(0),
                                                                              atol=1e-5)
    with pytest.raises(EmbeddingError, match="only_l.safetensors: has no vectors for SDXL's second text encoder"):
        states("a red only_l")


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_a_v_prediction_zero_terminal_snr_model_equals_diffusers_with_guidance_rescale(tiny_sdxl_folder, sdxl_pipe,
                                                                                        sampler):
    from avert.models.loader import load_model

    model = load_model(tiny_sdxl_folder, prediction_type="v_prediction", zero_terminal_snr=True)
    assert (model.scheduler_config["rescale_betas_zero_snr"], model.scheduler_config["timestep_spacing"]) == (
        True, "trailing")
    request = BASE.replace(sampler=sampler, negative_prompt="blue", guidance_rescale=0.7)
    ours = pixels(generate(request, model).images[0].image)
    theirs = diffusers_sdxl(sdxl_pipe, model, request, negative_prompt="blue", guidance_rescale=0.7)
    assert np.abs(ours - theirs).max() <= 1
    plain = load_model(tiny_sdxl_folder, prediction_type="v_prediction")
    assert np.abs(ours - pixels(generate(request, plain).images[0].image)).max() > 2
    with pytest.raises(ValidationError) as error:
        generate(request.replace(sampler="Heun"), model)
    assert [p.field for p in error.value.problems] == ["sampler"] and "zero-terminal-SNR" in str(error.value)


def test_a_single_file_marked_ztsnr_loads_with_a_zero_terminal_snr_schedule(tiny_sdxl_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    from avert.models.loader import load_model
    from tiny_models import write_tiny_sdxl_single_file

    path = write_tiny_sdxl_single_file(tiny_sdxl_folder, tmp_path / "plain.safetensors")
    marked = tmp_path / "ztsnr.safetensors"
    save_file({**load_file(path), "ztsnr": torch.zeros(0), "v_pred": torch.zeros(0)}, str(marked))
    config = load_model(marked, config_dir=tiny_sdxl_folder).scheduler_config
    assert (config["rescale_betas_zero_snr"], config["prediction_type"]) == (True, "v_prediction")
    assert not load_model(path, config_dir=tiny_sdxl_folder).scheduler_config.get("rescale_betas_zero_snr")


def test_the_a1111_api_switches_between_an_sd_and_an_sdxl_model(tiny_folder, tiny_sdxl_folder, tmp_path):
    from fastapi.testclient import TestClient

    from avert.server.app import create_app
    from avert.server.config import ServerConfig

    for folder in (tiny_folder, tiny_sdxl_folder):
        (tmp_path / folder.name).symlink_to(folder, target_is_directory=True)
    body = {"prompt": "a red car", "negative_prompt": "blue", "steps": 2, "width": 32, "height": 32, "seed": 4}
    with TestClient(create_app(ServerConfig(models_dir=tmp_path, model="tiny-sd")), base_url="http://127.0.0.1") as c:
        assert sorted(m["model_name"] for m in c.get("/sdapi/v1/sd-models").json()) == ["tiny-sd", "tiny-sdxl"]
        for name in ("tiny-sdxl", "tiny-sd"):
            assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}).status_code == 200
            answer = c.post("/sdapi/v1/txt2img", json=body)
            assert answer.status_code == 200, answer.text
            assert f"Model: {name}," in json.loads(answer.json()["info"])["infotexts"][0]
        refused = c.post("/v1/generate", json={**body, "negative_prompt_2": "tree"})  # the current model: SD
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "negative_prompt_2"
        sdxl = c.post("/v1/generate", json={**body, "negative_prompt_2": "tree", "model": "tiny-sdxl"})
        assert sdxl.status_code == 200, sdxl.text


def test_the_shipped_sdxl_index_scheduler_and_tokenizers_work_through_from_single_file(tiny_sdxl_folder, tmp_path):
    """The shipped folder, with only the model configs swapped for the tiny ones, loads the tiny SDXL file."""
    from avert.models.loader import load_model
    from avert.models.single_file import shipped_config_dir
    from tiny_models import write_tiny_sdxl_single_file

    config = shutil.copytree(shipped_config_dir("sdxl"), tmp_path / "sdxl")
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        shutil.copy(tiny_sdxl_folder / sub / "config.json", config / sub / "config.json")
    path = write_tiny_sdxl_single_file(tiny_sdxl_folder, tmp_path / "tiny-sdxl.safetensors")
    model = load_model(path, config_dir=config)
    cat = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert model.tokenizer("a photo of a cat").input_ids == model.tokenizer_2("a photo of a cat").input_ids == cat
    assert model.tokenizer_2.pad_token == "!" and model.force_zeros_for_empty_prompt
    assert (model.scheduler_config["_class_name"], model.scheduler_config["prediction_type"]) == (
        "EulerDiscreteScheduler", "epsilon")
