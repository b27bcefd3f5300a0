"""What the embedded model knows, said before the first image: `avert concepts`, the far-word warning (words
no caption uses and nothing near them), and the warning for a size far from the native one, with the time the run
will take measured from its first step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from avert.api import load
from avert.errors import ModelLoadError
from avert.models.default import EMBEDDED_MODEL
from avert.models.scope import SCOPE_FILE, far_words, phrases, read_scope, unknown_words
from avert.pipeline.advice import advice, scope_warning, size_warning
from avert.request import GenerationRequest
from avert.world.attributes import CONCEPTS
from avert.world.vocabulary import caption_words, embedded_scope


@pytest.fixture(scope="module")
def embedded():
    return load(None)


def named(components, text: str) -> list[str]:
    return [w for w, _, _ in far_words([text], components.scope, components.tokenizer, components.text_encoder)]


def test_the_shipped_scope_is_what_the_world_makes():
    """scope.json is made from the world's captions and concepts (`embedded_scope`), so it cannot drift from them."""
    shipped = read_scope(EMBEDDED_MODEL)
    assert shipped == embedded_scope()
    assert (EMBEDDED_MODEL / SCOPE_FILE).read_text() == embedded_scope().to_text()
    assert shipped.concepts == CONCEPTS and len(shipped.concepts) == 27
    assert set(shipped.vocabulary) | set(shipped.ignored) >= caption_words()


def test_a_bad_scope_file_is_named(tmp_path):
    (tmp_path / SCOPE_FILE).write_text(json.dumps({"about": "x", "concepts": []}))
    with pytest.raises(ModelLoadError, match="scope.json"):
        read_scope(tmp_path)
    assert read_scope(tmp_path / "nowhere") is None


def test_words_outside_the_world_are_named_and_its_own_words_are_not(embedded):
    assert named(embedded, "a cat") == ["cat"]
    assert named(embedded, "a cat on a hill") == ["cat"]  # a known neighbour does not hide it
    assert named(embedded, "ugly, deformed, (blurry:1.3)") == ["ugly", "deformed", "blurry"]
    for text in ("a red house on a hill", "green tones", "sailboats on the ocean at dusk", "houses and trees"):
        assert named(embedded, text) == [], text
    assert named(embedded, "lunar disc") == []  # "disc" alone is far; with "lunar" it is near the moon (it works)
    assert named(embedded, "disc") == ["disc"]


def test_unknown_words_skip_function_words_plurals_and_short_words(embedded):
    scope = embedded.scope
    assert unknown_words(["the houses of a cat, is it on an ox"], scope) == ["cat"]
    assert phrases(["(a cat:1.2), [dog:fish:0.5] AND a bird"]) == ["a cat", "dog fish", "a bird"]


def test_the_scope_warning_names_the_words_and_how_to_see_what_the_model_knows(embedded):
    text = scope_warning(GenerationRequest(prompt="a cat", negative_prompt="watermark"), embedded)
    assert "'cat'" in text and "'watermark'" in text and "avert concepts" in text
    assert scope_warning(GenerationRequest(prompt="a house", negative_prompt="sun"), embedded) is None


def test_a_model_without_a_scope_says_nothing_of_its_words(tiny):
    assert tiny.scope is None
    assert scope_warning(GenerationRequest(prompt="a cat"), tiny) is None


def test_a_size_far_from_the_native_one_is_warned_about(embedded, tiny):
    assert size_warning(GenerationRequest(prompt="a house"), embedded) is None
    assert size_warning(GenerationRequest(prompt="a house", width=64, height=64), embedded) is None  # 4 times
    text = size_warning(GenerationRequest(prompt="a house", width=512, height=512), embedded)
    assert "256 times the pixels" in text and "native 32x32" in text and "poorer image" in text
    native = tiny.unet.config.sample_size * tiny.vae_scale_factor
    far = size_warning(GenerationRequest(prompt="a", width=native * 4, height=native * 4), tiny)
    assert "16 times" in far and "poorer" not in far  # a model with no scope: nothing said of its training size


def test_the_warnings_come_with_the_result(embedded):
    request = GenerationRequest(prompt="a cat", negative_prompt="sun", steps=1, seed=1, width=96, height=96)
    from avert.pipeline.generate import generate

    result = generate(request, embedded)
    assert result.warnings[:2] == advice(request, embedded)
    assert len(result.warnings) >= 2


def test_avert_concepts_lists_what_the_model_knows(tiny_folder):
    done = subprocess.run([sys.executable, "-m", "avert.cli", "concepts"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "32x32 model of a small procedural world" in done.stdout and "concepts (27): sun, moon" in done.stdout
    assert "--model FILE.safetensors" in done.stdout
    other = subprocess.run([sys.executable, "-m", "avert.cli", "concepts", "--model", str(tiny_folder)],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 0 and "no list of what it knows" in other.stdout


def test_the_cli_warns_before_the_run_and_estimates_its_time_from_the_first_step(tmp_path):
    done = subprocess.run([sys.executable, "-m", "avert.cli", "generate", "a cat", "-W", "80", "-H", "80", "--steps",
                           "3", "-q", "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    words = next(i for i, line in enumerate(lines) if "'cat'" in line)
    size = next(i for i, line in enumerate(lines) if "6 times the pixels" in line)
    first = next(i for i, line in enumerate(lines) if line.startswith("avert: the first of 3 steps took"))
    assert words < size < first  # both before the run, then the estimate, each once
    assert sum("'cat'" in line for line in lines) == 1
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_the_preview_map_of_a_vae_fits_its_own_colours(tiny):
    """The live preview's linear map of a latent model, fitted on the VAE's own encodings, explains their colours
    better than their mean colour does (`avert.output.preview`)."""
    import torch.nn.functional as F

    from avert.output.preview import latent_colours, preview_image

    weights, bias = latent_colours(tiny.vae)
    assert weights.shape == (3, tiny.vae.config.latent_channels)
    generator = torch.Generator().manual_seed(5)
    images = F.interpolate(torch.rand(2, 3, 3, 3, generator=generator) * 2 - 1, size=(64, 64), mode="bilinear")
    with torch.no_grad():
        z = tiny.vae.encode(images).latent_dist.mean * tiny.vae.config.scaling_factor
    target = F.adaptive_avg_pool2d(images, z.shape[-2:])
    fitted = torch.einsum("rc,nchw->nrhw", weights, z) + bias[None, :, None, None]
    assert (fitted - target).pow(2).mean() < (target.mean((2, 3), keepdim=True) - target).pow(2).mean()
    assert preview_image(z, tiny.vae).size == (z.shape[-1], z.shape[-2])
    assert latent_colours(tiny.vae)[0] is weights  # fitted once per VAE


def test_each_step_reports_its_estimate_of_the_clean_image(embedded):
    """The loop's `denoised` is x_0 from the step's input and output: on the embedded model the last step's
    estimate is the final image, and an early one is already nearer it than the noise is."""
    from avert.pipeline.generate import decode, generate
    from avert.pipeline.runtime import Runtime

    seen = {}

    def on_step(event):
        seen[event.done] = event.denoised()

    request = GenerationRequest(prompt="a red house", seed=3, steps=10, sampler="DDIM")
    result = generate(request, embedded, on_step=on_step)
    final = torch.tensor(__import__("numpy").asarray(result.images[0].image), dtype=torch.float32)
    shown = [torch.tensor(__import__("numpy").asarray(decode(seen[k], embedded, Runtime())[0]), dtype=torch.float32)
             for k in (2, 10)]
    assert (shown[1] - final).abs().max() <= 1
    assert (shown[0] - final).abs().mean() < 60
