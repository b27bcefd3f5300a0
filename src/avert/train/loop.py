"""Training the embedded model: v-prediction with min-SNR weighting, bf16 autocast (where the CPU has native
bf16; fp32 otherwise), EMA, checkpoints, resume.

Loss (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", v-prediction form):
    L = E[ min(SNR(t), gamma) / (SNR(t) + 1) * || v_theta(x_t, t, c) - v ||^2 ],  v = sqrt(a_t) eps - sqrt(1 - a_t) x_0
With `object_weight` lambda > 0 the squared error is a weighted mean over pixels, w = 1 + lambda * m with m the
world's object mask (1 where an object is drawn): a small object (a tree covers 2-5% of a 32x32 image) then
counts for more than its area in the loss. The weight depends on the target, so it biases the optimum
E[w x_0 | x_t, c] / E[w | x_t, c] towards images with objects: with `object_mask` "all" (every object in the
image) the model draws objects more often also where the caption does not ask for them; with "named" (only the
objects the caption names) the bias stays with the objects the caption asks for. "named+tone" also counts a
named tone grade as naming every pixel: such a caption's weight is uniform, so after the per-image
normalisation its loss is the unweighted one, and a grade's conditional is learnt as without object weights.
With `tone_noise` p > 0 an image without a tone grade is trained, with chance p, on a random caption that names
only a tone ("a landscape, sepia"): in the world a tone is named exactly when the image is graded, so the
conditional of a tone phrase has no mass on ungraded images, and CFG with that phrase as the negative of an
ungraded prompt, e = e_n + w (e_c - e_n), extrapolates without bound (saturated, off-world images). Caption noise,
which real captions have, gives that conditional some mass there.
With `tone_noise_below` T < 1000 the swap is made only at timesteps t < T, late in a run, where the overshoot of a
tone negative happens (measured with `--negative-window`); with `tone_noise_captions` "bare" the swapped caption is
a tone phrase alone ("green tones"), the form a standing negative takes, so that captions naming a scene and a
tone ("a landscape, green tones") keep only graded images. Neither spares every use of a tone phrase: the grade is
finished late too, and a bare phrase diluted by noise no longer removes a grade that is there (measured in
docs/embedded-model.md).
Every step draws its batch and noise from generators seeded by (seed, step), so a resumed run continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avert.errors import ModelLoadError
from avert.train.config import TrainConfig
from avert.train.data import (TrainingSet, build_named_masks_with_tones, build_named_object_masks, build_object_masks,
                              build_training_set, tone_noise_table)
from avert.train.model import TRAINING_FILE, export_folder, new_scheduler, new_unet


def train(run: Path, config: TrainConfig, export: Path | None = None, progress: bool = True,
          init_from: Path | None = None, data_dir: Path | None = None) -> Path:
    """Train (or resume) in `run`; checkpoints and the exported model folder land there (and in `export`).

    `init_from` starts a new run from an exported model folder (e.g. the shipped one) instead of random
    weights, continuing its step count; an existing checkpoint in `run` takes precedence. The encoded
    training set is cached in `data_dir` (default RUN/data), keyed by its settings.
    """
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    config = config.resolved()  # a bad setting fails first
    unet, ema, optimizer, step, start = _resume_or_start(run, config, init_from)  # then a bad model, before the data
    data = build_training_set(config.images, config.seed, config.captions_per_image,
                              data_dir or run / "data", progress)
    config = dataclasses.replace(config, start=start)
    masks = _object_masks(config, data_dir or run / "data", progress)
    swaps = (tone_noise_table(config.images, config.seed, config.captions_per_image,
                              bare=config.tone_noise_captions == "bare") if config.tone_noise else None)
    scheduler = new_scheduler()
    alphas = scheduler.alphas_cumprod.float()
    bar = tqdm(total=config.steps, initial=step, desc="Training", unit="step", disable=not progress)
    losses: list[float] = []
    while step < config.steps:
        loss = train_step(unet, optimizer, data, alphas, config, step, masks, swaps)
        step += 1
        _update_ema(ema, unet, min(config.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            _checkpoint(run, unet, ema, optimizer, step, config, float(np.mean(losses[-config.checkpoint_every:])))
            export_folder(ema, run / "model", provenance(step, config), config.default_guidance)
    bar.close()
    return export_folder(ema, export or run / "model", provenance(step, config), config.default_guidance)


def provenance(step: int, config: TrainConfig) -> dict:
    """What an exported model records about its training (`training.json` in the folder)."""
    from avert import __version__

    return {"trained_steps": step, "config": asdict(config), "trainer": f"avert {__version__}",
            "weights": "EMA of the UNet weights, saved as float16"}


def train_step(unet, optimizer, data: TrainingSet, alphas: torch.Tensor, config: TrainConfig, step: int,
               masks: torch.Tensor | None = None, swaps: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """One optimiser step on a batch drawn from (seed, step); `masks` (`build_object_masks`) weight the pixels
    of objects by 1 + `config.object_weight`; `swaps` (`tone_noise_table`) swaps captions (see `_batch`)."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    t = torch.randint(0, len(alphas), (config.batch_size,), generator=generator)
    x0, cond, pixel_weight = _batch(data, config, step, masks, swaps, t)
    noise = torch.randn(x0.shape, generator=generator)
    a = alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate(step)
    bf16 = config.precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pred = unet(x_t, t, encoder_hidden_states=cond if bf16 else cond.float()).sample
    snr = a.flatten() / (1 - a.flatten())
    weight = torch.clamp(snr, max=config.min_snr_gamma) / (snr + 1)
    error = (pred.float() - v).pow(2)
    if pixel_weight is None:
        per_image = error.mean(dim=(1, 2, 3))
    else:
        per_image = (pixel_weight * error).mean(dim=(1, 2, 3)) / pixel_weight.mean(dim=(1, 2, 3))
    loss = (weight * per_image).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def _object_masks(config: TrainConfig, cache: Path, progress: bool) -> torch.Tensor | None:
    """None without an object weight; else bool [N, H, W] ("all") or [N, k, H, W] per caption ("named",
    "named+tone")."""
    if config.object_weight == 0:
        return None
    if config.object_mask == "named+tone":
        return build_named_masks_with_tones(config.images, config.seed, config.captions_per_image, cache, progress)
    if config.object_mask == "named":
        return build_named_object_masks(config.images, config.seed, config.captions_per_image, cache, progress)
    return build_object_masks(config.images, config.seed, cache, progress)


def _batch(data: TrainingSet, config: TrainConfig, step: int, masks: torch.Tensor | None = None,
           swaps: tuple[torch.Tensor, torch.Tensor] | None = None,
           t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Images, caption states and pixel weights of the batch of `step`. With `swaps` (ungraded, tone_only) an
    ungraded image takes, with chance `config.tone_noise`, a random caption that names only a tone: caption
    noise, so that a tone's conditional also covers ungraded images and does not extrapolate on them (a tone
    as the negative of an ungraded image otherwise drives CFG far off the images: see docs/embedded-model.md).
    Given the batch's timesteps `t`, only samples with t < `config.tone_noise_below` are swapped."""
    rng = np.random.default_rng([config.seed, step])
    idx = torch.from_numpy(rng.integers(0, len(data), config.batch_size))
    which = torch.from_numpy(rng.integers(0, data.caption_ids.shape[1], config.batch_size))
    images = data.images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
    flip = torch.from_numpy(rng.random(config.batch_size) < 0.5)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    ids = data.caption_ids[idx, which]
    swap = torch.zeros(config.batch_size, dtype=torch.bool)
    if swaps is not None:
        ungraded, tone_only = swaps
        swap = torch.from_numpy(rng.random(config.batch_size) < config.tone_noise) & ungraded[idx]
        if t is not None:
            swap &= t < config.tone_noise_below
        ids = torch.where(swap, tone_only[torch.from_numpy(rng.integers(0, len(tone_only), config.batch_size))], ids)
    cond = data.embeds[ids]
    if masks is None:
        return images, cond, None
    m = (masks[idx, which] if masks.dim() == 4 else masks[idx]).unsqueeze(1).float()
    m = torch.where(flip.view(-1, 1, 1, 1), m.flip(-1), m)
    m = torch.where(swap.view(-1, 1, 1, 1), torch.zeros_like(m), m)  # a swapped caption names no object
    return images, cond, 1 + config.object_weight * m


@torch.no_grad()
def _update_ema(ema, model, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def _resume_or_start(run: Path, config: TrainConfig, init_from: Path | None):
    torch.manual_seed(config.seed)
    unet = new_unet().train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.01)
    path = run / "checkpoint.pt"
    if not path.exists():
        step = _load_exported(unet, Path(init_from)) if init_from else 0
        return unet, copy.deepcopy(unet).eval().requires_grad_(False), optimizer, step, step
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    saved = torch.load(path, weights_only=True)
    unet.load_state_dict(saved["unet"])
    ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    return unet, ema, optimizer, int(saved["step"]), int(saved.get("start", 0))


def _load_exported(unet, folder: Path) -> int:
    """Copy an exported model's UNet weights into `unet`; return the steps it was trained for. The weights must
    fit `unet`'s architecture exactly; if they do not, the error names the weights that differ."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    try:
        weights = load_file(path)
    except (OSError, SafetensorError) as problem:
        raise ModelLoadError(f"init_from: {str(folder)!r} is not allowed; must be a model folder exported by "
                             f"`avert train` ({path.relative_to(folder)}: {problem})") from None
    expected = unet.state_dict()
    differ = sorted((expected.keys() ^ weights.keys())
                    | {k for k in expected.keys() & weights.keys() if weights[k].shape != expected[k].shape})
    if differ:
        raise ModelLoadError(f"init_from: the UNet in {str(folder)!r} does not fit this architecture "
                             f"({len(differ)} weights differ, e.g. {', '.join(differ[:3])})")
    unet.load_state_dict({k: v.float() for k, v in weights.items()})
    info = folder / TRAINING_FILE
    return int(json.loads(info.read_text())["trained_steps"]) if info.exists() else 0


def _checkpoint(run: Path, unet, ema, optimizer, step: int, config: TrainConfig, loss: float) -> None:
    tmp = run / "checkpoint.pt.tmp"
    torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "start": config.start}, tmp)
    tmp.replace(run / "checkpoint.pt")
    with open(run / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": step, "loss": loss, "time": time.time(), "config": asdict(config)}) + "\n")
