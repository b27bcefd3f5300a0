"""`avert serve` over real HTTP: the unchanged `webuiapi` client, a client that disconnects, and the page in
Debian's chromium (headless, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image

from avert.pipeline.generate import generate
from avert.server.app import create_app
from avert.server.config import ServerConfig
from serving import running_server, wait_until

CHROMIUM = os.environ.get("AVERT_CHROMIUM", "/usr/bin/chromium")
# Playwright adds --headless and a fresh temporary --user-data-dir itself.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def slow_render(request, components, **kw):
    """The real engine, 20 ms per step, so that a test can act while a job runs."""
    on_step = kw["on_step"]

    def step(event):
        on_step(event)
        time.sleep(0.02)

    return generate(request, components, **{**kw, "on_step": step})


@pytest.fixture(scope="module")
def server(tiny_folder, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_folder, models / "tiny-sd")
    with running_server(create_app(ServerConfig(models_dir=models), render=slow_render)) as url:
        yield url


def test_webuiapi_client_works_unchanged(server):
    port = int(server.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=4)
    result = api.txt2img(prompt="a house on a hill", negative_prompt="green tones", seed=21, width=32, height=32,
                         batch_size=2)
    assert [im.size for im in result.images] == [(32, 32), (32, 32)]
    assert result.info["all_negative_prompts"] == ["green tones"] * 2 and result.info["all_seeds"] == [21, 22]
    assert result.parameters["negative_prompt"] == "green tones"
    assert "DPM++ 2M Karras" in api.util_get_sampler_names()
    assert sorted(api.util_get_scheduler_names()) == ["automatic", "exponential", "karras", "sgm_uniform", "uniform"]
    assert api.util_get_model_names() == ["embedded", "tiny-sd"]
    assert api.util_get_current_model() == "embedded"
    api.util_set_model("tiny-sd")
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd"
    api.set_options({"sd_model_checkpoint": "embedded"})
    info = api.png_info(result.images[1])
    assert info.info.startswith("a house on a hill\nNegative prompt: green tones")
    assert info.json["parameters"]["Seed"] == "22"
    assert api.get_progress()["state"]["job_count"] == 0


def test_webuiapi_progress_and_interrupt(server):
    port = int(server.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=150)
    outcome = {}

    def long_job():
        try:
            api.txt2img(prompt="a boat", width=32, height=32, seed=1)
            outcome["result"] = "finished"
        except RuntimeError as error:
            outcome["result"] = error.args

    thread = threading.Thread(target=long_job)
    thread.start()
    progress = wait_until(lambda: (p := api.get_progress())["progress"] > 0 and p)
    assert progress["state"]["sampling_steps"] == 150 and progress["state"]["job"]
    api.interrupt()
    thread.join(60)
    status, text = outcome["result"]
    assert status == 409 and "interrupted" in text
    after = wait_until(lambda: requests.get(f"{server}/v1/jobs/{progress['state']['job']}?images=false").json())
    assert after["status"] == "cancelled" and after["progress"]["step"] < 150
    assert api.txt2img(prompt="again", width=32, height=32, steps=2).image.size == (32, 32)


def test_a_client_that_disconnects_cancels_its_job_and_the_server_goes_on(server):
    body = b'{"prompt": "a tree", "steps": 150, "width": 32, "height": 32}'
    with socket.create_connection(("127.0.0.1", int(server.rsplit(":", 1)[1]))) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        job_id = wait_until(lambda: requests.get(f"{server}/sdapi/v1/progress").json()["state"]["job"])
    job = wait_until(lambda: (j := requests.get(f"{server}/v1/jobs/{job_id}?images=false").json())["status"]
                     != "running" and j)
    assert job["status"] == "cancelled" and job["progress"]["step"] < 150
    assert requests.get(f"{server}/v1/status").json()["workers"]["embedded"] is True
    r = requests.post(f"{server}/v1/generate", json={"prompt": "still here", "steps": 2, "width": 32, "height": 32})
    assert r.status_code == 200


@pytest.mark.slow
def test_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    png = tmp_path / "made.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            expect(page.locator("#sampler option")).not_to_have_count(0)
            page.fill("#prompt", "a house on a hill")
            page.fill("#negatives .neg-text", "green tones")
            page.fill("#steps", "6")
            page.fill("#seed", "33")
            page.fill("#batch_size", "2")
            page.click("#generate")
            images = page.locator("#gallery img")
            expect(images).to_have_count(2, timeout=60_000)
            assert page.locator("#progress").evaluate("el => el.value") == 1
            assert "seed 33, negative: green tones" in page.locator("#gallery figcaption").all_inner_texts()[0]
            assert page.locator("#gallery img").first.evaluate("img => img.naturalWidth") == 32
            page.click("#add-negative")
            page.locator("#negatives .neg-text").nth(1).fill("sun")
            page.fill("#batch_size", "1")
            page.check("#map")
            page.click("#compare")
            # 3 images, then a map and a pixel change for each of the 2 negatives
            expect(page.locator("#compare-view img")).to_have_count(7, timeout=60_000)
            headers = page.locator("#compare-view thead th").all_inner_texts()
            assert headers[1:] == ["No negative prompt", "Negative prompt: green tones", "Negative prompt: sun"]
            assert page.locator("#compare-view tr.map th").inner_text() == "seed 33: where the negative acted"
            assert page.locator("#compare-view tr.difference img").count() == 2
            data = page.locator("#gallery img").first.get_attribute("src").split(",", 1)[1]
            png.write_bytes(__import__("base64").b64decode(data))
            page.set_input_files("#file", str(png))  # its parameters, read back into the text box
            expect(page.locator("#infotext")).to_have_value(re.compile("Negative prompt: green tones"), timeout=30_000)
            expect(page.locator("#infotext")).to_have_value(re.compile("Seed: 33"))
            page.click("#img2img summary")
            page.set_input_files("#init-image", str(png))  # img2img from the image just made
            expect(page.locator("#init-hint")).to_contain_text("img2img from made.png")
            page.fill("#strength", "0.5")
            page.select_option("#resize_mode", "crop and resize")
            page.fill("#eta", "0")
            page.click("#generate")
            expect(images).to_have_count(3, timeout=60_000)
            made = page.locator("#gallery img").first.get_attribute("title")
            assert "Denoising strength: 0.5" in made and "Resize mode: crop and resize" in made and "Eta: 0.0" in made
            hole = np.zeros((32, 32), np.uint8)
            hole[8:24, 8:24] = 255
            Image.fromarray(hole).save(tmp_path / "hole.png")
            page.set_input_files("#mask", str(tmp_path / "hole.png"))  # inpainting the same image
            expect(page.locator("#mask-settings")).to_be_visible()
            page.fill("#mask_blur", "2")
            page.select_option("#inpainting_fill", "latent noise")
            page.fill("#initial_noise_multiplier", "0.8")
            page.click("#generate")
            expect(images).to_have_count(4, timeout=60_000)
            made = page.locator("#gallery img").first.get_attribute("title")
            assert all(key in made for key in ("Mask blur: 2", "Masked content: latent noise", "Noise multiplier: 0.8"))
            page.click("#clear-mask")
            expect(page.locator("#mask-settings")).to_be_hidden()
            page.click("#clear-init")
            page.fill("#eta", "")
            page.fill("#steps", "0")
            page.click("#generate")
            expect(page.locator("#error")).to_contain_text("steps: 0 is not allowed", timeout=30_000)
            page.fill("#steps", "6")
            page.select_option("#negatives_rule", "joined")  # the two negatives as A1111's one text
            page.click("#generate")
            expect(images).to_have_count(5, timeout=60_000)
            made = page.locator("#gallery img").first.get_attribute("title")
            assert "Negative prompt: green tones, sun" in made and "Negatives rule: joined" in made
            page.select_option("#negatives_rule", "")
            page.select_option("#guidance", "tangential")  # a diffusers guider, from the schema's choices
            page.click("#generate")
            expect(images).to_have_count(6, timeout=60_000)
            assert "Guidance: tangential" in page.locator("#gallery img").first.get_attribute("title")
            page.select_option("#guidance", "")
            page.click("#hires summary")
            page.check("#enable_hr")  # the hires fix: 32 -> 48 pixels, its own second-pass negative
            page.fill("#hr_scale", "1.5")
            page.fill("#hr_negative_prompt", "sun")
            page.fill("#strength", "0.5")
            page.click("#generate")
            expect(images).to_have_count(7, timeout=90_000)
            made = page.locator("#gallery img").first.get_attribute("title")
            assert "Hires upscale: 1.5" in made and "Hires negative prompt: sun" in made
            assert page.locator("#gallery img").first.evaluate("img => img.naturalWidth") == 48
        finally:
            browser.close()
    assert Image.open(png).size == (32, 32)


def _sent(page, click: str) -> dict:
    """Click `click` and return the JSON body of the job request the page sends."""
    with page.expect_request(re.compile(r"/v1/(generate|compare)\?wait=false")) as sent:
        page.click(click)
    return sent.value.post_data_json


def _unnamed_controls(page) -> list[str]:
    """Lines of the page's accessibility tree that are controls without an accessible name."""
    roles = ("textbox", "spinbutton", "combobox", "checkbox", "button", "link")
    tree = page.locator("body").aria_snapshot()
    return [line for line in tree.splitlines() if re.match(rf"\s*- ({'|'.join(roles)})\s*(\[.*\])?:?\s*$", line)]


@pytest.mark.slow
def test_page_is_a_workbench_for_negatives(server, tmp_path):
    """Every control of the native API, each sent as the request field it names; negatives with weights and windows;
    presets on the server; history across reloads; an infotext pasted into the form; an error beside its field;
    Ctrl+Enter; a live preview and cancel; a download with metadata; 1280x800 and a phone's width; accessible names."""
    from playwright.sync_api import expect, sync_playwright

    schema = requests.get(server + "/v1/schema").json()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server + "/")
            expect(page.locator("#sampler option")).not_to_have_count(0)
            for box in page.locator("details.group").all():
                box.evaluate("d => d.open = true")
            page.check("#enable_hr")  # the hires fields show with it
            page.select_option("#guidance", "pag")  # so do a method's own options
            # every declared field has a control of that id with an accessible name, and none is nameless
            unnamed = page.evaluate("""names => names.filter(n => { const e = document.getElementById(n);
                return !e || !(e.labels && e.labels.length && e.labels[0].textContent.trim()) })""",
                                    [q["name"] for q in schema["params"] if q["name"] != "negative_prompt"])
            assert unnamed == []
            assert _unnamed_controls(page) == []
            page.uncheck("#enable_hr")
            page.select_option("#guidance", "")
            assert "32x32 model of a small procedural world" in page.locator("#model-hint").inner_text()  # before an image

            # several negatives, each with its weight and window; a method and its option; NAG; the request as sent
            page.fill("#prompt", "a red house on a hill")
            page.fill("#negatives .neg-text", "green tones")
            page.click("#add-negative")
            row = page.locator("#negatives .negative").nth(1)
            row.locator(".neg-text").fill("sun")
            row.locator(".neg-weight").fill("0.5")
            row.locator(".neg-start").fill("0.25")
            for field, value in (("#steps", "4"), ("#seed", "7"), ("#cfg_scale", "6")):
                page.fill(field, value)
            page.select_option("#sampler", "DDIM")
            page.select_option("#schedule_type", "SGM Uniform")
            page.select_option("#guidance", "apg")
            expect(page.locator("#apg_eta")).to_be_visible()
            expect(page.locator("#negative_scale")).to_be_hidden()  # apg guides with cfg_scale alone
            expect(page.locator("#posterior_prior")).to_be_hidden()
            page.fill("#apg_eta", "0.5")
            page.select_option("#negatives_rule", "mean")
            page.fill("#nag_scale", "2")
            page.fill("#clip_skip", "2")
            body = _sent(page, "#generate")
            assert body["negatives"] == ["green tones", {"text": "sun", "weight": 0.5, "start": 0.25, "end": 1}]
            assert {k: body[k] for k in ("guidance", "apg_eta", "negatives_rule", "nag_scale", "clip_skip", "steps",
                                         "seed", "cfg_scale", "sampler", "schedule_type")} == {
                "guidance": "apg", "apg_eta": 0.5, "negatives_rule": "mean", "nag_scale": 2, "clip_skip": 2,
                "steps": 4, "seed": 7, "cfg_scale": 6, "sampler": "DDIM", "schedule_type": "SGM Uniform"}
            assert not set(body) & {"posterior_prior", "enable_hr", "strength", "mask_blur", "prompt_2", "nag_tau"}
            images = page.locator("#gallery figure")
            expect(images).to_have_count(1, timeout=60_000)
            made = images.first.locator("img").get_attribute("title")
            assert all(k in made for k in ("Guidance: apg", "APG eta: 0.5", "NAG scale: 2", "Negatives rule: mean",
                                           "Schedule type: SGM Uniform"))
            assert images.first.locator("pre").text_content() == made  # the full infotext, beside the image
            assert images.first.locator("img").evaluate("i => i.getBoundingClientRect().width") >= 192  # 32 px, shown big
            assert images.first.locator("img").evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
            link = images.first.locator("a[download]")
            assert link.get_attribute("download") == "avert-7.png"
            with page.expect_download() as download:
                link.click()
            saved = tmp_path / "downloaded.png"
            download.value.save_as(saved)
            assert "APG eta: 0.5" in Image.open(saved).text["parameters"]  # the PNG carries its metadata

            # presets of negatives, kept by the server; applied after a reload
            page.fill("#preset-name", "sky and green")
            page.click("#save-preset")
            expect(page.locator("#preset option")).to_have_count(2)
            page.fill("#preset-name", "../etc/passwd")
            page.click("#save-preset")
            expect(page.locator("#error")).to_contain_text("name:")
            assert page.locator("#preset-name").get_attribute("aria-invalid") == "true"
            page.reload()
            expect(page.locator("#gallery figure")).to_have_count(1)  # this browser's history
            page.select_option("#preset", "sky and green")
            expect(page.locator("#negatives .neg-text")).to_have_count(2)
            assert page.locator("#negatives .neg-weight").nth(1).input_value() == "0.5"
            assert page.locator("#negatives .neg-start").nth(1).input_value() == "0.25"
            assert page.locator("#negatives_rule").input_value() == "mean"
            assert page.locator("#guidance").input_value() == "apg"
            page.click("#delete-preset")
            expect(page.locator("#preset option")).to_have_count(1)

            # an error beside the field it names, and Ctrl+Enter
            page.locator("#negatives .neg-weight").first.fill("99")
            page.fill("#steps", "3")
            page.locator("#prompt").press("Control+Enter")
            note = page.locator("#negatives .negative").first.locator(".field-error")
            expect(note).to_contain_text("negatives[0].weight: 99", timeout=30_000)
            assert page.locator("#negatives .neg-weight").first.get_attribute("aria-invalid") == "true"
            page.locator("#negatives .neg-weight").first.fill("1")
            page.locator("#prompt").press("Control+Enter")
            expect(page.locator("#gallery figure")).to_have_count(2, timeout=60_000)
            expect(page.locator(".field-error")).to_have_count(0)

            # an infotext pasted into the form
            page.fill("#infotext", "a boat at sea\nNegative prompt: clouds\nSteps: 9, Sampler: Euler, CFG scale: 5, "
                      "Seed: 12, Size: 32x32, Guidance: perp-neg")
            page.click("#fill")
            expect(page.locator("#prompt")).to_have_value("a boat at sea")
            assert [page.locator("#negatives .neg-text").nth(i).input_value()
                    for i in range(page.locator("#negatives .neg-text").count())] == ["clouds"]
            assert page.locator("#steps").input_value() == "9" and page.locator("#seed").input_value() == "12"
            assert page.locator("#sampler").input_value() == "Euler"
            assert page.locator("#schedule_type").input_value() == "Automatic"  # not in the text: the default
            assert page.locator("#guidance").input_value() == "perp-neg"
            assert page.locator("#nag_scale").input_value() == "1"  # what the infotext does not set: the default

            # a live preview while a job runs, and cancel
            page.fill("#steps", "150")
            page.click("#generate")
            expect(page.locator("#preview")).to_be_visible(timeout=30_000)
            assert page.locator("#preview").get_attribute("src").startswith("data:image/png;base64,")
            page.click("#cancel")
            expect(page.locator("#error")).to_contain_text("cancelled", timeout=30_000)
            expect(page.locator("#preview")).to_be_hidden()

            # another model from the list
            page.select_option("#model", "tiny-sd")
            page.fill("#steps", "2")
            page.select_option("#guidance", "")
            assert _sent(page, "#generate")["model"] == "tiny-sd"
            expect(page.locator("#gallery figure")).to_have_count(3, timeout=60_000)
            page.click("#clear-history")
            page.reload()
            expect(page.locator("#sampler option")).not_to_have_count(0)
            assert page.locator("#gallery figure").count() == 0

            # a phone's width: one column, nothing wider than the screen, the controls within reach
            for width, height in ((1280, 800), (390, 844)):
                page.set_viewport_size({"width": width, "height": height})
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                page.locator("#generate").scroll_into_view_if_needed()
                expect(page.locator("#generate")).to_be_in_viewport()
        finally:
            browser.close()
