"""Negative guidance strategies (issue 5): pure formulas with relational tests, branch skipping counted at
the UNet, several weighted and windowed negatives, methods, metadata round trip and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avert.api import generate
from avert.guidance import cfg as f
from avert.guidance.strategy import EMPTY, Guidance, Interval, StepContext, Term, negative_branch, prompt_branch
from avert.request import GenerationRequest, Negative
from tiny_models import beyond_size

torch.manual_seed(0)
E_C, E_N, E_0, E_M = (torch.randn(2, 4, 4, 4) for _ in range(4))
CTX = StepContext(3, 10, 500.0, sigma=2.0)


def predictions(*negatives, empty=E_0, prompt=E_C):
    out = {prompt_branch(0): prompt, EMPTY: empty}
    out.update({negative_branch(i): n for i, n in enumerate(negatives)})
    return out


# --- pure formulas ------------------------------------------------------------------------------------------

def test_reuse_adds_the_last_correction_and_of_cfg_is_cfg_with_the_old_difference():
    assert torch.equal(f.reuse_correction(E_C, torch.zeros_like(E_C)), E_C)
    last = f.cfg(E_M, E_N, 7.0) - E_M  # a guided evaluation's correction: (w - 1)(e_c - e_n)
    assert torch.allclose(f.reuse_correction(E_C, last), E_C + 6.0 * (E_M - E_N), atol=1e-5)


def test_one_negative_at_weight_one_is_plain_cfg_bit_for_bit():
    g = Guidance(7.5)
    assert g.branches(CTX) == (negative_branch(0), prompt_branch(0))
    assert torch.equal(g.combine(predictions(E_N), CTX), f.cfg(E_C, E_N, 7.5))


def test_perp_neg_with_an_empty_negative_is_cfg():
    g = Guidance(7.5, method="perp-neg")
    assert torch.allclose(g.combine(predictions(E_0), CTX), f.cfg(E_C, E_0, 7.5), atol=1e-5)


def test_perp_neg_removes_only_the_part_orthogonal_to_the_prompt():
    d_c = E_C - E_0
    parallel_negative = E_0 + 2.0 * d_c  # a negative pointing along the prompt: nothing orthogonal to remove
    g = Guidance(7.5, method="perp-neg")
    assert torch.allclose(g.combine(predictions(parallel_negative), CTX), f.cfg(E_C, E_0, 7.5), atol=1e-4)
    perp = f.perpendicular(E_N - E_0, d_c)
    assert torch.allclose((perp * d_c).sum(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)


def test_perp_neg_projects_per_sample():
    g = Guidance(5.0, method="perp-neg")
    both = g.combine(predictions(E_N), CTX)
    for i in range(2):
        one = {k: v[i : i + 1] for k, v in predictions(E_N).items()}
        assert torch.allclose(g.combine(one, CTX), both[i : i + 1], atol=1e-5)


@pytest.mark.parametrize("method", ["cfg", "perp-neg", "dynamic"])
def test_a_batch_of_two_equals_two_singles(method):
    g = Guidance(6.0, method=method, negative_scale=4.0, negatives=(Term(1.0), Term(0.5)))
    both = g.combine(predictions(E_N, E_M), CTX)
    for i in range(2):
        one = {k: v[i : i + 1] for k, v in predictions(E_N, E_M).items()}
        assert torch.allclose(g.combine(one, CTX), both[i : i + 1], atol=1e-5)


def test_rescale_zero_is_the_identity_and_one_matches_the_prompt_std():
    guided = f.cfg(E_C, E_N, 7.5)
    assert torch.equal(f.rescale(guided, E_C, 0.0), guided)
    full = f.rescale(guided, E_C, 1.0)
    assert torch.allclose(full.std(dim=(1, 2, 3)), E_C.std(dim=(1, 2, 3)), atol=1e-5)


def test_separate_scales_three_branch_formula():
    g = Guidance(7.0, negative_scale=3.0)
    assert g.branches(CTX) == (negative_branch(0), EMPTY, prompt_branch(0))
    expected = E_0 + 7.0 * (E_C - E_0) - 3.0 * (E_N - E_0)
    assert torch.allclose(g.combine(predictions(E_N), CTX), expected, atol=1e-5)


def test_several_weighted_negatives_mix_into_the_unconditional_branch():
    g = Guidance(7.0, negatives=(Term(0.5), Term(0.25)))
    e_u = 0.25 * E_0 + 0.5 * E_N + 0.25 * E_M
    assert torch.allclose(g.combine(predictions(E_N, E_M), CTX), e_u + 7.0 * (E_C - e_u), atol=1e-5)
    halves = Guidance(7.0, negatives=(Term(0.5), Term(0.5)))
    assert EMPTY not in halves.branches(CTX)  # weights summing to 1 need no empty branch


def test_dynamic_switches_a_negative_off_when_its_concept_is_absent():
    d_c = E_C - E_0
    away = E_0 - d_c  # the prompt drives the sample away from this concept: presence 0
    g = Guidance(7.0, method="dynamic")
    assert torch.allclose(f.presence(d_c, away - E_0), torch.zeros(2, 1, 1, 1))
    assert torch.allclose(g.combine(predictions(away), CTX), E_0 + 7.0 * d_c, atol=1e-5)
    toward = E_0 + d_c  # fully present: presence 1, the three-branch formula at full strength
    assert torch.allclose(f.presence(d_c, toward - E_0), torch.ones(2, 1, 1, 1))
    expected = E_0 + 7.0 * d_c - 7.0 * (toward - E_0)
    assert torch.allclose(g.combine(predictions(toward), CTX), expected, atol=1e-4)


def test_posterior_odds_rise_toward_the_negative_and_fall_away_from_it():
    x, d_0, d_n = E_C, E_0, E_N  # a VE sample and the two branches' denoised predictions
    mu_0, mu_n = f.bridge_mean(x, d_0, 2.0, 1.0), f.bridge_mean(x, d_n, 2.0, 1.0)
    assert torch.allclose(mu_0, d_0 + 0.25 * (x - d_0))
    step = (mu_n - mu_0).pow(2).flatten(1).sum(1) / (2 * 1.0 * 0.75)  # |mu_n - mu_0|^2 / (2 s^2), s^2 = 1 - 1/4
    start = torch.tensor([0.5, -1.0])
    toward = f.posterior_logit(start, x, 2.0, mu_n, 1.0, d_0, d_n, 1.0)
    away = f.posterior_logit(start, x, 2.0, mu_0, 1.0, d_0, d_n, 1.0)
    assert torch.allclose(toward, start + step, atol=1e-4) and torch.allclose(away, start - step, atol=1e-4)
    assert torch.allclose(f.posterior_logit(start, x, 2.0, mu_n, 1.0, d_0, d_n, 0.2), start + 0.2 * step, atol=1e-4)
    assert torch.equal(f.posterior_logit(start, x, 2.0, mu_n, 1.0, d_0, d_0, 1.0), start)  # no difference, no news
    with pytest.raises(ValueError, match="0 < sigma_next < sigma"):
        f.posterior_logit(start, x, 1.0, mu_n, 1.0, d_0, d_n, 1.0)


def posterior_run(target: str, batch=slice(None)):
    """Two guided evaluations (sigma 2, then 1) of method posterior on a model that outputs D itself; the sample
    of the second is the empty branch's step mean ("away") or the negative's ("toward")."""
    g = Guidance(7.0, method="posterior", negative_scale=6.0, prediction_type="sample")
    memory: dict = {}
    first, second = StepContext(0, 2, 900.0, sigma=2.0), StepContext(1, 2, 500.0, sigma=1.0)
    x1 = E_M[batch] / 5 ** 0.5  # the model input x / sqrt(1 + sigma^2) of the VE sample E_M
    predicted = predictions(E_N[batch], empty=E_0[batch], prompt=E_C[batch])
    out1 = g.combine(predicted, first, x1, memory)
    d = E_N[batch] if target == "toward" else E_0[batch]
    x2 = f.bridge_mean(E_M[batch], d, 2.0, 1.0) / 2 ** 0.5
    return out1, g.combine(predicted, second, x2, memory), memory


def test_posterior_starts_at_full_strength_and_switches_off_a_negative_the_sample_moves_away_from():
    full = E_0 + 7.0 * (E_C - E_0) - 6.0 * (E_N - E_0)  # prior 0.8 = p_max: the three-branch formula
    out1, away, memory = posterior_run("away")
    assert torch.allclose(out1, full, atol=1e-4)
    assert torch.allclose(away, E_0 + 7.0 * (E_C - E_0), atol=1e-3)  # the odds fell: the negative is off
    assert (memory["posterior"]["logits"][0] < -20).all()
    _, toward, _ = posterior_run("toward")
    assert torch.allclose(toward, full, atol=1e-4)  # the odds rose: still at full strength
    for i in range(2):  # each image keeps its own odds
        assert torch.allclose(posterior_run("away", slice(i, i + 1))[1], away[i : i + 1], atol=1e-4)
    with pytest.raises(ValueError, match="posterior needs the model input x"):
        Guidance(7.0, method="posterior").combine(predictions(E_N), CTX)


def tracked_run(method: str, prompt_first: torch.Tensor):
    """Two guided evaluations (sigma 2, then 1) of a posterior-tracked method on a model that outputs D itself.
    At the first, the prompt's prediction is `prompt_first`; between them the sample moves as the empty branch
    would (the negative pushed it away from its concept). The second returns the guided output for E_C."""
    g = Guidance(7.0, method=method, negative_scale=6.0 if method == "posterior" else None,
                 prediction_type="sample")
    memory: dict = {}
    first, second = StepContext(0, 2, 900.0, sigma=2.0), StepContext(1, 2, 500.0, sigma=1.0)
    out1 = g.combine(predictions(E_N, empty=E_0, prompt=prompt_first), first, E_M / 5 ** 0.5, memory)
    x2 = f.bridge_mean(E_M, E_0, 2.0, 1.0) / 2 ** 0.5
    return out1, g.combine(predictions(E_N), second, x2, memory)


def test_gated_is_plain_cfg_where_the_prompts_own_step_holds_the_concept_and_off_where_it_does_not():
    """gated weighs the evidence at the prompt branch's step mean, not at the sample the negative pushed: a
    prompt whose own prediction is the negative's keeps the negative on although the sample moved away (where
    posterior switches it off); a prompt whose prediction is the empty one's switches it off."""
    g = Guidance(7.0, method="gated")
    assert g.branches(CTX) == (negative_branch(0), EMPTY, prompt_branch(0)) and g.w_n == 6.0
    full, off = f.cfg(E_C, E_N, 7.0), E_0 + 7.0 * (E_C - E_0)
    first, holds = tracked_run("gated", prompt_first=E_N)
    assert torch.allclose(first, f.cfg(E_N, E_N, 7.0), atol=1e-4)  # prior 0.8 = p_max: plain CFG at once
    assert torch.allclose(holds, full, atol=1e-4)
    assert torch.allclose(tracked_run("gated", prompt_first=E_0)[1], off, atol=1e-3)
    assert torch.allclose(tracked_run("posterior", prompt_first=E_N)[1], off, atol=1e-3)  # the sample's evidence
    assert not Guidance(1.0, method="gated").guided(CTX)  # e = e_c at cfg 1: the negative is not evaluated
    with pytest.raises(ValueError, match="gated needs the model input x"):
        g.combine(predictions(E_N), CTX)


def test_at_unit_scale_with_no_weight_left_on_the_negatives_only_the_prompt_is_evaluated():
    """e = e_0 + w d_c - w_n (...) is e_c at w = 1 once w_n is 0 (gated at cfg 1, or cfg with negative scale 0);
    a negative scale above 0 still steers at cfg 1."""
    for g in (Guidance(1.0, method="gated"), Guidance(1.0, negative_scale=0.0), Guidance(1.0, method="perp-neg",
                                                                                       negative_scale=0.0)):
        assert g.branches(CTX) == (prompt_branch(0),) and torch.equal(g.combine(predictions(E_N), CTX), E_C)
    assert Guidance(1.0, negative_scale=2.0).branches(CTX) == (negative_branch(0), EMPTY, prompt_branch(0))


def test_gated_at_a_fixed_gate_is_plain_cfg_with_the_negative_at_that_weight(tiny):
    """At temperature 0 the gate stays min(prior, p_max) / p_max: 1 is plain CFG, 0.5 is plain CFG with the
    negative at weight 0.5 (e_u = 0.5 e_0 + 0.5 e_n), image for image; temperature 1 moves it."""
    full = BASE.replace(guidance="gated", posterior_temperature=0.0)
    assert np.abs(pixels(generate(full, tiny)) - pixels(generate(BASE, tiny))).max() <= 1
    half = full.replace(posterior_prior=0.4)
    weighted = BASE.replace(negative_prompt="", negatives=(Negative("blue tree", 0.5),))
    assert np.abs(pixels(generate(half, tiny)) - pixels(generate(weighted, tiny))).max() <= 1
    moving = generate(half.replace(posterior_temperature=1.0), tiny)
    assert np.abs(pixels(moving) - pixels(generate(weighted, tiny))).max() > 0


def test_gated_refuses_a_negative_scale_and_takes_the_posterior_options(capsys, tmp_path):
    from avert.cli import main
    from avert.errors import ValidationError
    from avert.validation import validate

    validate(GenerationRequest("x", "y", guidance="gated", posterior_temperature=2.0, negative_scale=7.0))
    with pytest.raises(ValidationError) as info:
        validate(GenerationRequest("x", "y", guidance="gated", negative_scale=10.0))
    assert "negative_scale: 10.0 is not allowed; must be left unset with guidance gated" in str(info.value)
    code = main(["generate", "a house", "-n", "trees", "--guidance", "gated", "--negative-scale", "3", "-q", "-o",
                 str(tmp_path / "x.png")])
    assert code == 2 and "must be left unset with guidance gated" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_posterior_options_reach_the_run(tiny):
    """At temperature 0 the odds never move, so the negative acts at prior / p_max throughout: prior 0.4 and
    p_max 0.8 at negative scale 6 is the three-branch formula at negative scale 3, image for image."""
    still = BASE.replace(guidance="posterior", negative_scale=6.0, posterior_temperature=0.0, posterior_prior=0.4,
                         posterior_p_max=0.8)
    halved = BASE.replace(negative_scale=3.0)
    assert np.abs(pixels(generate(still, tiny)) - pixels(generate(halved, tiny))).max() <= 1
    moving = generate(still.replace(posterior_temperature=1.0), tiny)
    assert np.abs(pixels(moving) - pixels(generate(halved, tiny))).max() > 0


def test_posterior_options_are_refused_outside_posterior_and_out_of_range(capsys, tmp_path):
    from avert.cli import main
    from avert.errors import ValidationError
    from avert.validation import validate

    with pytest.raises(ValidationError) as info:
        validate(GenerationRequest("x", guidance="apg", posterior_prior=0.5, posterior_p_max=0.5))
    assert {p.field for p in info.value.problems} == {"posterior_prior", "posterior_p_max"}
    assert "applies only with guidance posterior or gated" in str(info.value)
    for flags, message in [(["--posterior-prior", "1"], "posterior_prior: 1.0 is not allowed; must be a number "
                             "from 0.001 to 0.999"),
                           (["--posterior-p-max", "0"], "posterior_p_max: 0.0 is not allowed"),
                           (["--posterior-temperature", "-1"], "posterior_temperature: -1.0 is not allowed")]:
        code = main(["generate", "a house", "-n", "trees", "--guidance", "posterior", "-q", "-o",
                     str(tmp_path / "x.png"), *flags])
        assert code == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x.png").exists()


def test_posterior_options_are_recorded_and_remade_from_the_png(tiny, tmp_path):
    from avert.output.pnginfo import parse_parameters, read_png_metadata, save_png
    from avert.pipeline.metadata import request_from_a1111, request_from_record

    request = BASE.replace(batch_size=1, guidance="posterior", posterior_prior=0.6, posterior_temperature=3.0,
                           posterior_p_max=0.5)
    image = generate(request, tiny).images[0]
    save_png(image.image, tmp_path / "x.png", image.infotext, image.record)
    meta = read_png_metadata(tmp_path / "x.png")
    assert "Guidance: posterior" in meta.parameters and "Posterior temperature: 3.0" in meta.parameters
    for remade in (request_from_a1111(parse_parameters(meta.parameters)), request_from_record(meta.record)):
        assert (remade.posterior_prior, remade.posterior_temperature, remade.posterior_p_max) == (0.6, 3.0, 0.5)
        assert np.array_equal(np.asarray(generate(remade, tiny).images[0].image), np.asarray(image.image))


def test_a_window_covering_the_whole_run_equals_no_window():
    whole, none = Guidance(7.0, negatives=(Term(1.0, 0.0, 1.0),)), Guidance(7.0)
    for i in range(10):
        ctx = StepContext(i, 10, 0.0)
        assert whole.branches(ctx) == none.branches(ctx)


def test_outside_its_window_a_negative_is_not_evaluated():
    g = Guidance(7.0, negatives=(Term(1.0, 0.5, 1.0),))
    early, late = StepContext(2, 10, 0.0), StepContext(7, 10, 0.0)
    assert g.branches(early) == (EMPTY, prompt_branch(0))  # plain CFG against the empty prompt
    assert g.branches(late) == (negative_branch(0), prompt_branch(0))


@pytest.mark.parametrize("interval,index,sigma,guided", [
    (Interval(0.2, 0.8), 1, 5.0, False), (Interval(0.2, 0.8), 5, 5.0, True), (Interval(0.2, 0.8), 9, 5.0, False),
    (Interval(sigma_min=1.0, sigma_max=10.0), 5, 0.5, False), (Interval(sigma_min=1.0, sigma_max=10.0), 5, 5.0, True),
    (Interval(sigma_min=1.0, sigma_max=10.0), 5, 12.0, False),
    (Interval(s_min_uncond=1.0), 5, 0.5, False), (Interval(s_min_uncond=1.0), 4, 0.5, True),  # odd steps (A1111)
    (Interval(s_min_uncond=1.0, s_min_uncond_all=True), 4, 0.5, False), (Interval(s_min_uncond=1.0), 5, 2.0, True),
])
def test_interval_and_s_min_uncond(interval, index, sigma, guided):
    g = Guidance(7.0, interval=interval)
    ctx = StepContext(index, 10, 0.0, sigma=sigma)
    assert g.branches(ctx) == ((negative_branch(0), prompt_branch(0)) if guided else (prompt_branch(0),))
    if not guided:
        assert torch.equal(g.combine(predictions(E_N), ctx), E_C)


# --- on tiny components: UNet calls counted, relations hold end to end ------------------------------------

BASE = GenerationRequest("a red house", negative_prompt="blue tree", seed=5, steps=8, cfg_scale=7.0,
                         width=16, height=16, sampler="Euler")


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def batch_sizes(monkeypatch, components):
    sizes = []
    forward = components.unet.forward

    def spy(sample, *a, **kw):
        sizes.append(sample.shape[0])
        return forward(sample, *a, **kw)

    monkeypatch.setattr(components.unet, "forward", spy)
    return sizes


def test_negatives_list_of_one_equals_negative_prompt(tiny):
    plain = pixels(generate(BASE, tiny))
    listed = BASE.replace(negative_prompt="", negatives=(Negative("blue tree"),))
    assert np.array_equal(pixels(generate(listed, tiny)), plain)


def test_window_skips_the_negative_forward(tiny, monkeypatch):
    sizes = batch_sizes(monkeypatch, tiny)
    request = BASE.replace(negative_prompt="", negatives=(Negative("blue tree", 1.0, 0.5, 1.0),))
    result = generate(request, tiny)
    assert sizes == [2] * 8  # empty + prompt, then negative + prompt: never three
    assert result.branch_evaluations == 16


@pytest.mark.parametrize("changes,per_image", [
    ({"guidance_start": 0.0, "guidance_end": 0.5}, 4 * 2 + 4),
    ({"s_min_uncond": 1000.0}, 4 * 2 + 4 * 1),  # every other step skips the negative
    ({"s_min_uncond": 1000.0, "s_min_uncond_all": True}, 8),
    ({"s_min_uncond": 1000.0, "guidance_reuse": True}, 4 * 2 + 4 * 1),  # reuse costs no forward
    ({"guidance_end": 0.5, "guidance_reuse": True}, 4 * 2 + 4),
    ({"cfg_scale": 1.0}, 8),
    ({"negative_scale": 3.0}, 8 * 3),
])
def test_unet_evaluations_are_counted(tiny, monkeypatch, changes, per_image):
    sizes = batch_sizes(monkeypatch, tiny)
    result = generate(BASE.replace(**changes, batch_size=2), tiny)
    assert sum(sizes) == 2 * per_image and result.branch_evaluations == per_image


class Recording(torch.nn.Module):
    """A stand-in UNet: returns a different constant for each step, negative rows -1, prompt rows +1."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        self.calls += 1
        sign = encoder_hidden_states[:, 0, 0].sign().view(-1, 1, 1, 1)  # states: -1 negative, +1 prompt
        return (sign * self.calls * torch.ones_like(sample),)


class Fixed:
    def __init__(self, value):
        self.value = value

    def at(self, step):
        return self.value


@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_applies_the_last_guided_correction_on_skipped_steps(reuse):
    from avert.guidance.denoiser import Denoiser

    guidance = Guidance(7.0, interval=Interval(s_min_uncond=1000.0, reuse=reuse))
    conditioning = {negative_branch(0): Fixed(-torch.ones(4, 2)), prompt_branch(0): Fixed(torch.ones(4, 2))}
    denoiser = Denoiser(Recording(), conditioning, guidance, torch.zeros(4, 2))
    x = torch.zeros(1, 1, 2, 2)
    first = denoiser(x, torch.tensor(1.0), StepContext(0, 4, 1.0, sigma=5.0))   # guided: e_c 1, e_n -1
    second = denoiser(x, torch.tensor(1.0), StepContext(1, 4, 1.0, sigma=5.0))  # skipped: e_c 2 alone
    assert torch.all(first == -1 + 7 * (1 - -1))  # e_n + w (e_c - e_n) = 13, a correction of 12
    assert torch.all(second == (2 + 12 if reuse else 2))
    assert denoiser.count.branches == 3  # the skipped step evaluated the prompt alone either way


def test_reuse_changes_a_skipping_run_and_is_inert_without_one(tiny):
    skipping = BASE.replace(s_min_uncond=1000.0)
    assert np.abs(pixels(generate(skipping.replace(guidance_reuse=True), tiny))
                  - pixels(generate(skipping, tiny))).max() > 0
    assert np.array_equal(pixels(generate(BASE.replace(guidance_reuse=True), tiny)), pixels(generate(BASE, tiny)))


def test_batch_equals_singles_with_several_negatives(tiny):
    request = BASE.replace(batch_size=2, guidance="perp-neg", negatives=(Negative("car", 0.5, 0.25, 1.0),))
    batch = generate(request, tiny)
    for image in batch.images:
        alone = generate(request.replace(seed=image.seed, batch_size=1), tiny).images[0]
        assert np.abs(np.asarray(image.image, dtype=np.int16) - np.asarray(alone.image, dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("changes", [{"guidance": "perp-neg"}, {"guidance": "dynamic"}, {"guidance": "posterior"},
                                     {"negative_scale": 2.0}, {"guidance_rescale": 0.7},
                                     {"negatives": (Negative("car", 2.0),)}])
def test_each_option_changes_the_image(tiny, changes):
    assert np.abs(pixels(generate(BASE.replace(**changes), tiny)) - pixels(generate(BASE, tiny))).max() > 0


def test_negative_scale_makes_the_negative_work_at_cfg_one(tiny):
    at_one = BASE.replace(cfg_scale=1.0)
    result = generate(at_one.replace(negative_scale=5.0), tiny)
    assert beyond_size(result.warnings) == []
    assert np.abs(pixels(result) - pixels(generate(at_one, tiny))).max() > 0
    assert any("no effect" in w and "negative_scale" in w for w in generate(at_one, tiny).warnings)


def test_metadata_round_trip_remakes_the_image(tiny, tmp_path):
    from avert.output.pnginfo import parse_parameters, save_png, read_png_metadata
    from avert.pipeline.metadata import request_from_a1111, request_from_record

    request = BASE.replace(negative_prompt="", guidance="perp-neg", negative_scale=5.0, guidance_rescale=0.5,
                           s_min_uncond=2.0, guidance_reuse=True, clip_skip=2, emphasis="No norm",
                           negatives=(Negative("blue tree"), Negative("(car:1.2)", 0.5, 0.3, 0.9)))
    result = generate(request, tiny)
    image = result.images[0]
    save_png(image.image, tmp_path / "x.png", image.infotext, image.record)
    meta = read_png_metadata(tmp_path / "x.png")
    assert "Negative prompt: blue tree, (car:1.2)" in meta.parameters and "NGMS: 2.0" in meta.parameters
    assert "Guidance reuse: True" in meta.parameters
    from_a1111 = request_from_a1111(parse_parameters(meta.parameters))
    from_record = request_from_record(meta.record)
    for remade in (from_a1111, from_record):
        assert remade.negatives == request.negatives and remade.guidance == "perp-neg"
        assert np.array_equal(pixels(generate(remade, tiny)), pixels(result))


def test_validation_names_bad_negatives():
    from avert.errors import ValidationError
    from avert.validation import validate

    request = GenerationRequest("x", negatives=(Negative("a", 11.0), Negative("b", 1.0, 0.6, 0.4)),
                                guidance="nag", guidance_start=0.9, guidance_end=0.2)
    with pytest.raises(ValidationError) as info:
        validate(request)
    fields = {p.field for p in info.value.problems}
    assert fields == {"negatives[0].weight", "negatives[1].start", "guidance", "guidance_start"}


def test_cli_several_negatives_with_weights_and_windows(tmp_path, capsys):
    from avert.cli import main
    from avert.output.pnginfo import read_png_metadata

    out = tmp_path / "x.png"
    code = main(["generate", "a house", "-n", "trees", "-n", "green tones", "--negative-weight", "0.5",
                 "--negative-window", "0.2:1", "--guidance", "perp-neg", "--steps", "4", "--seed", "1", "-q",
                 "-o", str(out)])
    assert code == 0
    negatives = read_png_metadata(out).record["request"]["negatives"]
    assert negatives == [{"text": "trees", "weight": 1.0, "start": 0.0, "end": 1.0},
                         {"text": "green tones", "weight": 0.5, "start": 0.2, "end": 1.0}]


def test_cli_negative_option_without_a_negative_is_refused(capsys):
    from avert.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "a house", "--negative-weight", "0.5"])
    assert "must follow the -n" in capsys.readouterr().err


def test_a_guidance_distilled_model_is_named_in_a_warning(tiny):
    from dataclasses import replace

    from avert.pipeline.generate import negative_warnings

    class Config:
        time_cond_proj_dim = 256

    class Unet:
        config = Config()

    distilled = replace(tiny, unet=Unet())
    assert any("guidance-distilled" in w for w in negative_warnings(BASE, distilled))
    assert negative_warnings(BASE, tiny) == ()


@pytest.mark.parametrize("flags,message", [
    (["--negative-weight", "abc"], "negative_weight: 'abc' is not allowed; must be a number"),
    (["--negative-window", "0.5"], "negative_window: '0.5' is not allowed; must be START:END"),
    (["--negative-window", "0.8:0.2"], "negatives[0].start: 0.8 is not allowed; must be below end (0.2)"),
    (["--clip-skip", "0"], "clip_skip: 0 is not allowed; must be an integer from 1 to 12"),
    (["--emphasis", "loud"], "emphasis: 'loud' is not allowed; must be one of: Original, No norm"),
    (["--negative-scale", "-1"], "negative_scale: -1.0 is not allowed; must be a number from 0 to 30"),
    (["--guidance", "nag"], "guidance: 'nag' is not allowed; must be one of: cfg, apg, perp-neg, dynamic"),
    (["--guidance-rescale", "2"], "guidance_rescale: 2.0 is not allowed; must be a number from 0 to 1"),
    (["--guidance-sigma-min", "5", "--guidance-sigma-max", "2"], "guidance_sigma_min: 5.0 is not allowed"),
    (["--s-min-uncond", "-3"], "s_min_uncond: -3.0 is not allowed; must be a number from 0 to 1000"),
    (["--embeddings", "/nonexistent-avert"], "embeddings folder '/nonexistent-avert' does not exist"),
])
def test_cli_refuses_bad_guidance_and_prompt_options_by_name(flags, message, capsys, tmp_path):
    from avert.cli import main

    try:
        code = main(["generate", "a house", "-n", "trees", "-q", "-o", str(tmp_path / "x.png"), *flags])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_prompt_command_refuses_bad_steps(capsys):
    from avert.cli import main

    with pytest.raises(SystemExit):
        main(["prompt", "a house", "--steps", "0"])
    assert "steps: '0' is not allowed; must be an integer from 1 to 150" in capsys.readouterr().err
