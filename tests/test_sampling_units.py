"""The sampling loop, seeds and noise on fake schedulers and a recording denoiser: what each model evaluation is
handed (input, timestep, context) and what the loop does with what comes back."""

from __future__ import annotations

import pytest
import torch

from avert.sampling import noise as noise_module
from avert.sampling.loop import Cancelled, StepEvent, sample, sigma_function
from avert.schema import SEED_MAX


class FakeScheduler:
    """x <- x - output at every timestep; the model input is 2x (or x + 10 for the second image's scheduler)."""

    def __init__(self, timesteps, offset: float = 0.0, steps: int | None = None, with_options: bool = True):
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32)
        self.num_inference_steps = steps
        self.init_noise_sigma = 3.0
        self.alphas_cumprod = torch.tensor([0.8, 0.5, 0.2, 0.1])
        self.offset = offset
        self.seen, self.scaled_at = [], []
        if not with_options:
            self.step = self._plain_step

    def scale_model_input(self, x, t):
        self.scaled_at.append(float(t))
        return 2 * x + self.offset

    def step(self, output, t, x, eta=None, generator=None, return_dict=True):
        self.seen.append((float(t), eta, generator))
        return {"prev_sample": x - output} if return_dict else (x - output,)  # diffusers' two forms

    def _plain_step(self, output, t, x, return_dict=True):
        self.seen.append((float(t), None, None))
        return {"prev_sample": x - output} if return_dict else (x - output,)


def test_each_evaluation_gets_every_images_scaled_input_and_where_it_is_in_the_run():
    schedulers = [FakeScheduler([3, 2, 1, 0], steps=2), FakeScheduler([3, 2, 1, 0], offset=10.0, steps=2)]
    calls, events = [], []

    def denoiser(model_in, t, ctx):
        calls.append((model_in.clone(), float(t), ctx))
        return torch.ones_like(model_in)

    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    start = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    out = sample(denoiser, schedulers, start, generators, on_step=events.append)
    assert torch.equal(calls[0][0].flatten(), torch.tensor([6.0, 22.0]))  # 2 (3 x) and 2 (3 x) + 10
    assert torch.equal(calls[1][0].flatten(), torch.tensor([4.0, 20.0]))  # after one step of x - 1
    sigmas = [((1 - a) / a) ** 0.5 for a in (0.1, 0.2, 0.5, 0.8)]
    assert [(c.index, c.total, c.timestep, c.step) for _, _, c in calls] == [(0, 4, 3.0, 0), (1, 4, 2.0, 0),
                                                                            (2, 4, 1.0, 1), (3, 4, 0.0, 1)]
    assert [c.sigma for _, _, c in calls] == pytest.approx(sigmas)
    assert events == [StepEvent(1, 4), StepEvent(2, 4), StepEvent(3, 4), StepEvent(4, 4)]
    assert torch.equal(out.flatten(), torch.tensor([-1.0, 2.0]))  # 3 x - 4
    assert schedulers[1].seen[0] == (3.0, 0.0, generators[1])  # DDIM-style eta 0 and the image's own generator
    assert schedulers[0].scaled_at == schedulers[1].scaled_at == [3.0, 2.0, 1.0, 0.0]


def test_a_scheduler_without_eta_or_generator_gets_neither_and_steps_default_to_its_timesteps():
    scheduler = FakeScheduler([2, 1], with_options=False)
    del scheduler.num_inference_steps  # not every scheduler has one
    contexts = []

    def denoiser(model_in, t, ctx):
        contexts.append(ctx)
        return torch.zeros_like(model_in)

    sample(denoiser, [scheduler], torch.zeros(1, 1, 1, 1), [torch.Generator()])
    assert scheduler.seen == [(2.0, None, None), (1.0, None, None)]
    assert [c.step for c in contexts] == [0, 1]


def test_a_stop_request_ends_the_run_before_the_next_evaluation():
    evaluations = []

    def denoiser(model_in, t, ctx):
        evaluations.append(ctx.index)
        return torch.zeros_like(model_in)

    with pytest.raises(Cancelled, match="^stopped at step 2 of 4$"):
        sample(denoiser, [FakeScheduler([3, 2, 1, 0])], torch.zeros(1, 1, 1, 1), [torch.Generator()],
               should_stop=lambda: len(evaluations) == 2)
    assert evaluations == [0, 1]


def test_sigma_is_interpolated_between_integer_timesteps():
    sigma = sigma_function(FakeScheduler([0]))
    assert sigma(0) == pytest.approx(0.5) and sigma(1) == pytest.approx(1.0)
    assert sigma(0.5) == pytest.approx(0.75) and sigma(2.25) == pytest.approx(2.0 + 0.25 * (3.0 - 2.0))


def test_seeds_wrap_past_the_largest_and_minus_one_draws_a_fresh_one(monkeypatch):
    assert noise_module.image_seeds(SEED_MAX - 1, 3) == (SEED_MAX - 1, SEED_MAX, 0)
    assert noise_module.resolve_seed(7) == 7 and noise_module.resolve_seed(0) == 0
    asked = []
    monkeypatch.setattr(noise_module.secrets, "randbelow", lambda n: asked.append(n) or 42)
    assert noise_module.resolve_seed(-1) == 42 and asked == [SEED_MAX + 1]


def test_initial_noise_is_each_seeds_own_draw_and_the_generators_go_on_from_there():
    noise, generators = noise_module.initial_noise([5, 9], (2, 3, 3))
    for row, seed, g in zip(noise, [5, 9], generators):
        own = torch.Generator("cpu").manual_seed(seed)
        assert torch.equal(row[None], torch.randn((1, 2, 3, 3), generator=own))
        assert torch.equal(torch.randn(4, generator=g), torch.randn(4, generator=own))
    assert noise.dtype == torch.float32 and noise.shape == (2, 2, 3, 3)


def test_initial_noise_is_float32_whatever_the_default_dtype_and_goes_to_the_device_asked(monkeypatch):
    """diffusers draws float32 noise on the CPU; a caller's default dtype must not change the image."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        noise, _ = noise_module.initial_noise([5], (1, 2, 2))
    finally:
        torch.set_default_dtype(default)
    assert noise.dtype == torch.float32
    assert noise_module.initial_noise([5], (1, 2, 2), device="meta")[0].device.type == "meta"
