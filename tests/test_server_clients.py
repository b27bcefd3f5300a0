"""`avert serve` over real HTTP: the unchanged `webuiapi` client, a client that disconnects, and the page in
Debian's chromium (headless, driven by Playwright)."""

from __future__ import annotations

import os
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
    assert api.util_get_scheduler_names() == ["automatic", "karras"]
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
            page.set_input_files("#file", str(png))
            expect(page.locator("#meta")).to_contain_text("Negative prompt: green tones", timeout=30_000)
            expect(page.locator("#meta")).to_contain_text("Seed: 33")
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
