"""Hostile inputs for `avert serve` and the `avert` command, each with the answer it must get.

`http_cases()` and `cli_cases(folder)` list them; `send` and `run_cli` try one. The red-team tests
(tests/test_redteam.py) run every case against a real server process and the real command, and
`python tools/redteam.py` writes the table of docs/security.md from the same lists, so the page and the
checks cannot disagree. `avert.testing.live` sends them and builds the files they need.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avert.testing.live import ServerProcess, apng, b64, bomb_png, run_cli, run_cli_many, send, small_png

__all__ = ["HttpCase", "CliCase", "http_cases", "cli_cases", "cli_files", "ServerProcess", "send", "run_cli",
           "run_cli_many"]

JSON = {"Content-Type": "application/json"}
TINY = {"width": 32, "height": 32, "steps": 1}  # the embedded model's native size, one step: a valid base


@dataclass(frozen=True)
class HttpCase:
    """One request: method, path, headers, body (JSON value, or bytes sent as they are) and the status it must
    get; `group` and `label` name it in the table."""

    group: str
    label: str
    method: str
    path: str
    body: Any = None
    headers: dict = field(default_factory=lambda: dict(JSON))
    status: int = 422
    raw: bool = False  # body is bytes, sent unchanged

    def data(self) -> bytes | None:
        if self.body is None:
            return None
        return self.body if self.raw else json.dumps(self.body).encode()


@dataclass(frozen=True)
class CliCase:
    """One invocation of the real command and the exit status it must end with (2: what was given is wrong,
    1: the run failed)."""

    group: str
    label: str
    argv: tuple[str, ...]
    status: int = 2


# ---------------------------------------------------------------- HTTP cases

BAD_INT = [("text", "20"), ("fraction", 1.5), ("boolean", True), ("list", [1]), ("object", {}), ("huge", 10**30),
           ("null", None)]
BAD_FLOAT = [("text", "7"), ("boolean", False), ("list", [7.0]), ("object", {"a": 1}), ("1e309 (infinite)", "INF"),
             ("-1e309", "-INF"), ("huge", 1e300)]
BAD_STR = [("number", 5), ("list", ["a"]), ("object", {"a": "b"}), ("boolean", True)]
BAD_BOOL = [("text", "yes"), ("number", 1), ("list", [True]), ("null-like text", "null")]


def _typed_cases(group: str, path: str, base: dict) -> list[HttpCase]:
    """Each request field of avert's schema with each kind of wrong value."""
    from avert.schema import PARAMS

    cases = []
    for param in PARAMS:
        bad = {int: BAD_INT, float: BAD_FLOAT, str: BAD_STR, bool: BAD_BOOL}[param.type]
        for label, value in bad:
            if (value is None and param.default is None) or (param.name == "negative_prompt" and label == "list"):
                continue  # null is this field's default; a list is one negative per image
            if isinstance(value, str) and value in ("INF", "-INF"):
                raw = json.dumps({**base, param.name: 0}).replace(f'"{param.name}": 0', f'"{param.name}": '
                                                                  + value.replace("INF", "1e309")).encode()
                cases.append(HttpCase(group, f"{param.name}: {label}", "POST", path, raw, raw=True))
                continue
            cases.append(HttpCase(group, f"{param.name}: {label}", "POST", path, {**base, param.name: value}))
    return cases


def _range_cases(group: str, path: str, base: dict) -> list[HttpCase]:
    values = [("steps", 0), ("steps", 151), ("steps", -1), ("cfg_scale", -1), ("cfg_scale", 31), ("width", 100),
              ("width", 4096), ("height", 12), ("batch_size", 0), ("batch_size", 17), ("seed", -2), ("seed", 2**32),
              ("sampler", "Euler z"), ("guidance", "magic"), ("clip_skip", 13), ("emphasis", "loud"),
              ("guidance_rescale", 1.5), ("guidance_start", 2), ("prompt", "x" * 8193),
              ("original_size", "1024"), ("negative_original_size", "1024x1024x3"), ("crop_top_left", "a,b"),
              ("negative_target_size", "0x0"), ("empty_negative", "zero"), ("prompt_2", "a dog (not SDXL)"),
              ("mask_blur_y", 3), ("initial_noise_multiplier", 0.5)]
    return [HttpCase(group, f"{k}: {v if not isinstance(v, str) or len(v) < 20 else f'{len(v)} characters'}", "POST",
                     path, {**base, k: v}) for k, v in values]


def native_cases() -> list[HttpCase]:
    path, group = "/v1/generate", "native generate: fields"
    base = {"prompt": "a house", **TINY}
    cases = _typed_cases(group, path, base) + _range_cases("native generate: ranges", path, base)
    g = "native generate: structure"
    cases += [
        HttpCase(g, "unknown field", "POST", path, {**base, "mystery": 1}),
        HttpCase(g, "guidance as an object", "POST", path, {**base, "guidance": {"method": "perp-neg"}}),
        HttpCase(g, "negatives: a number", "POST", path, {**base, "negatives": 5}),
        HttpCase(g, "negatives: 9 entries", "POST", path, {**base, "negatives": ["a"] * 9}),
        HttpCase(g, "negatives: unknown key", "POST", path, {**base, "negatives": [{"text": "a", "x": 1}]}),
        HttpCase(g, "negatives: weight 11", "POST", path, {**base, "negatives": [{"text": "a", "weight": 11}]}),
        HttpCase(g, "negatives: start after end", "POST", path, {**base, "negatives": [{"text": "a", "start": 0.9,
                                                                                          "end": 0.1}]}),
        HttpCase(g, "negatives: text a list", "POST", path, {**base, "negatives": [{"text": ["a"]}]}),
        HttpCase(g, "negatives: nested lists", "POST", path, {**base, "negatives": [[["a"]]]}),
        HttpCase(g, "negative_prompt: list of wrong length", "POST", path, {**base, "negative_prompt": ["a", "b"]}),
        HttpCase(g, "negative_prompt: list of numbers", "POST", path, {**base, "negative_prompt": [1]}),
        HttpCase(g, "model: a path", "POST", path, {**base, "model": "/etc/passwd"}),
        HttpCase(g, "model: traversal", "POST", path, {**base, "model": "../../etc"}),
        HttpCase(g, "model: a list", "POST", path, {**base, "model": ["embedded"]}),
        HttpCase(g, "apg option with cfg", "POST", path, {**base, "guidance": "cfg", "apg_eta": 0.5}),
        HttpCase(g, "negative_scale with gated", "POST", path, {**base, "guidance": "gated", "negative_scale": 3}),
        HttpCase(g, "sigma_min above sigma_max", "POST", path, {**base, "guidance_sigma_min": 5,
                                                               "guidance_sigma_max": 1}),
        HttpCase(g, "wait=maybe", "POST", path + "?wait=maybe", base),
    ]
    return cases + work_cases() + parser_cases()


def work_cases() -> list[HttpCase]:
    """Requests inside every per-field bound whose total work is over the server's budget (default 16)."""
    g, path = "work budget", "/v1/generate"
    return [
        HttpCase(g, "2048x2048, 20 steps", "POST", path, {"prompt": "a", "width": 2048, "height": 2048}),
        HttpCase(g, "1024x1024 batch 4", "POST", path, {"prompt": "a", "width": 1024, "height": 1024,
                                                        "batch_size": 4}),
        HttpCase(g, "512x512, 150 Heun steps, batch 16", "POST", path,
                 {"prompt": "a", "width": 512, "height": 512, "steps": 150, "sampler": "Heun", "batch_size": 16}),
        HttpCase(g, "256x256, 150 steps, 8 negatives", "POST", path,
                 {"prompt": "a", "width": 256, "height": 256, "steps": 150, "negatives": ["n"] * 8}),
        HttpCase(g, "A1111 txt2img {} (512x512, 50 steps)", "POST", "/sdapi/v1/txt2img", {}),
        HttpCase(g, "A1111 n_iter 16 x batch 16 at 256", "POST", "/sdapi/v1/txt2img",
                 {"prompt": "a", "width": 256, "height": 256, "steps": 20, "batch_size": 16, "n_iter": 16}),
        HttpCase(g, "compare 8 columns at 512", "POST", "/v1/compare",
                 {"prompt": "a", "width": 512, "height": 512, "steps": 20, "columns": ["n"] * 8}),
    ]


def parser_cases() -> list[HttpCase]:
    """Prompt bombs: refused by the prompt budget, or (schedule-free) parsed at once."""
    g, path = "prompt bombs", "/v1/generate"
    return [
        HttpCase(g, "910 x '(a:1.1), ' (8190 characters)", "POST", path, {"prompt": "(a:1.1), " * 910, **TINY},
                 status=200),
        HttpCase(g, "910 x '[a:b:3], '", "POST", path, {"prompt": ("[a:b:3], " * 910)[:8192], **TINY}),
        HttpCase(g, "2000 x '[a] ' without commas", "POST", path, {"prompt": ("[a] " * 2000)[:8192], **TINY}),
        HttpCase(g, "'a AND ' x 1365", "POST", path, {"prompt": ("a AND " * 1365)[:8192], **TINY}),
        HttpCase(g, "AND bomb in a negative", "POST", path, {"prompt": "a", "negative_prompt": ("b AND " * 1365)[:8192],
                                                             **TINY}),
        HttpCase(g, "[a|b|...] alternations over 150 steps, 8 negatives", "POST", path,
                 {"prompt": "[a|b|c|d|e|f|g], " * 20 + "x" * 7000, "steps": 150, "width": 32, "height": 32,
                  "negatives": [("[a|b|c|d|e|f|g], " * 20 + "y" * 7000)] * 8}),
        HttpCase(g, "unclosed ( x 4000 with a [", "POST", path, {"prompt": "(" * 4000 + "[a:b:1]", **TINY}),
        HttpCase(g, "unclosed ( x 4000 without [", "POST", path, {"prompt": "(" * 4000, **TINY}, status=200),
        HttpCase(g, "[ x 4000 unclosed", "POST", path, {"prompt": "[" * 4000, **TINY}),
        HttpCase(g, "8190 spaces", "POST", path, {"prompt": " " * 8190, **TINY}, status=200),
    ]


def a1111_cases() -> list[HttpCase]:
    path = "/sdapi/v1/txt2img"
    base = {"prompt": "a house", **TINY}
    g = "A1111 txt2img: fields"
    values = [
        ("sampler_name", 5), ("sampler_name", []), ("sampler_name", "Euler z"), ("sampler_index", {}),
        ("scheduler", {}), ("scheduler", []), ("scheduler", "polyexponential"), ("scheduler", 3),
        ("n_iter", 0), ("n_iter", 17), ("n_iter", "2"), ("n_iter", 1.5), ("override_settings", "x"),
        ("override_settings", []), ("override_settings", {"sd_model_checkpoint": "../../etc/passwd"}),
        ("override_settings", {"sd_model_checkpoint": 5}), ("override_settings", {"unknown_option": 1}),
        ("override_settings", {"CLIP_stop_at_last_layers": 99}), ("override_settings", {"avert_guidance": {}}),
        ("override_settings", {"avert_guidance": "magic"}), ("eta", "x"), ("eta", []),
        ("send_images", "x"), ("enable_hr", "yes"), ("enable_hr", 1), ("tiling", "yes"), ("restore_faces", True), ("styles", ["x"]),
        ("subseed_strength", 0.5), ("script_name", "x"), ("script_args", [1]), ("alwayson_scripts", {"x": {}}),
        ("save_images", True), ("infotext", "x" * 40000), ("infotext", 5), ("infotext", "a\nCFG scale: high, Seed: 1, "
                                                                          "Size: 8x8"),
        ("infotext", "a\nSteps: 2, Seed: 1, Clip skip: 99"), ("firstpass_image", "x"), ("refiner_checkpoint", "x"),
        ("refiner_switch_at", 0.5), ("comments", {"a": 1}), ("s_churn", 1), ("s_noise", 0.5),
        ("seed_resize_from_h", 64), ("negative_prompt", ["a", "b"]), ("negative_prompt", 5),
        ("steps", "20"), ("width", 100000), ("batch_size", 10**9), ("cfg_scale", [7]), ("seed", "x"),
        ("prompt", ["a"]), ("prompt", "x" * 8193),
    ]
    cases = [HttpCase(g, f"{k}: {json.dumps(v)[:40]}", "POST", path, {**base, k: v}) for k, v in values]
    hires = {**base, "enable_hr": True, "denoising_strength": 0.5}
    cases += [HttpCase("A1111 txt2img: hires fix", f"{k}: {json.dumps(v)[:40]}", "POST", path, {**hires, k: v})
              for k, v in (("hr_scale", 100), ("hr_scale", "2"), ("hr_resize_x", 10**6), ("hr_resize_x", -1),
                           ("hr_upscaler", "x"), ("hr_upscaler", 5), ("hr_second_pass_steps", 10**6),
                           ("hr_prompt", "x" * 8193), ("hr_prompt", ("[a:b:3], " * 910)[:8190]),
                           ("hr_negative_prompt", ["a"]), ("hr_checkpoint_name", "../../etc/passwd"),
                           ("hr_sampler_name", "Euler z"), ("hr_scheduler", 5), ("firstphase_width", 10**6),
                           ("denoising_strength", 0), ("denoising_strength", "0.5"))]
    cases.append(HttpCase("A1111 txt2img: hires fix", "a valid hires fix of one step each", "POST", path, hires,
                          status=200))
    cases.append(HttpCase(g, "eta 1.5 with DPM++ 2M SDE (0 to 1 only)", "POST", path,
                          {**base, "sampler_name": "DPM++ 2M SDE", "eta": 1.5}))
    cases.append(HttpCase(g, "infotext of 32768 word characters (quadratic in A1111's pattern)", "POST", path,
                          {**base, "infotext": "a\n" + "0" * 32766}, status=200))
    return cases + [HttpCase("A1111 txt2img: fields", f"{k}: 1e309 (infinite)", "POST", path,
                             json.dumps({**base, k: 0}).replace(f'"{k}": 0', f'"{k}": 1e309').encode(), raw=True)
                    for k in ("cfg_scale", "s_min_uncond", "eta")] + [
        HttpCase("A1111 txt2img: fields", "cfg_scale: [1e309] (infinite in a list)", "POST", path,
                 json.dumps({**base, "cfg_scale": 0}).replace('"cfg_scale": 0', '"cfg_scale": [1e309]').encode(),
                 raw=True),
        HttpCase("A1111 txt2img: fields", "override_settings: {avert_guidance: -1e309}", "POST", path,
                 json.dumps({**base, "override_settings": {"avert_guidance": 0}}).replace(
                     '"avert_guidance": 0', '"avert_guidance": -1e309').encode(), raw=True)]


def img2img_cases() -> list[HttpCase]:
    """/sdapi/v1/img2img and the native init_image: images that are not one, too big, fetched, or too many."""
    path, g = "/sdapi/v1/img2img", "A1111 img2img: fields"
    image = b64(small_png())
    base = {"prompt": "a house", **TINY, "init_images": [image]}
    values = [
        ("init_images", None), ("init_images", []), ("init_images", [image, image]), ("init_images", image),
        ("init_images", [5]), ("init_images", ["http://127.0.0.1:9/a.png"]), ("init_images", ["file:///etc/passwd"]),
        ("init_images", [b64(b"not an image")]), ("init_images", [b64(bomb_png())]),
        ("init_images", [b64(bomb_png(5000, 5000))]), ("init_images", ["data:image/png;base64,%%%"]),
        ("init_images", ["A" * 8_000_000]), ("resize_mode", 4), ("resize_mode", -1), ("resize_mode", "crop"),
        ("resize_mode", True), ("denoising_strength", 2), ("denoising_strength", -0.1), ("denoising_strength", "0.5"),
        ("latent_mask", "x"), ("initial_noise_multiplier", 2), ("steps", 0), ("n_iter", 0),
        ("mask", 5), ("mask", [image]), ("mask", "http://127.0.0.1:9/m.png"), ("mask", b64(bomb_png())),
        ("mask", b64(b"not an image")), ("mask", {"width": 1, "height": 1, "pixels": "AA"}),
    ]
    inpainting = [("mask_blur", 65), ("mask_blur", -1), ("mask_blur", 2.5), ("mask_blur_x", 65),
                  ("mask_blur_y", "3"),
                  ("inpainting_fill", 4), ("inpainting_fill", "fill"), ("inpainting_mask_invert", 2),
                  ("inpaint_full_res", "yes"), ("inpaint_full_res_padding", 10**6), ("mask_round", "no")]
    cases = [HttpCase(g, f"{k}: {json.dumps(v)[:40]}", "POST", path, {**base, k: v}) for k, v in values]
    cases += [HttpCase(g, f"with a mask, {k}: {json.dumps(v)[:40]}", "POST", path, {**base, "mask": image, k: v})
              for k, v in inpainting]
    native = {"prompt": "a house", **TINY}
    cases += [HttpCase("native: fields", f"init_image: {json.dumps(v)[:40]}", "POST", "/v1/generate",
                       {**native, "init_image": v}) for v in (5, [image], "http://127.0.0.1:9/a.png",
                                                              b64(bomb_png()), {"width": 1},
                                                              {"width": 1, "height": 1, "pixels": "AA"})]
    cases += [HttpCase("native: fields", f"mask: {json.dumps(v)[:40]}", "POST", "/v1/generate",
                       {**native, "init_image": image, "mask": v}) for v in (5, "http://127.0.0.1:9/m.png",
                                                                             {"width": 1, "height": 1, "pixels": "AA"})]
    cases += [HttpCase("native: fields", "a mask without an init image", "POST", "/v1/generate",
                       {**native, "mask": image})]
    cases += [HttpCase("native: fields", "strength without an init image", "POST", "/v1/generate",
                       {**native, "strength": 0.5})]
    return cases + [HttpCase(g, "a valid img2img of one step", "POST", path, base, status=200),
                    HttpCase(g, "a valid inpainting of one step", "POST", path, {**base, "mask": image}, status=200)]


def json_cases() -> list[HttpCase]:
    g = "JSON"
    raws = [
        ("truncated", b'{"prompt": '), ("NaN literal", b'{"prompt": "a", "cfg_scale": NaN}'),
        ("Infinity literal", b'{"prompt": "a", "cfg_scale": Infinity}'), ("-Infinity", b'{"cfg_scale": -Infinity}'),
        ("lone surrogate in a value", b'{"prompt": "a\\ud800b"}'), ("lone surrogate in a key", b'{"\\udc00": 1}'),
        ("lone surrogate in a negative", b'{"prompt": "a", "negative_prompt": "\\udfff"}'),
        ("nested 40 deep", b'{"prompt": ' + b"[" * 40 + b"]" * 40 + b"}"),
        ("nested 100000 deep", b"[" * 100000), ("nested objects 5000 deep", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("top-level array", b"[1, 2]"), ("top-level string", b'"prompt"'), ("top-level number", b"5"),
        ("top-level null", b"null"), ("empty body with a JSON type", b""), ("invalid UTF-8", b'{"prompt": "\xff\xfe"}'),
("trailing garbage", b'{"prompt": "a"} x'),
        ("single quotes", b"{'prompt': 'a'}"), ("comment", b'{"prompt": "a" /* x */}'),
        ("control character in a string", b'{"prompt": "a\x01"}'),
    ]
    cases = []
    for path in ("/v1/generate", "/sdapi/v1/txt2img", "/v1/compare", "/sdapi/v1/options", "/sdapi/v1/png-info"):
        short = path.rsplit("/", 1)[-1]
        cases += [HttpCase(f"{g} ({short})", label, "POST", path, raw, raw=True) for label, raw in raws]
    return cases


def header_cases() -> list[HttpCase]:
    g, path = "headers and origin", "/v1/generate"
    body = {"prompt": "a", **TINY, "steps": 1}
    return [
        HttpCase(g, "Host: attacker.example (DNS rebinding)", "GET", "/v1/status",
                 headers={"Host": "attacker.example"}, status=400),
        HttpCase(g, "Host: attacker.example on POST", "POST", path, body, headers={**JSON, "Host": "attacker.example"},
                 status=400),
        HttpCase(g, "Host: 127.0.0.1.nip.io", "GET", "/", headers={"Host": "127.0.0.1.nip.io"}, status=400),
        HttpCase(g, "Host: empty", "GET", "/v1/status", headers={"Host": ""}, status=400),
        HttpCase(g, "Origin: http://evil.example on POST", "POST", path, body,
                 headers={**JSON, "Origin": "http://evil.example"}, status=403),
        HttpCase(g, "Origin: null on POST", "POST", path, body, headers={**JSON, "Origin": "null"}, status=403),
        HttpCase(g, "Origin: other port on DELETE", "DELETE", "/v1/jobs/x",
                 headers={"Origin": "http://127.0.0.1:1"}, status=403),
        HttpCase(g, "Origin: evil on interrupt", "POST", "/sdapi/v1/interrupt", headers={"Origin": "http://evil.example"},
                 status=403),
        HttpCase(g, "Origin: evil on options", "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "embedded"},
                 headers={**JSON, "Origin": "https://evil.example"}, status=403),
        HttpCase(g, "Content-Type: text/plain (a simple cross-site request)", "POST", path, body,
                 headers={"Content-Type": "text/plain"}, status=415),
        HttpCase(g, "Content-Type: form", "POST", path, body, headers={"Content-Type": "application/x-www-form-urlencoded"},
                 status=415),
        HttpCase(g, "Content-Type: multipart", "POST", "/sdapi/v1/png-info", {"image": "x"},
                 headers={"Content-Type": "multipart/form-data; boundary=x"}, status=415),
        HttpCase(g, "Content-Type: missing", "POST", "/sdapi/v1/txt2img", body, headers={}, status=415),
        HttpCase(g, "Content-Type: text/json", "POST", "/sdapi/v1/options", {}, headers={"Content-Type": "text/json"},
                 status=415),
        HttpCase(g, "Content-Length over the limit", "POST", path, b"{}",
                 headers={**JSON, "Content-Length": str(10**12)}, raw=True, status=413),
        HttpCase(g, "body of 17 MiB", "POST", path, b'{"prompt": "' + b"a" * (17 * 2**20) + b'"}', raw=True, status=413),
    ]


def png_cases() -> list[HttpCase]:
    g, path = "png-info", "/sdapi/v1/png-info"
    return [
        HttpCase(g, label, "POST", path, body) for label, body in (
            ("not base64", {"image": "not base64!"}), ("an http URL", {"image": "http://127.0.0.1:22/x.png"}),
            ("a file URL", {"image": "file:///etc/passwd"}), ("a number", {"image": 5}), ("a list", {"image": [b64(b"x")]}),
            ("null", {"image": None}), ("missing", {}), ("unknown field", {"image": b64(small_png()), "x": 1}),
            ("a text file", {"image": b64(b"hello")}), ("a GIF", {"image": b64(b"GIF89a" + b"\0" * 20)}),
            ("decompression bomb (100000 x 100000)", {"image": b64(bomb_png())}),
            ("bomb as a data URL", {"image": "data:image/png;base64," + b64(bomb_png(60000, 60000))}),
            ("APNG announcing 2000 frames of 128x128", {"image": b64(apng())}),
            ("truncated PNG", {"image": b64(small_png()[:40])}),
            ("bad avert chunk", {"image": b64(small_png({"avert": "{not json"}))}),
            ("avert chunk a list", {"image": b64(small_png({"avert": "[1, 2]"}))}),
            ("empty string", {"image": ""}))
    ] + [HttpCase(g, "a PNG with parameters (allowed)", "POST", path,
                  {"image": b64(small_png({"parameters": "a\nSteps: 2, Seed: 1"}))}, status=200),
         HttpCase(g, "parameters line of 1 MiB of spaces (quadratic in A1111's pattern)", "POST", path,
                  {"image": b64(small_png({"parameters": "a\nb" + " " * (1 << 20)}))}, status=200),
         HttpCase(g, "parameters line of 1 MiB of word characters", "POST", path,
                  {"image": b64(small_png({"parameters": "a\n" + "0" * (1 << 20)}))}, status=200)]


def other_cases() -> list[HttpCase]:
    g = "routes, jobs, options, files"
    return [
        HttpCase(g, "GET unknown job", "GET", "/v1/jobs/0123", status=404),
        HttpCase(g, "GET job id of 5000 characters", "GET", "/v1/jobs/" + "a" * 5000, status=404),
        HttpCase(g, "DELETE unknown job", "DELETE", "/v1/jobs/nope", status=404),
        HttpCase(g, "cancel unknown job", "POST", "/v1/jobs/nope/cancel", status=404),
        HttpCase(g, "job id traversal", "GET", "/v1/jobs/..%2F..%2Fetc%2Fpasswd", status=404),
        HttpCase(g, "static traversal", "GET", "/static/..%2f..%2fapp.py", status=404),
        HttpCase(g, "static unknown file", "GET", "/static/app.py", status=404),
        HttpCase(g, "docs traversal", "GET", "/docs/..%2f..%2f..%2fetc%2fpasswd", status=404),
        HttpCase(g, "docs unknown file", "GET", "/docs/redoc.standalone.js", status=404),
        HttpCase(g, "PUT generate", "PUT", "/v1/generate", {"prompt": "a"}, status=405),
        HttpCase(g, "GET txt2img", "GET", "/sdapi/v1/txt2img", status=405),
        HttpCase(g, "unknown route", "GET", "/sdapi/v1/nothing", status=404),
        HttpCase(g, "options: a name of 200 characters", "POST", "/sdapi/v1/options", {"x" * 200: 1}),
        HttpCase(g, "options: a value of 9000 bytes", "POST", "/sdapi/v1/options", {"kept": "x" * 9000}),
        HttpCase(g, "options: 600 options", "POST", "/sdapi/v1/options", {f"k{i}": i for i in range(600)}),
        HttpCase(g, "options: eta_ancestral 1.5", "POST", "/sdapi/v1/options", {"eta_ancestral": 1.5}),
        HttpCase(g, "options: clip skip 99", "POST", "/sdapi/v1/options", {"CLIP_stop_at_last_layers": 99}),
        HttpCase(g, "options: samples_save true", "POST", "/sdapi/v1/options", {"samples_save": True}),
        HttpCase(g, "options: model traversal", "POST", "/sdapi/v1/options", {"sd_model_checkpoint": "../../etc"}),
        HttpCase(g, "options: model as a number", "POST", "/sdapi/v1/options", {"sd_model_checkpoint": 5}),
        HttpCase(g, "options: model as an absolute path", "POST", "/sdapi/v1/options",
                 {"sd_model_checkpoint": "/root"}),
        HttpCase(g, "compare: no columns", "POST", "/v1/compare", {"prompt": "a", **TINY}),
        HttpCase(g, "compare: 9 columns", "POST", "/v1/compare", {"prompt": "a", **TINY, "columns": ["n"] * 9}),
        HttpCase(g, "compare: columns a string", "POST", "/v1/compare", {"prompt": "a", **TINY, "columns": "n"}),
        HttpCase(g, "compare: a negative besides columns", "POST", "/v1/compare",
                 {"prompt": "a", **TINY, "columns": ["n"], "negative_prompt": "x"}),
        HttpCase(g, "compare: column weight 99", "POST", "/v1/compare",
                 {"prompt": "a", **TINY, "columns": [{"text": "n", "weight": 99}]}),
        HttpCase(g, "compare: column bomb", "POST", "/v1/compare",
                 {"prompt": "a", **TINY, "columns": [("[a:b:3], " * 910)[:8192]]}),
    ]


def http_cases() -> list[HttpCase]:
    """Every HTTP case, for a server on loopback without a key, with `--rate-limit 0` and the default budget."""
    cases = (native_cases() + a1111_cases() + img2img_cases() + json_cases() + header_cases() + png_cases() + other_cases())
    labels = [(c.group, c.label) for c in cases]
    assert len(labels) == len(set(labels)), "case labels must be distinct"
    return cases


# ---------------------------------------------------------------- CLI cases


def cli_files(folder: Path) -> dict[str, Path]:
    """The files the CLI cases read, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"bomb.png": bomb_png(), "apng.png": apng(), "truncated.png": small_png()[:40], "plain.png": small_png(),
             "bad-record.png": small_png({"avert": "{oops"}), "text.png": b"not an image",
             "garbage.safetensors": b"\x00" * 64, "model.ckpt": b"\x80\x04K\x01.", "keys.txt": b"# no keys\n"}
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    fifo = folder / "fifo.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    paths["fifo.png"] = fifo
    (folder / "empty-dir").mkdir(exist_ok=True)
    paths["empty-dir"] = folder / "empty-dir"
    (folder / "emb").mkdir(exist_ok=True)
    paths["emb"] = folder / "emb"
    return paths


def cli_cases(folder: Path) -> list[CliCase]:
    f = {k: str(v) for k, v in cli_files(folder).items()}
    out = str(folder / "out.png")
    g = "generate: flags"
    gen = ("generate", "a house", "-q", "-o", out)
    cases = [CliCase(g, " ".join(a), (*gen, *a)) for a in (
        ("--steps", "0"), ("--steps", "x"), ("--steps", "151"), ("--sampler", "Euler z"), ("-W", "100"),
        ("-W", "100000"), ("--seed", "-5"), ("--seed", str(2**33)), ("--cfg-scale", "31"), ("--cfg-scale", "nan"),
        ("--cfg-scale", "inf"), ("-b", "0"), ("-b", "17"), ("--negative-weight", "0.5"),
        ("-n", "x", "--negative-window", "0.9:0.1"), ("--guidance", "magic"), ("--clip-skip", "13"),
        ("--emphasis", "loud"), ("--guidance", "gated", "-n", "x", "--negative-scale", "3"),
        ("--device", "gpu"), ("--precision", "fp16"), ("--apg-eta", "0.5"))]
    g = "generate: prompts"
    cases += [CliCase(g, label, (*gen[:1], prompt, *gen[2:], *extra)) for label, prompt, extra in (
        ("prompt of 8193 characters", "x" * 8193, ()), ("910 x '[a:b:3], '", ("[a:b:3], " * 910)[:8190], ()),
        ("'a AND ' x 1365", ("a AND " * 1365)[:8190], ()), ("9 negatives", "a", sum((("-n", "x"),) * 9, ())),
        ("empty prompt", "", ()))]
    g = "generate: files"
    cases += [CliCase(g, label, (*gen, *extra), status) for label, extra, status in (
        ("--model missing", ("--model", str(folder / "missing")), 2), ("--model /dev/null", ("--model", "/dev/null"), 2),
        ("--model a FIFO", ("--model", f["fifo.png"]), 2), ("--model a folder without a model", ("--model", f["empty-dir"]), 2),
        ("--model garbage .safetensors", ("--model", f["garbage.safetensors"]), 2),
        ("--model a pickle without --allow-pickle", ("--model", f["model.ckpt"]), 2),
        ("--embeddings missing", ("--embeddings", str(folder / "nope")), 2),
        ("--embeddings a file", ("--embeddings", f["plain.png"]), 2),
        ("--from missing", ("--from", str(folder / "none.png")), 2), ("--from a text file", ("--from", f["text.png"]), 2),
        ("--from a PNG without parameters", ("--from", f["plain.png"]), 2), ("--from a bomb", ("--from", f["bomb.png"]), 2),
        ("--from a FIFO", ("--from", f["fifo.png"]), 2))]
    cases += [CliCase(g, "-o inside a file (/etc/passwd/x.png)", ("generate", "a house", "-q", "--steps", "1", "-o",
                                                                  "/etc/passwd/x.png"), 1),
              CliCase(g, "-o a folder under a file", ("generate", "a house", "-q", "--steps", "1", "-o",
                                                      f["plain.png"] + "/sub"), 1)]
    g = "info, prompt, compare"
    cases += [CliCase(g, label, argv) for label, argv in (
        ("info missing", ("info", str(folder / "none.png"))), ("info a folder", ("info", f["empty-dir"])),
        ("info a FIFO", ("info", f["fifo.png"])), ("info a decompression bomb", ("info", f["bomb.png"])),
        ("info an APNG of 2000 frames", ("info", f["apng.png"])), ("info truncated", ("info", f["truncated.png"])),
        ("info not an image", ("info", f["text.png"])), ("info /dev/zero", ("info", "/dev/zero")),
        ("info a bad avert chunk", ("info", f["bad-record.png"])),
        ("prompt --steps 0", ("prompt", "a", "--steps", "0")),
        ("prompt bomb", ("prompt", ("[a:b:3], " * 910)[:8190])),
        ("compare 9 negatives", ("compare", "a", *sum((("-n", "x"),) * 9, ()), "-o", out)),
        ("compare --steps 0", ("compare", "a", "-n", "x", "--steps", "0")))]
    g = "serve"
    cases += [CliCase(g, label, ("serve", *argv)) for label, argv in (
        ("--host 0.0.0.0 without a key", ("--host", "0.0.0.0")), ("--api-key of 3 characters", ("--api-key", "abc")),
        ("--api-key-file missing", ("--api-key-file", str(folder / "nokeys"))),
        ("--api-key-file without keys", ("--api-key-file", f["keys.txt"])),
        ("--port 0", ("--port", "0")), ("--port 70000", ("--port", "70000")),
        ("--models-dir missing", ("--models-dir", str(folder / "nomodels"))), ("--max-work 0", ("--max-work", "0")),
        ("--rate-limit -1", ("--rate-limit", "-1")), ("--model missing", ("--model", str(folder / "nomodel"))))]
    g = "other commands"
    cases += [CliCase(g, label, argv) for label, argv in (
        ("unknown command", ("fly",)), ("train --steps 0", ("train", "--steps", "0")),
        ("eval negatives --device gpu", ("eval", "negatives", "--device", "gpu")),
        ("bench nothing", ("bench", "nothing")))]
    return cases


