"""Prompt styles (A1111's styles.csv): how a style is applied, how a file is read and refused, and styles on the
command line and on /sdapi/v1 (prompt-styles, txt2img and img2img `styles`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from avert.errors import AvertError, ValidationError
from avert.prompts import styles as st

CSV = ('name,prompt,negative_prompt\n'
       'photo,"a photo of {prompt}, sharp","blurry, lowres"\n'
       'red,red tones,\n'
       '"quiet, calm",,"noise"\n')


def test_a_style_goes_in_place_of_prompt_else_after_a_comma():
    assert st.merge("a photo of {prompt}, sharp", "a car") == "a photo of a car, sharp"
    assert st.merge("red tones", "a car") == "a car, red tones"
    assert st.merge("red tones", "") == "red tones" and st.merge("", "a car ") == "a car"
    assert st.merge("{prompt} and {prompt}", "x") == "x and x"


def test_styles_apply_in_the_order_named_to_prompt_and_negative():
    styles = st.parse_styles(CSV)
    assert [s.name for s in styles] == ["photo", "red", "quiet, calm"]
    assert st.apply(styles, ["photo", "red"], "a car", "") == ("a photo of a car, sharp, red tones", "blurry, lowres")
    assert st.apply(styles, ["red", "photo"], "a car", "hands") == ("a photo of a car, red tones, sharp",
                                                                    "hands, blurry, lowres")
    assert st.apply(styles, ["quiet, calm"], "a car", "hands") == ("a car", "hands, noise")
    assert st.apply(styles, [], "a car", "hands") == ("a car", "hands")
    with pytest.raises(ValidationError) as error:
        st.apply(styles, ["red", "nope"], "a car", "")
    [problem] = error.value.problems
    assert (problem.field, problem.value) == ("styles", "nope") and "'photo', 'red'" in problem.allowed


@pytest.mark.parametrize("text, message", [
    ("name,prompt\nx,y\n", "line 1 must be a header naming name, prompt, negative_prompt; negative_prompt missing"),
    ("name,prompt,negative_prompt\n,a,b\n", "line 2: a style needs a name"),
    ("name,prompt,negative_prompt\na,b,c\na,d,e\n", "line 3: the name 'a' is given twice"),
    ("name,prompt,negative_prompt\na," + "x" * 5000 + ",c\n", "prompt must be at most 4096 characters"),
    ("name,prompt,negative_prompt\n" + "n" * 129 + ",a,b\n", "a name must be at most 128 characters"),
    ("name,prompt,negative_prompt\n" + "".join(f"s{i},a,b\n" for i in range(1001)), "more than 1000 styles"),
    ("name,prompt,negative_prompt\na,\"b\"x,c\n", "line 2 is not CSV"),
])
def test_a_bad_styles_file_is_refused_with_its_line_and_rule(text, message):
    with pytest.raises(AvertError) as error:
        st.parse_styles(text, "styles.csv")
    assert message in str(error.value) and str(error.value).startswith("styles: styles.csv")


def test_a_styles_file_is_read_within_bounds(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("\ufeff" + CSV + "extra,a,b,ignored column\n", encoding="utf-8")
    assert [s.name for s in st.read_styles(path)] == ["photo", "red", "quiet, calm", "extra"]
    path.write_bytes(b"name,prompt,negative_prompt\n" + b"a,b,c\n" * 200_000)
    with pytest.raises(AvertError, match="must be at most 1048576"):
        st.read_styles(path)
    path.write_bytes(b"name,prompt,negative_prompt\n\xff\xfe,a,b\n")
    with pytest.raises(AvertError, match="cannot read .* as UTF-8"):
        st.read_styles(path)
    with pytest.raises(AvertError, match="cannot read"):
        st.read_styles(tmp_path / "missing.csv")


def test_the_command_line_applies_styles_and_records_the_styled_prompt(tmp_path, tiny_folder, capsys):
    from avert.cli import main
    from avert.output.pnginfo import read_png_metadata

    styles = tmp_path / "styles.csv"
    styles.write_text(CSV)
    common = ["--model", str(tiny_folder), "-q", "--steps", "2", "--seed", "4"]
    made, plain = tmp_path / "made.png", tmp_path / "plain.png"
    assert main(["generate", "a car", *common, "--styles", str(styles), "--style", "photo", "--style", "red",
                 "-o", str(made)]) == 0
    text = read_png_metadata(made).parameters
    assert text.startswith("a photo of a car, sharp, red tones\nNegative prompt: blurry, lowres\n")
    assert main(["generate", "a photo of a car, sharp, red tones", *common, "-n", "blurry, lowres", "-o",
                 str(plain)]) == 0
    assert np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(plain)))
    capsys.readouterr()
    assert main(["generate", "a car", *common, "--style", "photo", "-o", str(made)]) == 2
    err = capsys.readouterr().err
    assert "style: 'photo'" in err and "--styles FILE" in err
    assert main(["generate", "a car", *common, "--styles", str(styles), "--style", "nope", "-o", str(made)]) == 2
    assert "style: 'nope'" in capsys.readouterr().err


def test_the_server_lists_its_styles_and_applies_them_by_name(tmp_path, tiny_folder):
    from avert.server.app import create_app
    from avert.server.config import ServerConfig

    config = ServerConfig(model=str(tiny_folder), styles=st.parse_styles(CSV))
    body = {"prompt": "a car", "negative_prompt": "hands", "steps": 2, "width": 16, "height": 16, "seed": 1}
    with TestClient(create_app(config), base_url="http://127.0.0.1") as c:
        assert c.get("/sdapi/v1/prompt-styles").json() == [
            {"name": "photo", "prompt": "a photo of {prompt}, sharp", "negative_prompt": "blurry, lowres"},
            {"name": "red", "prompt": "red tones", "negative_prompt": ""},
            {"name": "quiet, calm", "prompt": "", "negative_prompt": "noise"}]
        answer = c.post("/sdapi/v1/txt2img", json={**body, "styles": ["photo", "quiet, calm"]}).json()
        info = json.loads(answer["info"])
        assert info["infotexts"][0].startswith("a photo of a car, sharp\nNegative prompt: hands, blurry, lowres, "
                                               "noise\n")
        assert info["styles"] == ["photo", "quiet, calm"] and answer["parameters"]["prompt"] == "a car"
        direct = c.post("/sdapi/v1/txt2img", json={**body, "prompt": "a photo of a car, sharp",
                                                   "negative_prompt": "hands, blurry, lowres, noise"}).json()
        assert direct["images"] == answer["images"]
        each = c.post("/sdapi/v1/txt2img", json={**body, "batch_size": 2, "negative_prompt": ["", "hands"],
                                                 "styles": ["photo"]}).json()
        assert json.loads(each["info"])["all_negative_prompts"] == ["blurry, lowres", "hands, blurry, lowres"]
        hires = c.post("/sdapi/v1/txt2img", json={**body, "styles": ["red"], "enable_hr": True, "hr_scale": 1.5,
                                                  "denoising_strength": 0.5, "hr_prompt": "a bus"}).json()
        assert "Hires prompt: \"a bus, red tones\"" in json.loads(hires["info"])["infotexts"][0]
        for bad in (["nope"], "photo", [5], ["x"] * 33):
            refused = c.post("/sdapi/v1/txt2img", json={**body, "styles": bad})
            assert refused.status_code == 422 and [e["field"] for e in refused.json()["errors"]] == ["styles"]
    with TestClient(create_app(ServerConfig(model=str(tiny_folder))), base_url="http://127.0.0.1") as c:
        assert c.get("/sdapi/v1/prompt-styles").json() == []
        refused = c.post("/sdapi/v1/txt2img", json={**body, "styles": ["photo"]}).json()
        assert "none are configured" in refused["errors"][0]["allowed"]
