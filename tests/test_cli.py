"""The `avert` command end to end on the tiny model: files, metadata, re-making, comparison, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from avert.cli import main
from avert.output.pnginfo import format_parameters, parse_parameters, read_png_metadata, save_png

FLAGS = ["--steps", "3", "-W", "64", "-H", "64", "-q"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_pngs_with_a1111_parameters_and_record(tiny_folder, tmp_path, capsys):
    code, out, _ = run(capsys, "generate", "a red house", "-n", "blue tree", "--model", tiny_folder,
                       "--seed", 11, "-b", 2, "-o", tmp_path, *FLAGS)
    assert code == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["00000-11.png", "00001-12.png"]
    meta = read_png_metadata(files[1])
    parsed = parse_parameters(meta.parameters)
    assert (parsed.prompt, parsed.negative_prompt) == ("a red house", "blue tree")
    assert parsed.get("Seed") == "12" and parsed.get("Steps") == "3" and parsed.get("Sampler") == "Euler a"
    assert parsed.get("Size") == "64x64" and len(parsed.get("Model hash")) == 10
    assert meta.record["seed"] == 12 and meta.record["request"]["negative_prompt"] == "blue tree"
    assert "seed 12" in out


def test_from_image_remakes_it_exactly(tiny_folder, tmp_path, capsys):
    run(capsys, "generate", "a red house", "-n", "blue tree", "--model", tiny_folder, "--seed", 3, "-b", 2,
        "-o", tmp_path / "batch", "--sampler", "DPM++ 2M Karras", *FLAGS)
    second = tmp_path / "batch" / "00001-4.png"
    code, _, _ = run(capsys, "generate", "--from", second, "--model", tiny_folder, "-o", tmp_path / "re.png", "-q")
    assert code == 0  # image 2 of a batch, re-made alone: equal up to float rounding of the batched forward
    remade = np.asarray(Image.open(tmp_path / "re.png"), dtype=np.int16)
    assert np.abs(np.asarray(Image.open(second), dtype=np.int16) - remade).max() <= 1


def test_from_image_with_only_an_a1111_infotext(tiny_folder, tmp_path, capsys):
    text = format_parameters("a red house", "blue tree", [("Steps", 3), ("Sampler", "DDIM"), ("CFG scale", 6.5),
                                                          ("Seed", 5), ("Size", "64x64"), ("Model", "x")])
    source = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(source, pnginfo=_text_chunk(text))
    run(capsys, "generate", "--from", source, "--model", tiny_folder, "-o", tmp_path / "re.png", "-q")
    parsed = parse_parameters(read_png_metadata(tmp_path / "re.png").parameters)
    assert parsed.get("Sampler") == "DDIM" and parsed.get("Seed") == "5" and parsed.get("CFG scale") == "6.5"
    assert parsed.negative_prompt == "blue tree"


def _text_chunk(text):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def test_flags_override_the_image_they_remake(tiny_folder, tmp_path, capsys):
    run(capsys, "generate", "a red house", "--model", tiny_folder, "--seed", 3, "-o", tmp_path / "a.png", *FLAGS)
    run(capsys, "generate", "--from", tmp_path / "a.png", "--steps", 2, "--model", tiny_folder, "-o",
        tmp_path / "b.png", "-q")
    assert read_png_metadata(tmp_path / "b.png").record["request"]["steps"] == 2


def test_info_prints_parameters_and_json(tiny_folder, tmp_path, capsys):
    run(capsys, "generate", "a red house", "-n", "blue tree", "--model", tiny_folder, "--seed", 1, "-o",
        tmp_path / "a.png", *FLAGS)
    code, out, _ = run(capsys, "info", tmp_path / "a.png")
    assert code == 0 and out.startswith("a red house\nNegative prompt: blue tree\nSteps: 3")
    code, out, _ = run(capsys, "info", "--json", tmp_path / "a.png")
    assert json.loads(out)["request"]["prompt"] == "a red house"


def test_compare_writes_one_labelled_grid(tiny_folder, tmp_path, capsys):
    code, out, _ = run(capsys, "compare", "a red house", "-n", "blue tree", "-n", "cat", "--model", tiny_folder,
                       "--seed", 9, "-b", 2, "-o", tmp_path / "grid.png", *FLAGS)
    assert code == 0 and "seeds 9, 10" in out
    record = read_png_metadata(tmp_path / "grid.png").record
    assert record["labels"] == ["No negative prompt", "Negative prompt: blue tree", "Negative prompt: cat"]
    assert [c["request"]["negative_prompt"] for c in record["compare"]] == ["", "blue tree", "cat"]
    assert {c["seed"] for c in record["compare"]} == {9}
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 3 * 256 and grid.height > 2 * 256  # 3 columns, 2 rows, upscaled cells


def test_compare_with_map_adds_two_rows_per_seed_and_keeps_small_maps_in_the_record(tiny_folder, tmp_path, capsys):
    args = ("compare", "a red house", "-n", "blue tree", "--model", tiny_folder, "--seed", 9, *FLAGS)
    assert run(capsys, *args, "-o", tmp_path / "plain.png")[0] == 0
    assert run(capsys, *args, "--map", "-o", tmp_path / "map.png")[0] == 0
    plain, mapped = (Image.open(tmp_path / name) for name in ("plain.png", "map.png"))
    assert mapped.height > 2 * plain.height  # 3 rows instead of 1
    records = read_png_metadata(tmp_path / "map.png").record["compare"]
    assert "negative_maps" not in records[0]
    small = records[1]["negative_maps"][0]
    assert small["negative"] == "blue tree" and small["peak"] > 0 and len(small["values"]) == 2 * small["size"][0] * small["size"][1]


def test_compare_columns_equal_separate_generations(tiny_folder, tmp_path, capsys):
    from avert import api
    from avert.request import GenerationRequest

    request = GenerationRequest("a red house", seed=9, steps=3, width=64, height=64)
    comparison = api.compare(request, ["blue tree"], tiny_folder)
    alone = api.generate(request.replace(negative_prompt="blue tree"), tiny_folder)
    assert np.array_equal(np.asarray(comparison.columns[1].images[0].image), np.asarray(alone.images[0].image))
    plain = api.generate(request, tiny_folder)
    assert np.array_equal(np.asarray(comparison.columns[0].images[0].image), np.asarray(plain.images[0].image))


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--steps", "0"], "steps: 0 is not allowed; must be an integer from 1 to 150"),
    (["generate", "x", "--sampler", "Euler A"], "sampler: 'Euler A' is not allowed; must be one of: Euler a"),
    (["generate", "x", "-W", "100"], "width: 100 is not allowed; must be an integer from 16 to 2048, a multiple of 8"),
    (["generate", "x", "--seed", "-5"], "seed: -5 is not allowed"),
    (["generate", "x", "--model", "/nonexistent/model"], "model: '/nonexistent/model' does not exist"),
    (["generate", "--steps", "3"], "prompt: '' is not allowed; give a prompt"),
    (["info", "/nonexistent.png"], "/nonexistent.png"),
    (["generate", "x", "-n", "a", "-n", "b", "--negative-weight", "0.5", "--negatives", "joined"],
     "negatives_rule: 'joined' is not allowed; joins only negatives of weight 1 over the whole run; negatives[1] has"),
    (["generate", "x", "-n", "a", "--negatives", "max"], "negatives_rule: 'max' is not allowed; must be one of: sum"),
])
def test_errors_are_one_clear_message_without_traceback(tiny_folder, capsys, argv, message):
    if "--model" not in argv and argv[0] == "generate":
        argv = argv + ["--model", str(tiny_folder)]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_bad_flag_type_names_the_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "x", "--steps", "many"])
    assert exit_info.value.code == 2
    assert "steps: 'many' is not allowed; must be an integer from 1 to 150" in capsys.readouterr().err


def test_negative_at_cfg_one_warns_on_the_console(tiny_folder, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "x", "-n", "blue tree", "--cfg-scale", 1, "--model", tiny_folder,
                       "-o", tmp_path / "a.png", *FLAGS)
    assert code == 0 and "avert: warning: negative_prompt has no effect at cfg_scale 1" in err


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns(tiny_folder, tmp_path, capsys, monkeypatch, native):
    from avert.pipeline import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    code, _, err = run(capsys, "generate", "x", "--precision", "bf16", "--model", tiny_folder,
                       "-o", tmp_path / "a.png", *FLAGS)
    assert code == 0 and ("avert: warning: precision bf16: this CPU has no native bf16" in err) == (not native)
    assert runtime.Runtime(precision="fp32").warnings() == runtime.Runtime("cuda", "bf16").warnings() == ()


def test_console_script_runs(tiny_folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "avert.cli", "generate", "a cat", "--model", str(tiny_folder),
                           "-o", str(tmp_path / "a.png"), "--seed", "1", *FLAGS], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.png").exists()


def test_help_and_bad_flags_answer_without_loading_torch_or_diffusers():
    """The parser reads every choice (samplers, methods) from the schema, which must not pull in diffusers
    (about 7 s of imports on a 2-core machine) just to print help or refuse a flag."""
    script = ("import sys; from avert.cli import build_parser; build_parser().format_help(); "
              "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_png_written_by_save_png_keeps_the_image(tmp_path):
    image = Image.new("RGB", (4, 4), (10, 200, 30))
    save_png(image, tmp_path / "x.png", "p", {"a": 1})
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), np.asarray(image))


def test_small_images_are_saved_enlarged_and_the_factor_recorded(tiny_folder, tmp_path, capsys):
    run(capsys, "generate", "x", "--model", tiny_folder, "--seed", 1, "-o", tmp_path / "auto.png", *FLAGS)
    run(capsys, "generate", "x", "--model", tiny_folder, "--seed", 1, "-o", tmp_path / "one.png", "--upscale", 1,
        *FLAGS)
    auto, one = Image.open(tmp_path / "auto.png"), Image.open(tmp_path / "one.png")
    assert one.size == (64, 64) and auto.size == (256, 256)
    assert read_png_metadata(tmp_path / "auto.png").record["saved_scale"] == 4
    assert np.array_equal(np.asarray(auto)[::4, ::4], np.asarray(one))


def test_upscale_out_of_range_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "x", "--upscale", "0"])
    assert "upscale: '0' is not allowed; must be an integer from 1 to 16" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["gpu", "cuda:x"] + ([] if __import__("torch").cuda.is_available() else ["cuda"]))
def test_unknown_or_absent_device_is_refused_by_name(capsys, device):
    with pytest.raises(SystemExit):
        main(["generate", "x", "--device", device])
    assert f"device: '{device}' is not allowed; must be a torch device available here" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, allowed", [
    ("--steps", "0", "must be an integer from 1 to 10000000"),
    ("--batch-size", "x", "must be an integer from 1 to 1024"),
    ("--lr", "2", "must be a number from 1e-07 to 1.0"),
    ("--ema-decay", "1", "must be a number from 0.0 to 0.99999"),
    ("--threads", "0", "must be an integer from 1 to 256"),
    ("--precision", "fp16", "argument --precision: invalid choice: 'fp16'"),
    ("--warmup", "0", "warmup: '0' is not allowed; must be an integer from 1 to 10000000"),
    ("--object-weight", "-1", "object-weight: '-1' is not allowed; must be a number from 0.0 to 100.0"),
    ("--object-mask", "some", "argument --object-mask: invalid choice: 'some'"),
    ("--tone-noise", "1.5", "tone-noise: '1.5' is not allowed; must be a number from 0.0 to 1.0"),
    ("--tone-noise", "-0.1", "tone-noise: '-0.1' is not allowed; must be a number from 0.0 to 1.0"),
    ("--tone-noise-below", "0", "tone_noise_below: '0' is not allowed; must be an integer from 1 to 1000"),
    ("--tone-noise-captions", "all", "argument --tone-noise-captions: invalid choice: 'all'"),
])
def test_train_flags_are_bounded(capsys, flag, value, allowed):
    with pytest.raises(SystemExit):
        main(["train", flag, value])
    assert allowed in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--tone-noise-below", "300"), ("--tone-noise-captions", "bare")])
def test_tone_noise_options_without_tone_noise_are_refused_by_name(capsys, tmp_path, flag, value):
    code, _, err = run(capsys, "train", "--run", tmp_path / "run", flag, value)
    assert code == 2 and "Traceback" not in err and not (tmp_path / "run" / "data").exists()
    assert "tone_noise: 0.0 is not allowed with tone_noise_below or tone_noise_captions set" in err


def test_eval_refuses_an_unknown_device_too(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "negatives", "--device", "gpu"])
    assert "device: 'gpu' is not allowed" in capsys.readouterr().err


def test_serve_refuses_to_listen_beyond_localhost_without_a_key(capsys):
    code, _, err = run(capsys, "serve", "--host", "0.0.0.0", "--port", 7861)
    assert code == 2 and "--api-key" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _subparsers(parser, path=("avert",)):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, path + (name,))


def test_every_flag_a_help_text_names_is_a_flag_of_that_command():
    """A help text that names a flag the command does not have (`avert eval concepts` once pointed at a
    --first-seed of its siblings) sends users to an error."""
    import re

    from avert.cli import build_parser

    for path, parser in _subparsers(build_parser()):
        flags = {s for action in parser._actions for s in action.option_strings}
        for action in parser._actions:
            named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", action.help or "")) - {"--"}
            assert named <= flags, f"{' '.join(path)} {action.option_strings}: {named - flags}"


@pytest.mark.parametrize("argv, named", [(["bench", "sdxl", "--size", "10"], "size"),
                                         (["bench", "sdxl", "--repeats", "0"], "repeats"),
                                         (["bench", "engine", "--repeats", "x"], "repeats"),
                                         (["bench", "scale", "--requests", "5"], "requests")])
def test_bench_options_are_refused_by_name_before_any_work(argv, named, capsys):
    from avert.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and named in err and "Traceback" not in err


@pytest.mark.parametrize("argv, says", [
    (["generate", "a", "--lora", "style.ckpt:0.5"], "lora: 'style.ckpt' must be a .safetensors file"),
    (["generate", "a", "--lora-dir", "/nonexistent-loras"], "lora-dir: '/nonexistent-loras' does not exist"),
    (["generate", "a", "--schedule-type", "Polyexponential"], "schedule_type"),
    (["serve", "--presets", "/tmp"], "--presets: '/tmp' is not allowed; must be a file"),
    (["bench", "readme", "--eval-seeds", "0"], "eval-seeds"),
])
def test_the_new_options_refuse_bad_values_by_name(capsys, argv, says):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2
    assert says in capsys.readouterr().err
