"""The generation pipeline, as numbered steps, each a call into its module."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from avert.conditioning.embeddings import EmbeddingLibrary
from avert.errors import FieldProblem, ValidationError
from avert.guidance import attention, perturb
from avert.guidance.attribution import NegativeMaps
from avert.guidance.compose import default_rule
from avert.guidance.denoiser import Denoiser
from avert.init_image import InitImage
from avert.models.components import Components
from avert.pipeline import hires, img2img, inpaint, metadata, tiling, work
from avert.models import lora
from avert.pipeline.advice import advice, native_size
from avert.pipeline.conditioning import condition, empty_negative
from avert.pipeline.result import GeneratedImage, GenerationResult, NegativeMap
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest
from avert.sampling.loop import Cancelled, StepEvent, sample
from avert.sampling.noise import image_seeds, initial_noise, resolve_seed
from avert.sampling.samplers import sampler_spec
from avert.schema import Limits
from avert.validation import family_problems, prompt_fields, schedule_problems, validate


@torch.no_grad()  # as diffusers' pipelines run
def generate(
    request: GenerationRequest,
    components: Components,
    *,
    runtime: Runtime = Runtime(),
    limits: Limits = Limits(),
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    embeddings: EmbeddingLibrary = EmbeddingLibrary(),
    maps: bool = False,
    loras: lora.LoraLibrary = lora.LoraLibrary(),
) -> GenerationResult:
    """Render `request.batch_size` images; image i uses seed + i and equals that seed rendered alone. With
    `maps`, each image also gets, per negative, where it acted (`avert.guidance.attribution`; the hires fix's
    first pass), at the cost of the empty prompt's branch where a step would not evaluate it. The prompt's
    `<lora:NAME:WEIGHT>` tags name files of `loras`, applied for this run only (`avert.models.lora`)."""
    started = time.perf_counter()
    request = resolve(check(request, limits, components, maps), components)          # 1. validate, defaults
    if maps:
        check_maps(request)
    problems = lora.lora_problems(request.prompt, [(f, t) for f, t in prompt_fields(request) if f != "prompt"],
                                  loras)
    if problems:
        raise ValidationError(problems)
    with lora.applied(components, lora.lora_uses(request.prompt), loras) as hashes:  #    LoRAs, for this run
        return _render(request, components, runtime, on_step, should_stop, embeddings, maps, started, hashes)


def _render(request: GenerationRequest, components: Components, runtime: Runtime, on_step, should_stop,
            embeddings: EmbeddingLibrary, maps: bool, started: float, hashes) -> GenerationResult:
    seeds = image_seeds(request.seed, request.batch_size)
    text = condition(request, components, runtime, embeddings)                       # 2. text -> branches
    schedulers = make_schedulers(request, components, seeds, runtime)               # 3. one scheduler per image
    shape = latent_shape(request, components)
    plan = inpaint.plan(request) if request.mask is not None else None
    nag, perturbed = nag_state(request), perturb_state(text.guidance, components)
    with tiling.circular(components, request.tiling), attention.installed(components.unet, nag), \
            perturb.installed(components.unet, perturbed):                         # seamless; NAG; pag, seg, slg
        begun = begin_run(request, components, runtime, schedulers, seeds, shape, plan)  # 4. where the run starts
        denoiser = Denoiser(components.unet, text.branches, text.guidance, text.empty,   # 5. guidance, denoiser
                            runtime.autocast_dtype, begun.image_conditioning,
                            maps=NegativeMaps(text.guidance.prediction_type) if maps else None, sizes=text.sizes,
                            nag=nag, perturb=perturbed)
        first = len(schedulers[0].timesteps) - begun.begin
        total = first + (hires_evaluations(request, components) if request.enable_hr else 0)
        latents = sample(denoiser, schedulers, begun.noise, begun.generators, progress(on_step, 0, total),
                         should_stop, start=begun.x, begin=begun.begin,                      # 6. the one loop
                         blend=blending(plan, components, begun, schedulers))
        if request.enable_hr:                                                        #    hires fix: 2nd pass
            latents, second = hires_pass(request, latents, components, runtime, embeddings, seeds,
                                         progress(on_step, first, total), should_stop, nag, perturbed)
            denoiser.count.forwards += second.count.forwards
            denoiser.count.branches += second.count.branches
        if should_stop is not None and should_stop():
            raise Cancelled("stopped before decoding")
        pictures = decode(latents, components, runtime)                              # 7. latents -> images
    if plan is not None:
        pictures = [plan.paste(p) for p in pictures]                                 #    paste the rest back
    found = negative_maps(request, denoiser, shape) if maps else [()] * len(seeds)
    return result(request, components, pictures, seeds, text.guidance, denoiser.count, time.perf_counter() - started,
                  found, hashes)                                                     # 8. metadata


def result(request: GenerationRequest, components: Components, pictures: list[Image.Image], seeds, guidance,
           count, seconds: float, found=None, loras: tuple[tuple[str, str], ...] = ()) -> GenerationResult:
    """The images of a run with their infotexts and records (and maps, where `found` holds them); `loras` the
    (name, hash) of the LoRAs applied (A1111's `Lora hashes`)."""
    found = found or [()] * len(seeds)
    images = tuple(
        GeneratedImage(img, s, metadata.infotext(request, s, components.source, loras),
                       metadata.record(request, s, i, components.source, found[i], carriers(request, guidance)),
                       found[i])
        for i, (img, s) in enumerate(zip(pictures, seeds))
    )
    return GenerationResult(request, images, advice(request, components) + negative_warnings(request, components),
                            count.forwards, seconds, count.branches)


def carriers(request: GenerationRequest, guidance) -> tuple[str, ...]:
    """What carries each negative the guidance sees: its method's UNet branch (where the scales let it act), NAG in
    attention, both ("cfg+nag"), or nothing ("none", which `negative_warnings` names)."""
    ways = ([request.guidance] if guidance.can_act() else []) + (["nag"] if request.nag_scale != 1.0 else [])
    return tuple("+".join(ways) or "none" for _ in request.guided_negatives())


def nag_state(request: GenerationRequest) -> attention.NagState | None:
    """The run's NAG (`avert.guidance.attention`), when nag_scale asks for it."""
    settings = attention.NagSettings(request.nag_scale, request.nag_tau, request.nag_alpha, request.nag_end)
    return attention.NagState(settings) if settings.on else None


def perturb_state(guidance, components: Components) -> perturb.PerturbState | None:
    """The run's perturbed branch (pag, seg, slg: `avert.guidance.perturb`); layers the model lacks are refused by
    name before any work."""
    p = guidance.perturbation
    if p is None:
        return None
    try:
        perturb.blocks(components.unet, p.layers)
    except ValueError as error:
        raise ValidationError([FieldProblem("perturbed_guidance_layers", ",".join(p.layers), str(error))]) from None
    return perturb.PerturbState(p)


def check_maps(request: GenerationRequest) -> None:
    """Maps cover the whole run; inpainting at full resolution runs on a crop of the image: refused by name."""
    if request.mask is not None and request.inpaint_full_res:
        raise ValidationError([FieldProblem("map", True, "is not available with inpaint_full_res (the run sees "
                                            "only the masked area's crop): leave one of them off")])


def negative_maps(request: GenerationRequest, denoiser: Denoiser, shape: tuple[int, int, int]
                  ) -> list[tuple[NegativeMap, ...]]:
    """Per image, the map of every negative the guidance saw (`GenerationRequest.guided_negatives`)."""
    negatives = request.guided_negatives()
    values = denoiser.maps.maps(len(negatives), request.batch_size, *shape[1:]).numpy()
    return [tuple(NegativeMap(n.text, v) for n, v in zip(negatives, image)) for image in values]


def begin_run(request: GenerationRequest, components: Components, runtime: Runtime, schedulers, seeds,
              shape: tuple[int, int, int], plan: inpaint.Plan | None) -> img2img.Start:
    """The noise of a txt2img run (with a 9-channel UNet's extra input: all masked, the image all 0, as A1111
    conditions an inpainting model then), or the noised init image of an img2img or inpainting run."""
    if request.init_image is not None:
        return img2img.start(request, components, runtime, schedulers, seeds, shape, plan)
    noise, generators = initial_noise(seeds, shape, runtime.device)
    extra = inpaint.image_conditioning(None, None, components, generators, runtime, shape[-2:])
    return img2img.Start(None, None, noise, generators, 0, extra)


def hires_pass(request: GenerationRequest, latents: torch.Tensor, components: Components, runtime: Runtime,
               embeddings: EmbeddingLibrary, seeds, on_step, should_stop,
               nag: attention.NagState | None = None,
               perturbed: perturb.PerturbState | None = None) -> tuple[torch.Tensor, Denoiser]:
    """The hires fix's second pass (`avert.pipeline.hires`) on the first pass's latents; its latents and denoiser."""
    size = hires.target(request, components.vae_scale_factor)
    second = hires.second_request(request, size)
    passes = request.hr_second_pass_steps or request.steps
    text = condition(second.replace(steps=passes), components, runtime, embeddings)  # schedules over the steps run
    schedulers = make_schedulers(second, components, seeds, runtime)
    big, generators = hires.enlarge(latents, request, size, components, seeds, runtime,
                                    lambda small: decode(small, components, runtime))
    x, noise, index = hires.begin(second, passes, schedulers, big, generators)
    extra = inpaint.image_conditioning(None, None, components, generators, runtime, big.shape[-2:])
    denoiser = Denoiser(components.unet, text.branches, text.guidance, text.empty, runtime.autocast_dtype, extra,
                        sizes=text.sizes, nag=nag, perturb=perturbed)
    return sample(denoiser, schedulers, noise, generators, on_step, should_stop, start=x, begin=index), denoiser


def hires_evaluations(request: GenerationRequest, components: Components) -> int:
    """Model evaluations of the hires fix's second pass."""
    return work.evaluations(hires.counted(request, components.vae_scale_factor), components)


def progress(on_step, done: int, total: int):
    """`on_step` for a pass that starts after `done` of `total` evaluations (the hires fix has two passes)."""
    if on_step is None:
        return None
    return lambda event: on_step(StepEvent(done + event.done, total, event.denoised))


def blending(plan: inpaint.Plan | None, components: Components, begun: img2img.Start, schedulers):
    """Inpainting on a 4-channel UNet keeps the unmasked latents after every step; a 9-channel UNet is not blended."""
    if plan is None or components.image_channels:
        return None
    mask = plan.latent_mask(begun.latents.shape[-2:]).to(begun.latents.device)
    return inpaint.Blend(mask, begun.latents, begun.noise, schedulers, begun.begin)


def model_limits(limits: Limits, components: Components) -> Limits:
    """The limits, widened so that the model's native size is always allowed (the embedded model is 32x32)."""
    return dataclasses.replace(limits, min_size=min(limits.min_size, native_size(components)))


def check(request: GenerationRequest, limits: Limits, components: Components, maps: bool = False
          ) -> GenerationRequest:
    """Validate against the model: its native size is allowed, a request without `guidance` is checked
    against the model's default method, and its work (with `maps`, a map's too) is held to `limits.max_work`
    where one is set."""
    if isinstance(request.init_image, InitImage):  # the size it gives is held to the limits as a size asked for
        request = request.replace(**dict(zip(("width", "height"), default_size(request, components))))
    validate(request, model_limits(limits, components), components.default_guidance)
    problems = family_problems(request, components.is_sdxl) + schedule_problems(request, components.scheduler_config)
    if problems:
        raise ValidationError(problems)
    if limits.max_work is not None:
        work.check([request_work(request, components, maps)], limits.max_work)
    return request


def request_work(request: GenerationRequest, components: Components, maps: bool = False) -> work.Work:
    """The work of a validated request (`avert.pipeline.work`), its size and method as the model resolves them;
    with the hires fix, its second pass too; `maps`: the first pass records where the negatives acted."""
    width, height = default_size(request, components)
    sized = request.replace(width=width, height=height)
    method = request.guidance or components.default_guidance
    first = work.estimate(sized, components, method, maps)
    if not request.enable_hr:
        return first
    second = work.estimate(hires.counted(sized, components.vae_scale_factor), components, method)
    return dataclasses.replace(first, extra=second.megapixel_steps)


def resolve(request: GenerationRequest, components: Components) -> GenerationRequest:
    """Fill what the request leaves to the model or to chance: the seed, the model's native size, and the
    model's guidance method (`Components.default_guidance`: cfg unless the model's folder names another) and its
    rule for several negatives (`avert.guidance.compose.default_rule`); an SDXL model's empty negative (zeros or
    encoded: the model config's unless the request names one)."""
    guidance = request.guidance if request.guidance is not None else components.default_guidance
    width, height = default_size(request, components)
    rule = request.negatives_rule or default_rule(guidance)
    empty = empty_negative(request, components) if components.is_sdxl else request.empty_negative
    return request.replace(seed=resolve_seed(request.seed), width=width, height=height, guidance=guidance,
                           negatives_rule=rule, empty_negative=empty)


def default_size(request: GenerationRequest, components: Components) -> tuple[int, int]:
    """width and height, where the request leaves them out: the init image's size rounded down to a multiple of 8
    (as diffusers' img2img does), else the model's native size."""
    native = native_size(components)
    image = request.init_image
    if image is None:
        return request.width or native, request.height or native
    return request.width or max(8, image.width // 8 * 8), request.height or max(8, image.height // 8 * 8)


def negative_warnings(request: GenerationRequest, components: Components | None = None) -> tuple[str, ...]:
    """Tell the user when the negatives cannot steer away (never drop them silently)."""
    distilled = components is not None and getattr(components.unet.config, "time_cond_proj_dim", None)
    if request.all_negatives() and distilled:
        return ("this model is guidance-distilled (its UNet takes a guidance embedding, time_cond_proj_dim): it "
                "was trained to be sampled without CFG, so the negatives are applied by the chosen formula but the "
                "result may be poor; use a model trained for CFG",)
    if not request.all_negatives() or request.cfg_scale > 1.0 or request.guidance not in ("cfg", "apg", "gated") \
            or request.negative_scale not in (None, request.cfg_scale):
        return ()
    scale = "negative_scale" if request.guidance == "cfg" else "guidance cfg with negative_scale"
    if request.cfg_scale == 1.0 and request.nag_scale != 1.0:
        return ()  # NAG carries the negatives in attention
    if request.cfg_scale == 1.0:
        return (f"negative_prompt has no effect at cfg_scale {request.cfg_scale:g}: guidance e_n + w (e_c - e_n) "
                f"is the prompt's prediction alone at w = 1; use a cfg_scale above 1, set {scale} "
                "(e = e_0 + w (e_c - e_0) - w_n (e_n - e_0) works at any cfg_scale), or steer in attention with "
                "nag_scale (e.g. --nag-scale 3: no second UNet pass)",)
    return (f"negative_prompt does not steer away at cfg_scale {request.cfg_scale:g}: below 1, guidance "
            f"e_n + w (e_c - e_n) pulls the image toward the negative; use a cfg_scale above 1, or set {scale}",)


def make_schedulers(request: GenerationRequest, components: Components, seeds, runtime: Runtime) -> list:
    spec = sampler_spec(request.sampler)
    schedulers = [spec.build(components.scheduler_config, seed, request.eta, request.schedule_type) for seed in seeds]
    for s in schedulers:
        s.set_timesteps(request.steps, device=runtime.device)
    return schedulers


def latent_shape(request: GenerationRequest, components: Components) -> tuple[int, int, int]:
    factor = components.vae_scale_factor
    return (components.latent_channels, request.height // factor, request.width // factor)


@torch.no_grad()
def decode(latents: torch.Tensor, components: Components, runtime: Runtime) -> list[Image.Image]:
    """Latents to PIL images as diffusers does: VAE decode of latents / scaling_factor, x / 2 + 0.5, round."""
    if components.vae is not None:
        dtype = runtime.autocast_dtype
        autocast = torch.autocast(latents.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            latents = components.vae.decode(latents / components.vae.config.scaling_factor, return_dict=False)[0]
    pixels = (latents.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p) for p in (pixels * 255).round().astype(np.uint8)]
