"""The guidance functions, the strategy and the denoiser on small hand-made tensors, at values where a wrong sign,
operator, bound or branch gives a different number (each test names the formula it holds)."""

from __future__ import annotations

import math

import pytest
import torch

from avert.guidance import cfg as f
from avert.guidance.denoiser import Denoiser
from avert.guidance.strategy import EMPTY, Guidance, Interval, Posterior, StepContext, Term, negative_branch, \
    prompt_branch


def t(*values: float) -> torch.Tensor:
    """A [1, len, 1, 1] tensor: one sample, one value per channel."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=1e-12)


def test_composable_cfg_is_the_weighted_sum_of_each_parts_direction():
    """e = e_u + w sum_k a_k (e_k - e_u), also when the first part has weight 1 and when one part is weighted."""
    u, a, b = t(1.0, 2.0), t(3.0, 1.0), t(0.0, 5.0)
    assert close(f.composable_cfg([a, b], [1.0, 0.5], u, 2.0), u + 2.0 * ((a - u) + 0.5 * (b - u)))
    assert close(f.composable_cfg([a], [2.0], u, 3.0), u + 6.0 * (a - u))
    assert close(f.composable_cfg([a], [1.0], u, 3.0), u + 3.0 * (a - u))


def test_unconditional_mixes_the_negatives_and_leaves_the_rest_to_the_empty_prompt():
    """e_u = (1 - sum l_i) e_0 + sum l_i e_ni; empty may be None when the weights sum to 1."""
    e0, n1, n2 = t(1.0, 1.0), t(3.0, 0.0), t(-1.0, 2.0)
    assert close(f.unconditional(e0, [n1], [2.0]), -1.0 * e0 + 2.0 * n1)
    assert close(f.unconditional(None, [n1, n2], [0.25, 0.75]), 0.25 * n1 + 0.75 * n2)
    assert close(f.unconditional(e0, [n1, n2], [0.5, -0.5]), e0 + 0.5 * n1 - 0.5 * n2)
    assert f.unconditional(e0, [], []) is e0
    assert f.unconditional(e0, [n1], [1.0]) is n1


def test_separate_scales_and_perp_neg_without_negatives_are_the_prompt_alone():
    """e = e_0 + w d_c - w_n * 0."""
    e0, d = t(1.0, 2.0), t(0.5, -0.5)
    for combine in (f.separate_scales, f.perp_neg):
        assert close(combine(e0, d, [], [], 3.0, 5.0), e0 + 3.0 * d)


def test_perpendicular_removes_the_projection_and_leaves_d_when_onto_is_zero():
    d, onto = t(1.0, 1.0), t(2.0, 0.0)
    assert close(f.perpendicular(d, onto), t(0.0, 1.0))
    assert close(f.perpendicular(d, t(0.0, 0.0)), d)


def test_a_direction_whose_square_underflows_counts_as_zero():
    """In fp32 1e-25 squared is 0 while 1e-25 times 1 is not: no division by the clamped norm's 1e-38 there."""
    tiny = torch.tensor([1e-25, 0.0]).view(1, 2, 1, 1)
    big = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    assert f.presence(big, tiny).item() == 0.0
    assert torch.equal(f.perpendicular(big, tiny), big)


@pytest.mark.parametrize("direction, negative, p", [
    ((1.0, 0.0), (2.0, 0.0), 0.5),     # <d_c, d_n> / |d_n|^2 = 2 / 4
    ((0.1, 0.0), (0.4, 0.0), 0.25),    # |d_n|^2 = 0.16 < 1
    ((3.0, 0.0), (2.0, 0.0), 1.0),     # 6 / 4 clipped to 1
    ((1.5, 1.0), (1.0, 0.0), 1.0),     # 1.5 clipped to 1
    ((-1.0, 0.0), (2.0, 0.0), 0.0),    # away from the concept
    ((1.0, 1.0), (0.0, 0.0), 0.0),     # no negative direction
    ((1.0, 3.0), (1.0, 1.0), 1.0),     # 4 / 2 over both channels together
    ((1.0, -0.5), (1.0, 1.0), 0.25),   # 0.5 / 2: summed over channels, not per channel
])
def test_presence_is_the_clipped_projection_ratio_over_the_whole_sample(direction, negative, p):
    assert close(f.presence(t(*direction), t(*negative)), torch.full((1, 1, 1, 1), p, dtype=torch.float64))


def test_a_posterior_step_needs_a_lower_positive_next_sigma():
    x = t(0.0, 0.0)
    for sigma_next, sigma in ((0.0, 1.0), (1.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match=f"a posterior step needs 0 < sigma_next < sigma, got {sigma_next:g} "
                                             f"and {sigma:g}"):
            f.posterior_logit(torch.zeros(1), x, sigma, x, sigma_next, x, x, 1.0)


def test_denoised_at_sigma_zero_is_the_input_and_the_inverse_cannot_be_taken_there():
    x, out = t(0.3, -0.2), t(5.0, 7.0)
    assert close(f.denoised(x, out, 0.0, "epsilon"), x)
    assert close(f.denoised(x, out, 0.0, "v_prediction"), x)
    with pytest.raises(ValueError, match="^at sigma 0 the denoised estimate does not depend on the model output$"):
        f.from_denoised(x, x, 0.0, "epsilon")
    with pytest.raises(ValueError, match=r"^an epsilon-prediction model has no denoised estimate at sigma = inf "
                                         r"\(zero SNR\)$"):
        f.denoised(x, out, math.inf, "epsilon")


def test_apg_momentum_adds_the_running_update_only_when_set():
    """m <- d + beta m: the running update is ignored at the default beta 0 and used at beta 1."""
    cond, uncond, running = t(1.0, 0.0), t(0.0, 0.0), t(0.0, 1.0)
    plain, kept = f.apg(cond, uncond, 2.0, running=running)
    assert close(kept, cond - uncond) and close(plain, f.apg(cond, uncond, 2.0)[0])
    guided, kept = f.apg(cond, uncond, 2.0, momentum=1.0, running=running)
    assert close(kept, t(1.0, 1.0))
    assert close(guided, cond + t(0.0, 1.0))  # d = (1, 1): the part along D_c = (1, 0) is dropped at eta 0


def test_term_windows_are_half_open():
    term = Term(start=0.25, end=0.5)
    assert [term.active(x) for x in (0.0, 0.25, 0.49, 0.5, 0.75)] == [False, True, True, False, False]
    assert Term().active(0.0) and Term().active(0.95)


def ctx(index: int = 0, total: int = 10, sigma: float = 1.0) -> StepContext:
    return StepContext(index, total, 500.0, sigma)


def test_interval_bounds():
    """(sigma_min, sigma_max], fractions [start, end), s_min_uncond skipping odd evaluations below it."""
    assert not Interval(sigma_min=1.0).applies(ctx(sigma=1.0)) and Interval(sigma_min=1.0).applies(ctx(sigma=1.01))
    assert Interval(sigma_max=1.0).applies(ctx(sigma=1.0)) and not Interval(sigma_max=1.0).applies(ctx(sigma=1.01))
    assert not Interval(end=0.5).applies(ctx(5)) and Interval(end=0.5).applies(ctx(4))
    assert Interval(s_min_uncond=1.0).applies(ctx(1, sigma=1.0))
    assert not Interval(s_min_uncond=1.0).applies(ctx(1, sigma=0.99))
    assert Interval(s_min_uncond=1.0).applies(ctx(2, sigma=0.99))
    assert not Interval(s_min_uncond=1.0, s_min_uncond_all=True).applies(ctx(2, sigma=0.99))
    assert Interval().applies(ctx(1, sigma=0.0))


def test_a_unit_scale_over_weighted_and_parts_is_the_prompt_alone():
    """w a = 1 with one part: e_u + (e_c - e_u) = e_c, so neither the negative nor the empty prompt is evaluated."""
    assert Guidance(scale=0.5, prompt_weights=(2.0,)).branches(ctx()) == (prompt_branch(0),)
    assert Guidance(scale=2.0, prompt_weights=(2.0,)).branches(ctx()) == (negative_branch(0), prompt_branch(0))


def test_outside_the_interval_and_parts_are_summed_around_the_first():
    """Not guided: e = e_1 + sum_k a_k (e_k - e_1), A1111's AND without the unconditional."""
    guidance = Guidance(scale=7.0, prompt_weights=(1.0, 0.5), interval=Interval(start=0.5))
    a, b = t(1.0, 0.0), t(3.0, 2.0)
    out = guidance.combine({prompt_branch(0): a, prompt_branch(1): b}, ctx(0))
    assert close(out, a + 0.5 * (b - a))
    single = Guidance(scale=7.0, interval=Interval(start=0.5))
    assert single.combine({prompt_branch(0): a}, ctx(0)) is a


@pytest.mark.parametrize("method", ["posterior", "gated", "apg"])
def test_methods_with_state_refuse_a_call_without_the_sample_or_the_memory(method):
    guidance = Guidance(scale=7.0, method=method)
    e = t(0.0, 0.0)
    predictions = {prompt_branch(0): e, negative_branch(0): e, EMPTY: e}
    for x, memory in ((e, None), (None, {})):
        with pytest.raises(ValueError, match=f"^{method} needs the model input x and a per-run memory$"):
            guidance.combine(predictions, ctx(), x, memory)


def test_the_posterior_keeps_its_odds_when_sigma_does_not_fall_and_keeps_the_samples_dtype():
    """An evaluation at the same sigma (Heun's second) or at sigma 0 has no Bayes step: the odds stay at the prior.
    The odds are in the sample's dtype."""
    guidance = Guidance(scale=7.0, method="posterior", negative_scale=10.0, posterior=Posterior(prior=0.5, p_max=1.0))
    e0, en, ec = t(0.0, 0.0), t(1.0, 0.0), t(0.0, 1.0)
    predictions = {prompt_branch(0): ec, negative_branch(0): en, EMPTY: e0}
    x, memory = t(0.5, 0.5), {}
    for sigma in (2.0, 2.0, 0.0):
        out = guidance.combine(predictions, StepContext(0, 10, 500.0, sigma), x, memory)
        assert close(out, e0 + 7.0 * (ec - e0) - 10.0 * 0.5 * (en - e0))  # p = 0.5 at the prior
    assert memory["posterior"]["logits"][0].dtype == torch.float64


class FakeUNet(torch.nn.Module):
    """Returns, per row, the mean of its hidden states plus the sample; records autocast as it saw it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, timestep, encoder_hidden_states, return_dict=False):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                          encoder_hidden_states.clone()))
        return (x + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1),)


class Schedule:
    def __init__(self, by_step: dict[int, torch.Tensor]):
        self.by_step = by_step

    def at(self, step: int) -> torch.Tensor:
        return self.by_step[max(s for s in self.by_step if s <= step)]


def denoiser(guidance: Guidance, conditioning: dict, **kwargs) -> Denoiser:
    empty = torch.zeros(2, 3)
    return Denoiser(FakeUNet(), {EMPTY: Schedule({0: empty}), **conditioning}, guidance, empty, **kwargs)


def test_branches_of_different_lengths_are_padded_with_the_empty_prompts_chunks():
    """Chunks of 2 tokens of width 4: a negative of one chunk next to a prompt of two gets one empty chunk."""
    prompt, negative, empty = torch.ones(4, 4), torch.full((2, 4), 2.0), torch.full((2, 4), -1.0)
    conditioning = {prompt_branch(0): Schedule({0: prompt}), negative_branch(0): Schedule({0: negative})}
    d = Denoiser(FakeUNet(), conditioning, Guidance(scale=3.0), empty)
    hidden = d.hidden_states((negative_branch(0), prompt_branch(0)), 0, 2)
    assert hidden.shape == (4, 4, 4)
    assert torch.equal(hidden[0], torch.cat([negative, empty])) and torch.equal(hidden[1], hidden[0])
    assert torch.equal(hidden[2], prompt) and torch.equal(hidden[3], prompt)


def test_hidden_states_follow_the_prompts_schedule():
    d = denoiser(Guidance(scale=1.0), {prompt_branch(0): Schedule({0: torch.ones(2, 3), 3: torch.full((2, 3), 5.0)})})
    assert d.hidden_states((prompt_branch(0),), 0, 1).mean() == 1.0
    assert d.hidden_states((prompt_branch(0),), 4, 1).mean() == 5.0
    assert d.hidden_states((prompt_branch(0),), 1, 1).mean() == 1.0


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_the_unet_runs_under_autocast_only_when_asked_and_in_the_dtype_asked(dtype):
    d = denoiser(Guidance(scale=1.0), {prompt_branch(0): Schedule({0: torch.ones(2, 3)})}, autocast_dtype=dtype)
    d(torch.zeros(1, 1, 1, 1), torch.tensor(1.0), ctx())
    enabled, seen_dtype, _ = d.unet.seen[0]
    assert enabled is (dtype is not None)
    if dtype is not None:
        assert seen_dtype == dtype


def test_reuse_before_any_guided_evaluation_returns_the_prompt_alone():
    """With reuse, an evaluation skipped before guidance has ever run has no correction to add."""
    guidance = Guidance(scale=3.0, interval=Interval(start=0.5, reuse=True))
    d = denoiser(guidance, {prompt_branch(0): Schedule({0: torch.ones(2, 3)}),
                            negative_branch(0): Schedule({0: torch.full((2, 3), 2.0)})})
    x = torch.zeros(1, 1, 1, 1)
    assert torch.equal(d(x, torch.tensor(1.0), ctx(0)), torch.ones(1, 1, 1, 1))
    guided = d(x, torch.tensor(1.0), ctx(5))  # e_n + 3 (e_c - e_n) = 2 + 3 (1 - 2)
    assert torch.equal(guided, torch.full((1, 1, 1, 1), -1.0))
    assert torch.equal(d(x, torch.tensor(1.0), ctx(1)), torch.full((1, 1, 1, 1), -1.0))  # 1 + (-1 - 1)


class ChannelUNet(torch.nn.Module):
    """Records its input; returns the first channel of each row as the prediction."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x, timestep, encoder_hidden_states, return_dict=False):
        self.inputs.append(x.clone())
        return (x[:, :1],)


def test_an_inpainting_unets_extra_channels_follow_the_latents_in_every_branch():
    empty = torch.zeros(2, 3)
    extra = torch.stack([torch.full((2, 1, 1), 5.0), torch.full((2, 1, 1), 6.0)])  # per image: 2 extra channels
    d = Denoiser(ChannelUNet(), {EMPTY: Schedule({0: empty}), prompt_branch(0): Schedule({0: torch.ones(2, 3)}),
                                 negative_branch(0): Schedule({0: empty})}, Guidance(scale=3.0), empty,
                 image_conditioning=extra)
    x = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    out = d(x, torch.tensor(1.0), ctx())
    seen = d.unet.inputs[0]
    assert seen.shape == (4, 3, 1, 1)  # two branches of two images, each [x, extra]
    assert seen[:, 0].flatten().tolist() == [1.0, 2.0, 1.0, 2.0]
    assert seen[:, 1:].flatten().tolist() == [5.0, 5.0, 6.0, 6.0] * 2
    assert torch.equal(out, x)  # guidance combines the latent channels only: equal branches give x back
    plain = Denoiser(ChannelUNet(), d.conditioning, Guidance(scale=3.0), empty)
    plain(x, torch.tensor(1.0), ctx())
    assert plain.unet.inputs[0].shape == (4, 1, 1, 1)
