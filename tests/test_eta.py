"""eta: the ancestral samplers against k-diffusion's own samplers (what A1111 runs), DDIM against diffusers'
pipeline with the same eta, and eta's relations (0 is the deterministic sampler; the default is diffusers')."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from avert.errors import ValidationError
from avert.pipeline.generate import decode, generate
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest
from avert.sampling.loop import sample
from avert.sampling.samplers import SAMPLERS
from avert.validation import validate
from sampler_reference import reference_scheduler
from test_engine import BASE, pixels

STEPS = 6


@pytest.fixture(scope="module")
def kdiffusion():
    """k-diffusion's `sampling` and `external` modules, loaded from the installed package without its
    `__init__` (which imports torchvision, CLIP and wandb for training code) and with `utils` reduced to the one
    function the samplers call, `append_dims` (k-diffusion: x[(...,) + (None,) * (target_dims - x.ndim)])."""
    root = Path(importlib.util.find_spec("k_diffusion").submodule_search_locations[0])
    package = types.ModuleType("k_diffusion")
    package.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package.utils = utils
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "k_diffusion", package)
        patch.setitem(sys.modules, "k_diffusion.utils", utils)
        modules = {}
        for name in ("sampling", "external"):
            spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", root / f"{name}.py")
            modules[name] = importlib.util.module_from_spec(spec)
            patch.setitem(sys.modules, spec.name, modules[name])
            spec.loader.exec_module(modules[name])
            setattr(package, name, modules[name])
        yield types.SimpleNamespace(**modules)


class _EpsUNet(torch.nn.Module):
    """The tiny UNet with a fixed text condition, as k-diffusion's wrappers call a model: model(x, t)."""

    def __init__(self, unet, cond):
        super().__init__()
        self.unet, self.cond = unet, cond

    def forward(self, x, t):
        return self.unet(x, t, encoder_hidden_states=self.cond.expand(x.shape[0], -1, -1)).sample


def _both(tiny, kdiffusion, sampler: str, eta: float, seed: int = 7):
    """avert's loop and k-diffusion's sampler on the same UNet, sigmas, start and noise draws."""
    g = torch.Generator().manual_seed(99)
    cond = torch.randn(1, 77, tiny.unet.config.cross_attention_dim, generator=g)
    model = _EpsUNet(tiny.unet, cond).eval()
    scheduler = SAMPLERS[sampler].build(tiny.scheduler_config, seed, eta)
    scheduler.set_timesteps(STEPS)
    shape = (1, tiny.unet.config.in_channels, 8, 8)
    ours_g = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=ours_g)
    with torch.no_grad():
        ours = sample(lambda x, t, ctx: model(x, t), [scheduler], noise, [ours_g])
        theirs_g = torch.Generator().manual_seed(seed)
        start = torch.randn(shape, generator=theirs_g) * scheduler.init_noise_sigma  # the same start as avert's
        if sampler.startswith("DPM++ 2M"):  # diffusers' multistep solvers start in VP space: x / alpha for k-diffusion
            start = start * (1 + scheduler.sigmas[0].to(torch.float32) ** 2) ** 0.5
        denoiser = kdiffusion.external.DiscreteEpsDDPMDenoiser(model, scheduler.alphas_cumprod, quantize=False)
        run, sigmas, noise_sampler = _kdiffusion_sampler(kdiffusion, sampler, scheduler.sigmas.to(torch.float32),
                                                         start, seed, lambda: torch.randn(shape, generator=theirs_g))
        theirs = run(denoiser, start, sigmas, eta=eta, disable=True, noise_sampler=noise_sampler)
    return ours, theirs


def _kdiffusion_sampler(kdiffusion, sampler, sigmas, start, seed, draw):
    """k-diffusion's sampler for an A1111 name, its sigma list (diffusers' two-stage schedulers repeat sigmas) and
    the noise it gets: the draws of avert's generator, or for DPM++ SDE the Brownian tree A1111 gives it."""
    samplers = kdiffusion.sampling
    if sampler.startswith("DPM2"):
        return samplers.sample_dpm_2_ancestral, sigmas[::2], lambda s, s_next: draw()
    if sampler.startswith("DPM++ SDE"):  # s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
        tree = samplers.BrownianTreeNoiseSampler(start, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed)
        return samplers.sample_dpmpp_sde, sigmas, tree
    run = {"Euler a": samplers.sample_euler_ancestral, "DPM++ 2M SDE": samplers.sample_dpmpp_2m_sde}[sampler]
    return run, sigmas, lambda s, s_next: draw()


@pytest.mark.parametrize("sampler", ["Euler a", "DPM2 a", "DPM++ 2M SDE", "DPM++ SDE"])
@pytest.mark.parametrize("eta", [0.0, 0.35, 1.0])
def test_ancestral_samplers_equal_k_diffusions_at_every_eta(tiny, kdiffusion, sampler, eta):
    """k-diffusion's `sample_euler_ancestral` / `sample_dpm_2_ancestral` / `sample_dpmpp_2m_sde` /
    `sample_dpmpp_sde(eta=...)` with its own `DiscreteEpsDDPMDenoiser` (its c_in and sigma -> t): the decoded
    images agree within 1/255."""
    ours, theirs = _both(tiny, kdiffusion, sampler, eta)
    assert torch.allclose(ours, theirs, atol=2e-4, rtol=1e-4), (ours - theirs).abs().max()
    runtime = Runtime()
    ours_image, theirs_image = (pixels(decode(x, tiny, runtime)[0]) for x in (ours, theirs))
    assert np.abs(ours_image - theirs_image).max() <= 1


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE"])
def test_eta_changes_the_ancestral_result_where_k_diffusion_says_it_does(tiny, kdiffusion, sampler):
    """Guards the parity above against an eta that does nothing: 0.35 and 1 differ, on both sides."""
    low, low_theirs = _both(tiny, kdiffusion, sampler, 0.35)
    full, full_theirs = _both(tiny, kdiffusion, sampler, 1.0)
    assert (low - full).abs().max() > 0.05 and (low_theirs - full_theirs).abs().max() > 0.05


@pytest.mark.parametrize("ancestral, plain", [("Euler a", "Euler"), ("DPM2 a", "DPM2"),
                                              ("DPM2 a Karras", "DPM2 Karras")])
def test_eta_zero_renders_the_samplers_deterministic_twin(tiny, ancestral, plain):
    """At eta 0 an ancestral step adds no noise and steps to sigma' itself: A1111's "Euler a" with the API's
    default eta 0 is "Euler" (and DPM2 a is DPM2), within a level (DPM2 a's midpoints are recomputed in float32)."""
    request = BASE.replace(steps=STEPS)
    ours = generate(request.replace(sampler=ancestral, eta=0.0), tiny).images[0].image
    twin = generate(request.replace(sampler=plain), tiny).images[0].image
    assert np.abs(pixels(ours) - pixels(twin)).max() <= 1


@pytest.mark.parametrize("sampler, eta", [("Euler a", 1.0), ("DDIM", 0.0), ("DPM++ 2M SDE", 1.0)])
def test_the_default_eta_is_diffusers_own_scheduler(tiny, sampler, eta):
    scheduler = SAMPLERS[sampler].build(tiny.scheduler_config, 3, eta)
    assert type(scheduler) is type(reference_scheduler(sampler, tiny.scheduler_config, 3))
    request = BASE.replace(sampler=sampler, steps=STEPS)
    assert np.array_equal(pixels(generate(request.replace(eta=eta), tiny).images[0].image),
                          pixels(generate(request, tiny).images[0].image))


def test_ddim_eta_equals_diffusers_pipeline_with_the_same_eta(tiny, diffusers_pipe):
    from test_engine import diffusers_image

    request = BASE.replace(sampler="DDIM", steps=STEPS, eta=0.6)
    ours = pixels(generate(request, tiny).images[0].image)
    theirs = pixels(diffusers_image(diffusers_pipe, tiny, request, eta=0.6))
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(ours - pixels(generate(request.replace(eta=None), tiny).images[0].image)).max() > 5


@pytest.mark.parametrize("sampler, eta, allowed", [
    ("Euler", 0.0, "applies only with the samplers that take eta"),
    ("DPM++ 2M SDE", 1.5, "must be a number from 0 to 1"),
    ("Euler a", 1.5, "must be a number from 0 to 1"),
])
def test_eta_is_refused_by_name_where_it_means_nothing_or_cannot_be_run(sampler, eta, allowed):
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest("x", sampler=sampler, eta=eta))
    assert [p.field for p in error.value.problems] == ["eta"]
    assert allowed in error.value.problems[0].allowed


def test_eta_is_written_as_a1111_writes_it_and_read_back(tiny):
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    made = {}
    for sampler, eta in [("Euler a", 0.0), ("Euler a", 1.0), ("DDIM", 0.5), ("DDIM", 0.0), ("Euler", None)]:
        text = generate(BASE.replace(sampler=sampler, eta=eta, steps=2), tiny).images[0].infotext
        made[(sampler, eta)] = text
        again = request_from_a1111(parse_parameters(text))
        assert again.eta == (eta if eta not in (1.0, None) and not (sampler == "DDIM" and eta == 0.0) else None)
    assert "Eta: 0.0" in made[("Euler a", 0.0)] and "Eta DDIM: 0.5" in made[("DDIM", 0.5)]
    assert not any("Eta" in made[k] for k in [("Euler a", 1.0), ("DDIM", 0.0), ("Euler", None)])
