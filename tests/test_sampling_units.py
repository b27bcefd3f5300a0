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
    assert schedulers[1].seen[0] == (3.0, None, generators[1])  # the image's own generator; eta left to the scheduler
    assert schedulers[0].scaled_at == schedulers[1].scaled_at == [3.0, 2.0, 1.0, 0.0]


def test_a_scheduler_without_a_generator_argument_gets_none_and_steps_default_to_its_timesteps():
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


# ---------------------------------------------------------------- eta (avert.sampling.eta)

SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "timestep_spacing": "leading", "steps_offset": 1}


def _k_ancestral_step(sigma_from, sigma_to, eta):
    """k-diffusion's get_ancestral_step, written from its source (sampling.py)."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - up ** 2) ** 0.5, up


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0, 2.5])
def test_ancestral_sigmas_are_k_diffusions(eta):
    from avert.sampling.eta import ancestral_sigmas

    for sigma_from, sigma_to in [(14.6, 9.0), (1.0, 0.5), (0.3, 0.0)]:
        down, up = ancestral_sigmas(torch.tensor(sigma_from, dtype=torch.float64),
                                    torch.tensor(sigma_to, dtype=torch.float64), eta)
        assert (float(down), float(up)) == pytest.approx(_k_ancestral_step(sigma_from, sigma_to, eta), abs=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
def test_euler_a_at_eta_steps_by_the_formula_with_the_images_noise(eta):
    from avert.sampling.eta import EulerAncestralEta

    scheduler = EulerAncestralEta.from_config(SCHEDULE)
    scheduler.eta = eta
    scheduler.set_timesteps(5)
    x, eps = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1)), torch.full((1, 4, 2, 2), 0.25)
    generator, global_state = torch.Generator().manual_seed(7), torch.get_rng_state()
    prev, x0 = scheduler.step(eps, scheduler.timesteps[0], x, generator=generator, return_dict=False)
    assert torch.equal(torch.get_rng_state(), global_state)  # the image's generator only
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(7))
    sigma, sigma_next = float(scheduler.sigmas[0]), float(scheduler.sigmas[1])
    down, up = _k_ancestral_step(sigma, sigma_next, eta)
    assert torch.allclose(x0, x - sigma * eps)
    assert torch.allclose(prev, x + eps * (down - sigma) + noise * up, atol=1e-5)
    after = torch.Generator().manual_seed(7)
    torch.randn(1, 4, 2, 2, generator=after)
    assert torch.equal(generator.get_state(), after.get_state())  # one draw, whatever eta is
    output = scheduler.step(eps, scheduler.timesteps[1], prev, generator=generator)
    assert output.prev_sample.shape == x.shape and output.pred_original_sample.shape == x.shape


def test_euler_a_at_eta_draws_from_the_global_generator_when_given_none():
    from avert.sampling.eta import EulerAncestralEta

    scheduler = EulerAncestralEta.from_config(SCHEDULE)
    scheduler.eta = 0.5
    scheduler.set_timesteps(4)
    torch.manual_seed(3)
    first = scheduler.step(torch.ones(1, 1, 1, 1), scheduler.timesteps[0], torch.ones(1, 1, 1, 1), return_dict=False)
    scheduler = EulerAncestralEta.from_config(SCHEDULE)
    scheduler.eta = 0.5
    scheduler.set_timesteps(4)
    torch.manual_seed(3)
    assert torch.equal(first[0], scheduler.step(torch.ones(1, 1, 1, 1), scheduler.timesteps[0],
                                                torch.ones(1, 1, 1, 1), return_dict=False)[0])


@pytest.mark.parametrize("karras", [False, True])
def test_dpm2_a_at_eta_zero_has_dpm2s_schedule_and_at_one_diffusers_own(karras):
    from diffusers import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler

    from avert.sampling.eta import KDPM2AncestralEta

    config = {**SCHEDULE, "use_karras_sigmas": karras}
    ours, plain, theirs = (cls.from_config(config) for cls in (KDPM2AncestralEta, KDPM2DiscreteScheduler,
                                                                KDPM2AncestralDiscreteScheduler))
    ours.eta = 0.0
    for s in (ours, plain, theirs):
        s.set_timesteps(6)
    # DPM2 lays its midpoints out as [nan, m0, m0, m1, m1, ...], DPM2 a as [m0, m1, m1, m2, ...]; the values agree
    mine, its = ours.sigmas_interpol[::2], plain.sigmas_interpol[1::2]
    assert torch.allclose(mine[: len(its)], its[: len(mine)], atol=1e-5)
    assert torch.allclose(ours.timesteps, plain.timesteps, atol=1e-3)
    assert float(ours.sigmas_up.abs().max()) == 0.0
    assert ours.timesteps.dtype == plain.timesteps.dtype
    ours.eta = 1.0
    for steps, train in ((6, None), (5, 500)):  # diffusers' own arrays, NaN in the unused last places included
        ours.set_timesteps(steps, num_train_timesteps=train)
        theirs.set_timesteps(steps, num_train_timesteps=train)
        for name in ("sigmas_up", "sigmas_down", "sigmas_interpol", "timesteps"):
            assert torch.allclose(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0, equal_nan=True), name
    ours.eta = 0.5
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    base = ours.sigmas[::2].tolist()
    steps = [_k_ancestral_step(a, b, 0.5) for a, b in zip(base[:-1], base[1:])] + [(0.0, 0.0)]
    for name, column in (("sigmas_down", 0), ("sigmas_up", 1)):
        values = torch.tensor([s[column] for s in steps])
        layout = torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])  # diffusers' layout
        assert getattr(ours, name).shape == getattr(theirs, name).shape
        assert torch.allclose(getattr(ours, name), layout, rtol=1e-5, atol=1e-7), name


def test_ddim_takes_eta_from_the_scheduler_unless_the_step_is_given_one(monkeypatch):
    from diffusers import DDIMScheduler

    from avert.sampling.eta import DDIMEta

    seen = []
    monkeypatch.setattr(DDIMScheduler, "step", lambda self, *a, **kw: seen.append((a, kw)) or "stepped")
    scheduler = DDIMEta.from_config(SCHEDULE)
    scheduler.eta = 0.7
    generator = torch.Generator()
    assert scheduler.step(1, 2, 3, generator=generator) == "stepped"
    scheduler.step(1, 2, 3, eta=0.1, use_clipped_model_output=True, variance_noise=4, return_dict=False)
    assert seen == [((1, 2, 3), {"eta": 0.7, "use_clipped_model_output": False, "generator": generator,
                                 "variance_noise": None, "return_dict": True}),
                    ((1, 2, 3), {"eta": 0.1, "use_clipped_model_output": True, "generator": None, "variance_noise": 4,
                                 "return_dict": False})]
    assert DDIMEta.eta == 0.0


def test_a_sampler_is_built_at_its_eta():
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    from avert.sampling.eta import DDIMEta, EulerAncestralEta
    from avert.sampling.samplers import ETA_SAMPLERS, SAMPLERS

    assert ETA_SAMPLERS == ("Euler a", "DPM2 a", "DPM2 a Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ SDE",
                            "DPM++ SDE Karras", "DDIM")
    assert type(SAMPLERS["Euler a"].build(SCHEDULE, 0, None)) is EulerAncestralDiscreteScheduler
    assert type(SAMPLERS["Euler a"].build(SCHEDULE, 0, 1.0)) is EulerAncestralDiscreteScheduler
    built = SAMPLERS["Euler a"].build(SCHEDULE, 0, 0)
    assert type(built) is EulerAncestralEta and built.eta == 0.0 and isinstance(built.eta, float)
    assert type(SAMPLERS["DDIM"].build(SCHEDULE, 0, 0.0)) is DDIMScheduler
    assert type(SAMPLERS["DDIM"].build(SCHEDULE, 0, 1.0)) is DDIMEta
    assert SAMPLERS["DDIM"].build(SCHEDULE, 0, 1.0).config.timestep_spacing == "leading"
    assert SAMPLERS["DPM2 a Karras"].build(SCHEDULE, 0, 0.5).config.use_karras_sigmas is True  # the options kept
    assert [SAMPLERS[n].default_eta for n in ("Euler a", "DDIM", "DPM++ SDE", "Euler")] == [1.0, 0.0, 1.0, None]
    assert SAMPLERS["DPM++ 2M SDE Karras"].eta_option == SAMPLERS["DPM++ SDE"].eta_option == "eta_ancestral"
    sde = SAMPLERS["DPM++ SDE Karras"].build(SCHEDULE, 5, 0.25)
    assert (type(sde).__name__, sde.eta, sde.config.use_karras_sigmas, sde.noise_sampler_seed) == (
        "DPMSolverSDEEta", 0.25, True, 5)
    multistep = SAMPLERS["DPM++ 2M SDE"].build(SCHEDULE, 0, 0.5)
    assert (type(multistep).__name__, multistep.config.algorithm_type) == ("DPMSolverMultistepEta", "sde-dpmsolver++")


def test_the_loop_runs_from_begin_with_the_given_start():
    scheduler = FakeScheduler([5, 4, 3, 2, 1, 0], steps=6)  # no `order`: a first-order scheduler
    contexts = []

    def denoiser(model_in, t, ctx):
        contexts.append(ctx)
        return torch.ones_like(model_in)

    start = torch.full((1, 1, 1, 1), 5.0)
    out = sample(denoiser, [scheduler], torch.zeros(1, 1, 1, 1), [torch.Generator()], start=start, begin=4)
    assert [(c.index, c.total, c.timestep, c.step) for c in contexts] == [(0, 2, 1.0, 0), (1, 2, 0.0, 1)]
    assert all(type(c.step) is int for c in contexts)
    assert float(out) == 3.0  # 5 - 1 - 1, not from noise * init_noise_sigma
    second_order = FakeScheduler([4, 3, 3, 2, 2, 1, 1], steps=4)
    second_order.order = 2
    contexts.clear()
    sample(denoiser, [second_order], torch.zeros(1, 1, 1, 1), [torch.Generator()], start=start, begin=4)
    assert [c.step for c in contexts] == [0, 0, 1]  # 2 steps left: 4 - 4 // 2


def test_blend_replaces_the_latents_after_every_step_with_its_index():
    seen = []

    def blend(i, x):
        seen.append((i, float(x)))
        return x * 10

    out = sample(lambda model_in, t, ctx: torch.ones_like(model_in), [FakeScheduler([2, 1, 0])],
                 torch.ones(1, 1, 1, 1), [torch.Generator()], blend=blend)
    assert seen == [(0, 2.0), (1, 19.0), (2, 189.0)]  # 3 x 1 - 1, then (2 x 10) - 1, then (19 x 10) - 1
    assert float(out) == 1890.0
