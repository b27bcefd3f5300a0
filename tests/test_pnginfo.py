"""A1111-compatible infotext formatting/parsing and the PNG metadata chunks."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, PngImagePlugin

from avert.errors import AvertError
from avert.output.pnginfo import (
    ParsedParameters,
    _quote,
    _unquote,
    PngMetadata,
    format_parameters,
    parse_parameters,
    png_bytes,
    read_png_metadata,
    save_png,
)

PARAMS = (("Steps", 20), ("Sampler", "Euler a"), ("CFG scale", 7.5), ("Seed", 42), ("Size", "512x512"))

A1111_EXAMPLE = (
    "a red house on a hill, (blue sky:1.2)\n"
    "Negative prompt: green tones, [blurry]\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b, Model: v1-5"
)


@pytest.mark.parametrize(
    ("prompt", "negative", "params", "expected"),
    [
        ("a cat", "dog", PARAMS[:2], "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a"),
        ("a cat", "", PARAMS[:3], "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.5"),
        ("a cat", "dog", (), "a cat\nNegative prompt: dog"),
        ("", "dog", (("Steps", 20),), "Negative prompt: dog\nSteps: 20"),
        ("p", "", (("Steps", 20), ("Upscaler", None), ("Seed", 3)), "p\nSteps: 20, Seed: 3"),
        ("p", "", (("CFG scale", 7.0), ("Steps", 7)), "p\nCFG scale: 7.0, Steps: 7"),  # str(): as A1111 writes it
        ("p", "", (("Lora hashes", "a: 1, b: 2"),), 'p\nLora hashes: "a: 1, b: 2"'),
        ("p", "", (("Note", 'say "hi"\nnow'),), 'p\nNote: "say \\"hi\\"\\nnow"'),
        ("p", "", (("Word", "ünïcødé"),), "p\nWord: ünïcødé"),
    ],
)
def test_format_parameters(prompt, negative, params, expected):
    assert format_parameters(prompt, negative, params) == expected


@pytest.mark.parametrize("key", ["A", "", "bad:key", "trailing ", " leading", "comma,key"])
def test_format_rejects_keys_the_parser_cannot_read(key):
    with pytest.raises(ValueError, match="parameter key"):
        format_parameters("p", "", ((key, 1),))


ROUND_TRIP_CASES = [
    ("a red house, (blue sky:1.2)", "green tones, [blurry]"),
    ("line one\nline two: with colon, and comma", "neg one\nneg two"),
    ('quotes "inside" and \\backslash\\', 'neg "quoted", too'),
    ("ünïcødé 漢字 🎨, emoji", "ネガティブ"),
    ("no negative here", ""),
    ("", "only a negative"),
    ("blank\n\nlines kept", "also\n\nhere"),
    ("Steps: 1, Seed: 2, Size: 3", "looks: like, params: too, x: y"),
]

ROUND_TRIP_PARAMS = (
    ("Steps", 30),
    ("Sampler", "DPM++ 2M Karras"),
    ("CFG scale", 7.0),
    ("Seed", 965400086),
    ("Negative guidance", "scale: 1.5, start: 0.2"),
    ("Prompt note", 'multi\nline "quoted" value'),
    ("Model", "v1-5/ünï"),
    ("Empty", ""),
)


@pytest.mark.parametrize(("prompt", "negative"), ROUND_TRIP_CASES)
def test_round_trip(prompt, negative):
    parsed = parse_parameters(format_parameters(prompt, negative, ROUND_TRIP_PARAMS))
    assert parsed == ParsedParameters(prompt, negative, tuple((k, str(v)) for k, v in ROUND_TRIP_PARAMS))


def test_parses_a1111_example():
    parsed = parse_parameters(A1111_EXAMPLE)
    assert parsed.prompt == "a red house on a hill, (blue sky:1.2)"
    assert parsed.negative_prompt == "green tones, [blurry]"
    assert parsed.params == (
        ("Steps", "20"),
        ("Sampler", "Euler a"),
        ("CFG scale", "7"),
        ("Seed", "965400086"),
        ("Size", "512x512"),
        ("Model hash", "45dee52b"),
        ("Model", "v1-5"),
    )
    assert parsed.get("Seed") == "965400086"
    assert parsed.get("Missing") is None
    assert parsed.get("Missing", "x") == "x"


@pytest.mark.parametrize(
    ("text", "prompt", "negative"),
    [
        ("a cat\nSteps: 20, Seed: 1", "a cat\nSteps: 20, Seed: 1", ""),
        ("a cat\nNegative prompt: dog\nSteps: 20, Seed: 1", "a cat", "dog\nSteps: 20, Seed: 1"),
        ("just a prompt", "just a prompt", ""),
        ("", "", ""),
    ],
)
def test_last_line_with_fewer_than_three_params_is_prompt(text, prompt, negative):
    assert parse_parameters(text) == ParsedParameters(prompt, negative, ())


def test_single_line_of_params_has_empty_prompt():
    parsed = parse_parameters("Steps: 20, Sampler: Euler a, Seed: 5")
    assert (parsed.prompt, parsed.negative_prompt, parsed.get("Sampler")) == ("", "", "Euler a")


def test_get_returns_last_repeated_key():
    assert parse_parameters("p\nSeed: 1, Steps: 2, Seed: 3").get("Seed") == "3"


RECORD = {"prompt": "ünïcødé 漢字", "seed": 42, "guidance": {"scale": 7.5}}
TEXT = format_parameters(
    "ünïcødé 漢字, a house", "ネガティブ", (("Steps", 20), ("Sampler", "Euler a"), ("Seed", 42))
)


def _chunk_types(data: bytes) -> dict[bytes, bytes]:
    """Map each text chunk's keyword to its chunk type (tEXt, iTXt or zTXt)."""
    found, pos = {}, 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            found[body.split(b"\0", 1)[0]] = kind
        pos += 12 + length
    return found


def test_png_bytes_round_trip_non_latin1():
    data = png_bytes(Image.new("RGB", (8, 8), "red"), TEXT, RECORD)
    assert read_png_metadata(data) == PngMetadata(TEXT, RECORD)
    assert _chunk_types(data) == {b"parameters": b"iTXt", b"avert": b"iTXt"}
    assert Image.open(io.BytesIO(data)).getpixel((3, 3)) == (255, 0, 0)


def test_latin1_parameters_are_text_chunk():
    data = png_bytes(Image.new("RGB", (4, 4)), "plain café\nSteps: 1, Seed: 2, Size: 4x4", {})
    assert _chunk_types(data)[b"parameters"] == b"tEXt"
    assert read_png_metadata(data).parameters == "plain café\nSteps: 1, Seed: 2, Size: 4x4"


def test_record_is_sorted_json(tmp_path):
    data = png_bytes(Image.new("RGB", (4, 4)), "p", {"b": 1, "a": "é"})
    assert Image.open(io.BytesIO(data)).text["avert"] == json.dumps({"a": "é", "b": 1}, ensure_ascii=False)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "CMYK"])
def test_save_png_file_round_trip(tmp_path, mode):
    path = tmp_path / "out.png"
    save_png(Image.new(mode, (16, 8)), path, TEXT, RECORD)
    assert read_png_metadata(path) == PngMetadata(TEXT, RECORD)
    assert read_png_metadata(str(path)) == PngMetadata(TEXT, RECORD)
    with Image.open(path) as image:
        assert image.size == (16, 8)
        assert read_png_metadata(image) == PngMetadata(TEXT, RECORD)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left behind


def test_save_png_into_missing_folder_names_it(tmp_path):
    with pytest.raises(AvertError, match="missing"):
        save_png(Image.new("RGB", (4, 4)), tmp_path / "missing" / "x.png", "p", {})


def test_png_without_metadata():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    assert read_png_metadata(buffer.getvalue()) == PngMetadata(None, None)
    assert read_png_metadata(Image.new("RGB", (4, 4))) == PngMetadata(None, None)


def test_non_png_file_is_avert_error(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (4, 4)).save(path, format="JPEG")
    with pytest.raises(AvertError, match=r"photo\.jpg.*not a PNG"):
        read_png_metadata(path)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 10])
def test_unreadable_file_is_avert_error(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(AvertError, match=r"broken\.png"):
        read_png_metadata(path)


def test_missing_file_is_avert_error(tmp_path):
    with pytest.raises(AvertError, match=r"nothere\.png"):
        read_png_metadata(tmp_path / "nothere.png")


def test_truncated_png_is_avert_error():
    data = png_bytes(Image.effect_noise((64, 64), 50), "p", {})
    with pytest.raises(AvertError, match="PNG data"):
        read_png_metadata(data[: len(data) // 2])


@pytest.mark.parametrize("chunk", ["{not json", "[1, 2]"])
def test_corrupt_record_chunk_is_avert_error(tmp_path, chunk):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("avert", chunk)
    path = tmp_path / "bad.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(AvertError, match=r"bad\.png.*'avert'"):
        read_png_metadata(path)


def test_sd_parsers_reads_our_png(tmp_path):
    """The real-world reader check: sd-parsers' A1111 parser understands what save_png writes."""
    import sd_parsers

    text = format_parameters(
        "a red house on a hill, (blue sky:1.2), 漢字",
        "green tones, [blurry]",
        (("Steps", 20), ("Sampler", "Euler a"), ("CFG scale", 7.0), ("Seed", 965400086), ("Size", "512x512")),
    )
    path = tmp_path / "sd.png"
    save_png(Image.new("RGB", (8, 8)), path, text, {"seed": 965400086})
    info = sd_parsers.ParserManager().parse(path)
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    assert info.full_prompt == "a red house on a hill, (blue sky:1.2), 漢字"  # read from an iTXt chunk
    assert info.full_negative_prompt == "green tones, [blurry]"
    sampler = info.samplers[0]
    assert sampler.name == "Euler a"
    assert str(sampler.parameters["seed"]) == "965400086"


def test_an_infotext_without_guidance_is_remade_with_plain_cfg_whatever_the_models_default():
    """An A1111 image (or avert's with cfg, whose infotext omits it) was made with plain CFG, so the request
    names cfg instead of leaving the method to the model that re-makes it; avert's "Guidance" key is read."""
    from pathlib import Path

    from avert.models.components import ModelSource
    from avert.pipeline.metadata import infotext, request_from_a1111
    from avert.request import GenerationRequest

    text = "a house\nNegative prompt: sun\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32"
    assert request_from_a1111(parse_parameters(text)).guidance == "cfg"
    source = ModelSource(Path("m"), "m", "0123456789", "diffusers-folder")
    for method in ("cfg", "gated"):
        made = GenerationRequest("a house", "sun", seed=1, width=32, height=32, guidance=method)
        written = infotext(made, 1, source)
        assert ("Guidance:" in written) == (method != "cfg")
        assert request_from_a1111(parse_parameters(written)).guidance == method


@pytest.mark.parametrize("value, written", [
    ("plain", "plain"), ("a,b", '"a,b"'), ("a:b", '"a:b"'), ("a\nb", '"a\\nb"'), ("é, ü", '"é, ü"'), (7.0, "7.0"),
    ((1, 2), '"(1, 2)"'),
])
def test_a_value_is_quoted_only_when_it_holds_a_comma_a_newline_or_a_colon(value, written):
    assert _quote(value) == written
    assert _unquote(written) == str(value)


@pytest.mark.parametrize("text, value", [
    ("", ""), ('"', '"'), ('""', ""), ('"a"', "a"), ('"a" ', '"a" '), ('"a', '"a'), ('a"', 'a"'), ('"\\q"', '"\\q"'),
])
def test_unquote_takes_only_a_whole_json_string_and_leaves_anything_else(text, value):
    assert _unquote(text) == value


def test_two_letter_keys_are_written_and_the_error_says_what_keys_can_be():
    assert format_parameters("p", "", [("ab", 1), ("Steps", 2), ("Seed", 3)]) == "p\nab: 1, Steps: 2, Seed: 3"
    with pytest.raises(ValueError) as info:
        format_parameters("p", "", [("a", 1)])
    assert str(info.value) == ("parameter key 'a' cannot be read back by A1111's parser; use 2 or more letters, "
                               "digits, '-', '/' or inner spaces")


@pytest.mark.parametrize("mode, stored", [("PA", "RGBA"), ("RGBa", "RGBA"), ("LAB", "RGB"), ("CMYK", "RGB"),
                                          ("F", "RGB"), ("LA", "LA"), ("P", "P"), ("I;16", "I;16")])
def test_modes_png_cannot_store_become_rgba_when_they_carry_alpha_else_rgb(mode, stored):
    data = png_bytes(Image.new(mode, (2, 2)), "p", {})
    assert Image.open(io.BytesIO(data)).mode == stored


def test_a_failed_write_names_the_file_and_the_reason_and_leaves_nothing(tmp_path):
    path = tmp_path / "missing" / "x.png"
    with pytest.raises(AvertError) as info:
        save_png(Image.new("RGB", (4, 4)), path, "p", {})
    assert str(info.value) == f"cannot write PNG file {path}: No such file or directory"
    assert list(tmp_path.iterdir()) == [] or not any(p.suffix == ".tmp" for p in tmp_path.rglob("*"))


def test_metadata_is_read_only_from_pngs_of_bounded_pixels_over_all_frames(monkeypatch):
    """The bound counts every frame of an APNG; a PNG at the bound is read."""
    import avert.output.pnginfo as pnginfo

    monkeypatch.setattr(pnginfo, "MAX_METADATA_PIXELS", 100)

    def frames(count: int, size: tuple[int, int]) -> bytes:
        out, images = io.BytesIO(), [Image.new("RGB", size, (i, 0, 0)) for i in range(count)]
        images[0].save(out, format="PNG", save_all=True, append_images=images[1:])
        return out.getvalue()

    assert read_png_metadata(frames(1, (10, 10))) == PngMetadata(None, None)
    assert read_png_metadata(frames(2, (10, 5))) == PngMetadata(None, None)
    for count, size in ((1, (10, 11)), (3, (10, 5))):
        with pytest.raises(AvertError) as info:
            read_png_metadata(frames(count, size))
        assert str(info.value) == (f"the PNG data holds {size[0]}x{size[1]} pixels in {count} frame(s); metadata is "
                                   "read from PNGs of at most 100 pixels in all")


def test_a_decompression_bomb_is_refused_by_name():
    from avert.testing.live import bomb_png

    with pytest.raises(AvertError) as info:
        read_png_metadata(bomb_png())
    assert str(info.value).startswith("cannot read the PNG data: Image size (10000000000 pixels) exceeds limit")


def test_errors_name_where_the_png_came_from(tmp_path):
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    with pytest.raises(AvertError, match=f"^file {jpeg} is not a PNG file \\(found JPEG\\)$"):
        read_png_metadata(jpeg)
    with pytest.raises(AvertError, match="^cannot read the PNG data as an image: "):
        read_png_metadata(b"junk")
    with pytest.raises(AvertError, match=f"^cannot read file {tmp_path / 'nothere.png'}: it does not exist$"):
        read_png_metadata(tmp_path / "nothere.png")
    with pytest.raises(AvertError, match=f"^cannot read file {tmp_path}: it is not a regular file$"):
        read_png_metadata(tmp_path)


def test_an_opened_image_is_named_by_its_file_or_as_the_image(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_itxt("avert", "[1]")
    path = tmp_path / "list.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(AvertError, match=f"^{path}: the 'avert' PNG text chunk holds list, not a JSON object$"):
        read_png_metadata(Image.open(path))
    image = Image.new("RGB", (4, 4))
    image.info["avert"] = "7"
    with pytest.raises(AvertError, match="^the image: the 'avert' PNG text chunk holds int, not a JSON object$"):
        read_png_metadata(image)
    data = png_bytes(Image.effect_noise((64, 64), 50), "p", {})
    broken = tmp_path / "broken.png"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(AvertError, match=f"^cannot read {broken}: damaged PNG"):
        read_png_metadata(Image.open(broken))


@pytest.mark.parametrize("line", ["0" * 262144, "a" + " " * 262144, "ab " * 87000, "a-" * 131000,
                                  'ab: "' + "x" * 262144, "ab:" + " " * 262144, "0" * (1 << 22)])
def test_a_long_parameters_line_parses_in_linear_time(line):
    """A1111's own pattern takes seconds on these (quadratic backtracking); a server reads such lines from
    requests."""
    import time

    started = time.perf_counter()
    parse_parameters("a prompt\n" + line)
    assert time.perf_counter() - started < 0.5


def test_the_pattern_reads_what_a1111_reads_on_random_lines():
    """A1111's pattern, as its code writes it, against ours on random short lines of the characters that matter."""
    import random
    import re

    from avert.output.pnginfo import _PARAM_RE

    a1111 = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    rng = random.Random(7)
    for alphabet in ('ab c:,"\\-/1', 'a :,"\t\\', "ab :,"):
        for _ in range(5000):
            line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
            assert _PARAM_RE.findall(line) == a1111.findall(line), line
    key = "k" * 65  # no infotext has such a key; A1111 reads it, avert does not
    assert a1111.findall(f"{key}: 1") == [(key, "1")] and _PARAM_RE.findall(f"{key}: 1") == []
    assert _PARAM_RE.findall(f"{key[1:]}: 1") == [(key[1:], "1")]


def test_a_last_line_over_the_bound_is_prompt_text():
    from avert.output.pnginfo import MAX_PARAMETERS_LINE

    params = "Steps: 2, Seed: 1, Sampler: Euler, "
    line = params + "x" * (MAX_PARAMETERS_LINE - len(params))
    assert parse_parameters("a\n" + line).get("Steps") == "2"
    assert parse_parameters("a\n" + line + "x").params == () and parse_parameters("a\n" + line + "x").prompt.endswith(
        "xx")
