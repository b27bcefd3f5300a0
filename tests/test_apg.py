"""Adaptive projected guidance (issue 5): the pure formula against diffusers' own, the conversion to denoised
predictions against diffusers' schedulers, per-sample relations, and the method end to end on tiny components."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avert.api import generate
from avert.guidance import cfg as f
from avert.guidance.strategy import EMPTY, Guidance, Projection, StepContext, negative_branch, prompt_branch
from avert.request import GenerationRequest

torch.manual_seed(1)
D_C, D_U, X = (torch.randn(2, 3, 8, 8) for _ in range(3))


# --- the formula ---------------------------------------------------------------------------------------------

def test_apg_with_eta_one_and_no_threshold_or_momentum_is_cfg():
    guided, _ = f.apg(D_C, D_U, 7.0, eta=1.0)
    assert torch.allclose(guided, f.cfg(D_C, D_U, 7.0), atol=1e-5)


def test_apg_matches_diffusers_normalized_guidance_over_a_run_with_momentum():
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    buffer, running = MomentumBuffer(-0.5), None
    for step in range(4):
        cond, uncond = D_C * (1 + step), D_U - step
        ours, running = f.apg(cond, uncond, 7.0, eta=0.0, norm_threshold=3.0, momentum=-0.5, running=running)
        # the paper's form, D_c + (w - 1) update, is diffusers' `use_original_formulation` with scale w - 1
        theirs = normalized_guidance(cond, uncond, 6.0, buffer, eta=0.0, norm_threshold=3.0,
                                     use_original_formulation=True)
        assert torch.allclose(ours, theirs, atol=1e-5), step


def test_with_eta_zero_the_update_has_no_part_along_the_prompt():
    guided, _ = f.apg(D_C, D_U, 7.0)
    along = ((guided - D_C) * D_C).sum(dim=(1, 2, 3))
    assert torch.allclose(along, torch.zeros(2), atol=1e-3)
    assert not torch.allclose(guided, f.cfg(D_C, D_U, 7.0), atol=1e-2)


def test_the_norm_threshold_caps_the_update_per_image():
    guided, _ = f.apg(D_C, D_U, 7.0, eta=1.0, norm_threshold=2.0)
    norms = (guided - D_C).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((2,), 6.0 * 2.0), atol=1e-4)  # |D_c - D_u| is about 20 here
    loose, _ = f.apg(D_C, D_U, 7.0, eta=1.0, norm_threshold=1000.0)
    assert torch.allclose(loose, f.cfg(D_C, D_U, 7.0), atol=1e-5)


def test_a_batch_of_two_equals_two_singles():
    both, run = f.apg(D_C, D_U, 5.0, norm_threshold=2.0, momentum=-0.5)
    both, _ = f.apg(D_C, D_U * 2, 5.0, norm_threshold=2.0, momentum=-0.5, running=run)
    for i in range(2):
        one, run_i = f.apg(D_C[i : i + 1], D_U[i : i + 1], 5.0, norm_threshold=2.0, momentum=-0.5)
        one, _ = f.apg(D_C[i : i + 1], D_U[i : i + 1] * 2, 5.0, norm_threshold=2.0, momentum=-0.5, running=run_i)
        assert torch.allclose(one, both[i : i + 1], atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoised_is_the_schedulers_pred_original_sample(prediction_type):
    from diffusers import DDPMScheduler

    from avert.sampling.loop import sigma_function

    scheduler = DDPMScheduler(prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(20)
    t = scheduler.timesteps[7]
    output = torch.randn_like(X)
    expected = scheduler.step(output, t, X, generator=torch.Generator().manual_seed(0)).pred_original_sample
    ours = f.denoised(X, output, sigma_function(scheduler)(float(t)), prediction_type)
    assert torch.allclose(ours, expected, atol=1e-4)
    assert torch.allclose(f.from_denoised(X, ours, sigma_function(scheduler)(float(t)), prediction_type), output,
                          atol=1e-4)


def test_denoised_at_zero_terminal_snr_is_minus_v_and_refused_for_epsilon():
    inf = float("inf")
    assert torch.equal(f.denoised(X, D_C, inf, "v_prediction"), -D_C)
    assert torch.allclose(f.from_denoised(X, -D_C, inf, "v_prediction"), D_C)
    with pytest.raises(ValueError, match="zero SNR"):
        f.denoised(X, D_C, inf, "epsilon")


def test_denoised_refuses_an_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        f.denoised(X, D_C, 1.0, "flow")


# --- the strategy ----------------------------------------------------------------------------------------------

CTX = StepContext(3, 10, 500.0, sigma=2.0)
E_C, E_N = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)


def test_apg_evaluates_the_same_branches_as_cfg():
    assert Guidance(7.0, method="apg").branches(CTX) == Guidance(7.0).branches(CTX)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_apg_with_eta_one_combines_as_cfg_in_the_models_output(prediction_type):
    g = Guidance(7.0, method="apg", projection=Projection(eta=1.0), prediction_type=prediction_type)
    out = g.combine({prompt_branch(0): E_C, negative_branch(0): E_N}, CTX, X, {})
    assert torch.allclose(out, f.cfg(E_C, E_N, 7.0), atol=1e-4)


def test_apg_keeps_its_momentum_in_the_run_memory():
    g = Guidance(7.0, method="apg", projection=Projection(momentum=-0.5))
    memory: dict = {}
    preds = {prompt_branch(0): E_C, negative_branch(0): E_N}
    first = g.combine(preds, CTX, X, memory)
    assert "apg" in memory
    again = g.combine(preds, CTX, X, memory)  # same predictions, but the running average now carries step 1
    assert not torch.allclose(first, again, atol=1e-3)
    assert torch.allclose(g.combine(preds, CTX, X, {}), first)
    with pytest.raises(ValueError, match="apg needs the model input"):
        g.combine(preds, CTX)


def test_apg_with_several_and_parts_and_eta_one_is_composable_cfg():
    e_k = torch.randn_like(E_C)
    g = Guidance(7.0, method="apg", projection=Projection(eta=1.0), prompt_weights=(1.0, 0.5))
    preds = {prompt_branch(0): E_C, prompt_branch(1): e_k, negative_branch(0): E_N}
    expected = f.composable_cfg([E_C, e_k], (1.0, 0.5), E_N, 7.0)
    assert torch.allclose(g.combine(preds, CTX, X, {}), expected, atol=1e-4)
    assert EMPTY not in g.branches(CTX)


# --- end to end on tiny components ----------------------------------------------------------------------------

BASE = GenerationRequest("a red house", negative_prompt="blue tree", seed=5, steps=8, cfg_scale=7.0,
                         width=16, height=16, sampler="Euler", batch_size=2)


def pixels(result, i: int = 0) -> np.ndarray:
    return np.asarray(result.images[i].image, dtype=np.int16)


def test_apg_with_eta_one_renders_the_cfg_image(tiny):
    cfg = generate(BASE, tiny)
    apg = generate(BASE.replace(guidance="apg", apg_eta=1.0), tiny)
    for i in range(2):
        assert np.abs(pixels(apg, i) - pixels(cfg, i)).max() <= 1
    assert apg.branch_evaluations == cfg.branch_evaluations == 16


@pytest.mark.parametrize("changes", [{}, {"apg_norm_threshold": 0.5, "apg_eta": 1.0}, {"apg_momentum": -0.5,
                                                                                       "apg_eta": 1.0}])
def test_each_apg_option_changes_the_image(tiny, changes):
    cfg = generate(BASE.replace(batch_size=1), tiny)
    apg = generate(BASE.replace(batch_size=1, guidance="apg", **changes), tiny)
    assert np.abs(pixels(apg) - pixels(cfg)).max() > 0


def test_apg_batch_equals_singles_with_momentum(tiny_v_folder):
    from avert.models.loader import load_model

    v_model = load_model(tiny_v_folder)  # v-prediction: the conversion to D differs from epsilon's
    request = BASE.replace(guidance="apg", apg_norm_threshold=0.5, apg_momentum=-0.5, guidance_reuse=True,
                           s_min_uncond=1000.0)
    batch = generate(request, v_model)
    for i, image in enumerate(batch.images):
        alone = generate(request.replace(seed=image.seed, batch_size=1), v_model)
        assert np.abs(pixels(batch, i) - pixels(alone)).max() <= 1


def test_apg_options_are_refused_outside_apg_and_negative_scale_inside_it():
    from avert.errors import ValidationError
    from avert.validation import validate

    with pytest.raises(ValidationError) as info:
        validate(GenerationRequest("x", apg_eta=0.5, apg_momentum=-0.5))
    assert {p.field for p in info.value.problems} == {"apg_eta", "apg_momentum"}
    assert "applies only with guidance apg" in str(info.value)
    with pytest.raises(ValidationError) as info:
        validate(GenerationRequest("x", guidance="apg", negative_scale=3.0, apg_momentum=2.0))
    assert {p.field for p in info.value.problems} == {"negative_scale", "apg_momentum"}
    validate(GenerationRequest("x", guidance="apg", negative_scale=7.0, apg_eta=0.5))


def test_apg_at_cfg_one_warns_that_the_negative_has_no_effect(tiny):
    result = generate(BASE.replace(batch_size=1, guidance="apg", cfg_scale=1.0), tiny)
    assert any("no effect" in w and "guidance cfg with negative_scale" in w for w in result.warnings)


def test_apg_is_recorded_and_remade_from_the_png(tiny, tmp_path):
    from avert.output.pnginfo import parse_parameters, read_png_metadata, save_png
    from avert.pipeline.metadata import request_from_a1111, request_from_record

    request = BASE.replace(batch_size=1, guidance="apg", apg_eta=0.25, apg_norm_threshold=0.5, apg_momentum=-0.5)
    image = generate(request, tiny).images[0]
    save_png(image.image, tmp_path / "x.png", image.infotext, image.record)
    meta = read_png_metadata(tmp_path / "x.png")
    assert "Guidance: apg" in meta.parameters and "APG momentum: -0.5" in meta.parameters
    for remade in (request_from_a1111(parse_parameters(meta.parameters)), request_from_record(meta.record)):
        assert (remade.apg_eta, remade.apg_norm_threshold, remade.apg_momentum) == (0.25, 0.5, -0.5)
        assert np.array_equal(np.asarray(generate(remade, tiny).images[0].image), np.asarray(image.image))


def test_cli_refuses_an_apg_option_without_apg(capsys, tmp_path):
    from avert.cli import main

    code = main(["generate", "a house", "-n", "trees", "--apg-eta", "0.5", "-q", "-o", str(tmp_path / "x.png")])
    assert code == 2
    assert "apg_eta: 0.5 is not allowed; applies only with guidance apg" in capsys.readouterr().err


def test_the_schema_offers_exactly_the_methods_the_strategy_knows():
    from avert.guidance.strategy import method_names
    from avert.schema import GUIDANCE_METHODS

    assert set(GUIDANCE_METHODS) == set(method_names())


@pytest.mark.parametrize("flags,message", [
    (["--apg-eta", "11"], "apg_eta: 11.0 is not allowed; must be a number from -10 to 10"),
    (["--apg-norm-threshold", "-1"], "apg_norm_threshold: -1.0 is not allowed; must be a number from 0 to 1000"),
    (["--apg-momentum", "2"], "apg_momentum: 2.0 is not allowed; must be a number from -5 to 1"),
    (["--apg-momentum", "abc"], "apg_momentum"),
])
def test_cli_refuses_out_of_range_apg_options_by_name(flags, message, capsys, tmp_path):
    from avert.cli import main

    try:
        code = main(["generate", "a house", "-n", "trees", "--guidance", "apg", "-q", "-o", str(tmp_path / "x.png"),
                     *flags])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
