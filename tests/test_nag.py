"""NAG (Normalized Attention Guidance): avert's processors against a reference processor written here from the
paper's formula, run by diffusers' pipeline on the same tiny components at CFG 1 and 7; the formula's relations;
installing and removing the processors; what a request, its record and the server say about it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avert.errors import ValidationError
from avert.guidance import attention
from avert.pipeline.generate import generate
from avert.request import GenerationRequest, Negative
from avert.validation import validate
from test_engine import BASE, diffusers_image, pixels
from tiny_models import beyond_size

NAG = dict(nag_scale=3.0, nag_tau=2.5, nag_alpha=0.5)


class ReferenceNag:
    """Z~ = s Z+ - (s - 1) Z-, r = |Z~|_1 / |Z+|_1, Z^ = Z~ min(r, tau) / r, Z = alpha Z^ + (1 - alpha) Z+, on the
    rows of the prompt's branch (the last `rows` rows of the batch), before the output projection."""

    def __init__(self, negative: torch.Tensor, rows: int, scale: float, tau: float, alpha: float):
        self.negative, self.rows, self.scale, self.tau, self.alpha = negative, rows, scale, tau, alpha

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch = hidden_states.shape[0]

        def attend(context):
            q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
            q, k, v = (t.view(batch, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3])

        positive = attend(encoder_hidden_states)
        negative = attend(self.negative.expand(batch, -1, -1))
        tilde = self.scale * positive - (self.scale - 1) * negative
        ratio = tilde.norm(p=1, dim=-1, keepdim=True) / positive.norm(p=1, dim=-1, keepdim=True)
        guided = self.alpha * (tilde * torch.clamp(ratio, max=self.tau) / ratio) + (1 - self.alpha) * positive
        prompt_rows = (torch.arange(batch) >= batch - self.rows)[:, None, None]
        out = torch.where(prompt_rows, guided, positive)
        return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("cfg", [1.0, 7.0])
def test_nag_equals_a_reference_processor_in_diffusers_pipeline(tiny, diffusers_pipe, cfg):
    request = BASE.replace(sampler="Euler", steps=6, cfg_scale=cfg, negative_prompt="blue tree", **NAG)
    ours = pixels(generate(request, tiny).images[0].image)
    negative = diffusers_pipe.encode_prompt("blue tree", "cpu", 1, False)[0]
    layers = attention.cross_attention_layers(diffusers_pipe.unet)
    before = [m.processor for m in layers]
    try:
        for module in layers:
            module.processor = ReferenceNag(negative, 1, 3.0, 2.5, 0.5)
        theirs = pixels(diffusers_image(diffusers_pipe, tiny, request))
    finally:
        for module, processor in zip(layers, before):
            module.processor = processor
    assert np.abs(ours - theirs).max() <= 1
    plain = pixels(generate(request.replace(nag_scale=1.0, nag_tau=2.5), tiny).images[0].image)
    assert np.abs(ours - plain).max() > 0  # NAG moved the image (a little: the tiny UNet is random)


def test_the_formula_relations():
    g = torch.Generator().manual_seed(0)
    z_pos, z_neg, z_other = (torch.randn(2, 5, 8, generator=g) for _ in range(3))
    off = attention.NagSettings(scale=1.0)
    assert torch.equal(attention.nag(z_pos, [z_neg], [1.0], off), z_pos)
    one = attention.NagSettings(scale=3.0, tau=100.0, alpha=1.0)  # no cap, no blend: the bare extrapolation
    assert torch.allclose(attention.nag(z_pos, [z_neg], [1.0], one), 3 * z_pos - 2 * z_neg)
    two = attention.nag(z_pos, [z_neg, z_other], [0.5, 0.25], one)
    assert torch.allclose(two, z_pos + 2 * (0.5 * (z_pos - z_neg) + 0.25 * (z_pos - z_other)), atol=1e-6)
    capped = attention.nag(z_pos, [z_neg], [1.0], attention.NagSettings(scale=8.0, tau=1.5, alpha=1.0))
    ratio = capped.abs().sum(-1) / z_pos.abs().sum(-1)
    assert float(ratio.max()) <= 1.5 + 1e-5
    half = attention.nag(z_pos, [z_neg], [1.0], attention.NagSettings(scale=3.0, tau=100.0, alpha=0.5))
    assert torch.allclose(half, 0.5 * (3 * z_pos - 2 * z_neg) + 0.5 * z_pos, atol=1e-6)


def test_the_processors_are_put_back_after_a_run_and_after_an_error(tiny):
    from avert.sampling.loop import Cancelled

    layers = attention.cross_attention_layers(tiny.unet)
    before = [type(m.processor) for m in layers]
    request = BASE.replace(steps=3, negative_prompt="blue", cfg_scale=1.0, **NAG)
    generate(request, tiny)
    assert [type(m.processor) for m in layers] == before and len(layers) > 0
    with pytest.raises(Cancelled):
        generate(request, tiny, should_stop=lambda: True)
    assert [type(m.processor) for m in layers] == before


def test_nag_at_cfg_1_carries_the_negative_without_a_second_unet_pass_and_without_a_warning(tiny):
    request = BASE.replace(steps=4, cfg_scale=1.0, negative_prompt="blue tree")
    alone = generate(request.replace(negative_prompt=""), tiny)
    plain = generate(request, tiny)
    guided = generate(request.replace(**NAG), tiny)
    assert np.array_equal(pixels(plain.images[0].image), pixels(alone.images[0].image))  # CFG 1: the negative is dead
    assert any("nag_scale" in w for w in plain.warnings)  # and avert names the fix
    assert np.abs(pixels(guided.images[0].image) - pixels(alone.images[0].image)).max() > 0
    assert beyond_size(guided.warnings) == [] and guided.branch_evaluations == plain.branch_evaluations == 4  # no negative pass
    late = generate(request.replace(**NAG, nag_end=0.5), tiny).images[0].image
    assert 0 < np.abs(pixels(late) - pixels(alone.images[0].image)).max()
    assert not np.array_equal(pixels(late), pixels(guided.images[0].image))


def test_several_negatives_each_in_its_window_drive_nag(tiny):
    request = BASE.replace(steps=4, cfg_scale=1.0, **NAG)
    both = generate(request.replace(negatives=(Negative("blue"), Negative("tree", weight=0.5))), tiny)
    first = generate(request.replace(negatives=(Negative("blue"),)), tiny)
    windowed = generate(request.replace(negatives=(Negative("blue"), Negative("tree", weight=0.5, start=0.9))), tiny)
    assert not np.array_equal(pixels(both.images[0].image), pixels(first.images[0].image))
    assert np.array_equal(pixels(windowed.images[0].image), pixels(first.images[0].image))  # "tree" never active


def test_nag_is_written_read_back_and_refused_by_name(tiny):
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    made = generate(BASE.replace(steps=2, negative_prompt="blue", nag_scale=2.5, nag_end=0.75), tiny).images[0]
    assert "NAG scale: 2.5" in made.infotext and "NAG end: 0.75" in made.infotext
    back = request_from_a1111(parse_parameters(made.infotext))
    assert (back.nag_scale, back.nag_end, back.nag_tau) == (2.5, 0.75, 2.5)
    for changes, field in (({"nag_scale": 3.0}, "nag_scale"), ({"nag_tau": 3.0, "negative_prompt": "x"}, "nag_tau"),
                           ({"nag_scale": 0.5, "negative_prompt": "x"}, "nag_scale"),
                           ({"nag_scale": 3.0, "nag_alpha": 1.5, "negative_prompt": "x"}, "nag_alpha")):
        with pytest.raises(ValidationError) as error:
            validate(GenerationRequest("a", **changes))
        assert [p.field for p in error.value.problems] == [field]


def test_nag_works_on_sdxl(tiny_sdxl):
    request = GenerationRequest("a red car", "blue tree", seed=3, steps=3, width=32, height=32, cfg_scale=1.0,
                                guidance="cfg")
    plain = pixels(generate(request, tiny_sdxl).images[0].image)
    assert np.abs(pixels(generate(request.replace(**NAG), tiny_sdxl).images[0].image) - plain).max() > 0


def test_the_nag_screen_page_has_one_row_per_setting_and_names_its_command():
    """docs/eval/nag.md in the format `python tools/nag_screen.py` writes today."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("nag_screen", root / "tools" / "nag_screen.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = (root / "docs" / "eval" / "nag.md").read_text()
    assert "by `python tools/nag_screen.py" in text and "CPU flags" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert [r.split(" | ")[0][2:] for r in rows] == [label for label, _ in tool.SETTINGS]


def test_the_record_says_what_carried_each_negative(tiny):
    request = BASE.replace(steps=2, negative_prompt="", negatives=(Negative("blue"), Negative("tree")), guidance="cfg")

    def carried(cfg, **nag):
        return generate(request.replace(cfg_scale=cfg, **nag), tiny).images[0].record["negatives_carried_by"]

    assert carried(7.0) == ["cfg", "cfg"] and carried(1.0) == ["none", "none"]
    assert carried(1.0, **NAG) == ["nag", "nag"] and carried(7.0, **NAG) == ["cfg+nag", "cfg+nag"]
    assert carried(1.0, negative_scale=5.0) == ["cfg", "cfg"]  # a negative scale of its own acts at cfg 1
    assert "negatives_carried_by" not in generate(BASE.replace(steps=2, negative_prompt=""), tiny).images[0].record
