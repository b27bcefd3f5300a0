"""`avert bench sdxl`: the SDXL base architecture at its real size, avert against diffusers in the same run.

The components are built from the shipped SDXL base 1.0 configs (`avert/models/configs/sdxl`) with random weights
(seeded; no weights are downloaded): a 2.57B-parameter UNet, both text encoders and the VAE, in fp32. avert and
diffusers' `StableDiffusionXLPipeline` share the very same modules, so neither holds a second copy. Each run
renders one image at `size` x `size` with a negative (plain CFG: two branches per step) and `steps` Euler steps.
Runs go in the order avert, diffusers, diffusers, avert (`repeats` 2; each library first once), and each figure is
the mean of a library's runs, so neither gains from running second (the allocator's pools, the page cache).

Reported per library: the UNet's time per step (a forward hook on the shared UNet times every evaluation: one
batched forward of both branches), the whole run's time, and the peak resident memory above what the process held
before the run (sampled every 20 ms). The two images must agree (random weights give noise-like pictures, so this
is only a check that both ran the same computation).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

from avert.bench import publish
from avert.evaluation.common import machine

PROMPT, NEGATIVE = "a red house on a hill, photograph", "blurry, green tones"


@dataclass(frozen=True)
class Run:
    library: str
    step_s: float  # median UNet evaluation (both branches), seconds
    total_s: float  # the whole generation: text, steps, VAE decode
    peak_gib: float  # peak resident memory above the level before the run


def build_sdxl_components():
    """SDXL base 1.0's architecture with seeded random weights, as avert `Components`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from avert.models.components import Components, ModelSource
    from avert.models.single_file import shipped_config_dir

    folder = shipped_config_dir("sdxl")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
    first = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    second = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    for module in (unet, vae, first, second):
        module.eval().requires_grad_(False)
    import json

    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return Components(unet, vae, first, CLIPTokenizer.from_pretrained(folder / "tokenizer"), scheduler,
                      ModelSource(folder, "sdxl-base-random", "random", "random"),
                      text_encoder_2=second, tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
                      force_zeros_for_empty_prompt=True)


def run_sdxl_benchmark(size: int = 1024, steps: int = 1, docs: Path = Path("docs"), repeats: int = 2) -> list[Run]:
    """Measure avert and diffusers on the same components (ABBA order, `repeats` runs each), print the table,
    write docs/benchmarks/sdxl.md."""
    from diffusers import StableDiffusionXLPipeline

    from avert.pipeline.generate import generate
    from avert.request import GenerationRequest
    from avert.sampling.samplers import sampler_spec

    started = time.perf_counter()
    components = build_sdxl_components()
    built = time.perf_counter() - started
    request = GenerationRequest(PROMPT, NEGATIVE, seed=1, steps=steps, cfg_scale=7.0, width=size, height=size,
                                sampler="Euler", guidance="cfg")
    pipe = StableDiffusionXLPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                     text_encoder_2=components.text_encoder_2, tokenizer=components.tokenizer,
                                     tokenizer_2=components.tokenizer_2, unet=components.unet,
                                     scheduler=sampler_spec("Euler").build(components.scheduler_config, 1))
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        pipe.scheduler = sampler_spec("Euler").build(components.scheduler_config, 1)
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0, width=size,
                    height=size, generator=torch.Generator().manual_seed(1)).images[0]

    ours = lambda: generate(request, components).images[0].image  # noqa: E731
    runs: dict[str, list[Run]] = {"avert": [], "diffusers": []}
    images = {}
    for k in range(repeats):
        order = (("avert", ours), ("diffusers", theirs)) if k % 2 == 0 else (("diffusers", theirs), ("avert", ours))
        for library, run in order:
            measured, images[library] = _measure(library, components.unet, run)
            runs[library].append(measured)
    difference = int(np.abs(np.asarray(images["avert"], dtype=int) - np.asarray(images["diffusers"], dtype=int)).max())
    means = [_mean(library, measured) for library, measured in runs.items()]
    publish(_table(means, size, steps, built, difference, repeats), docs / "benchmarks" / "sdxl.md")
    return means


def _mean(library: str, runs: list[Run]) -> Run:
    return Run(library, statistics.mean(r.step_s for r in runs), statistics.mean(r.total_s for r in runs),
               statistics.mean(r.peak_gib for r in runs))


def _measure(library: str, unet, run) -> tuple[Run, object]:
    times: list[float] = []
    marks: dict[str, float] = {}
    pre = unet.register_forward_pre_hook(lambda *_: marks.__setitem__("start", time.perf_counter()))
    post = unet.register_forward_hook(lambda *_: times.append(time.perf_counter() - marks["start"]))
    sampler = _PeakMemory()
    started = time.perf_counter()
    try:
        with sampler:
            image = run()
    finally:
        pre.remove()
        post.remove()
    total = time.perf_counter() - started
    return Run(library, statistics.median(times), total, sampler.peak_gib), image


class _PeakMemory:
    """The peak resident set size above its level at entry, sampled every 20 ms by a thread."""

    def __enter__(self):
        import psutil

        self.process, self.stop = psutil.Process(), threading.Event()
        self.base = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def peak_gib(self) -> float:
        return (self.peak - self.base) / 2**30


def _table(runs: list[Run], size: int, steps: int, built: float, difference: int, repeats: int) -> str:
    ours, theirs = runs
    head = [
        "# SDXL at its real size: avert vs diffusers on the same components",
        "",
        f"Measured {date.today().isoformat()} by `avert bench sdxl` on {machine()}; SDXL base 1.0's architecture from "
        f"the shipped configs with random weights (fp32; built in {built:.0f} s), {size}x{size}, {steps} Euler "
        f"step(s), cfg 7, a prompt and a negative (two branches per step, batched), {repeats} runs each in the order "
        "avert, diffusers, diffusers, avert; means.",
        "Step: the UNet's evaluation of both branches (median). Peak memory: resident memory above the level before "
        f"the run. Largest pixel difference between the two images: {difference}/255.",
        "",
        "| library | s per step | s for the image | peak memory above the model, GiB |",
        "|---|---|---|---|",
    ]
    body = [f"| {r.library} | {r.step_s:.1f} | {r.total_s:.1f} | {r.peak_gib:.2f} |" for r in runs]
    ratio = ["", f"avert / diffusers: {ours.step_s / theirs.step_s:.2f} per step, "
             f"{ours.total_s / theirs.total_s:.2f} for the image, peak memory {ours.peak_gib:.2f} vs "
             f"{theirs.peak_gib:.2f} GiB."]
    return "\n".join(head + body + ratio)
