"""Settings of a training run (also the `avert train` flags)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from avert.schema import GUIDANCE_METHODS


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 25000
    batch_size: int = 32
    images: int = 80000
    captions_per_image: int = 2
    lr: float = 4e-4
    warmup: int = 500
    decay_from: int = 0
    ema_decay: float = 0.9995
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 500
    seed: int = 0
    start: int = 0
    precision: str = "auto"  # "bf16" (autocast), "fp32", or "auto": bf16 where the CPU computes it natively
    object_weight: float = 0.0  # extra loss weight on the pixels of objects (see `loop.train_step`)
    tone_noise: float = 0.0  # chance that an ungraded image is trained on a caption naming only a tone (`_batch`)
    tone_noise_below: int = 1000  # ... only at training timesteps t below this (1000: at every timestep)
    tone_noise_captions: str = "tone-only"  # ... drawn from every tone-only caption, or only "bare" tone phrases
    object_mask: str = "all"  # which pixels `object_weight` weighs: all objects, the "named" ones, "named+tone"
    # the guidance the exported model recommends (its avert.json): gated, because the world names a tone exactly
    # when the image has it, and under plain CFG such a tone as a standing negative wrecks the image
    # (docs/embedded-model.md, "The embedded model's default guidance")
    default_guidance: str = "gated"

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over `warmup` steps from `start` (the step a run began at: 0, or the step count of
        the model it was started from, whose fresh optimiser state needs the warm-up again), then constant;
        from `decay_from` (when > 0) a linear decay that reaches 5% of `lr` at `steps`. Annealing the rate at
        the end lowers the final loss (Loshchilov & Hutter 2017 anneal with a cosine; a linear ramp is the
        simpler schedule used here):
        lr(t) = lr * min(1, (t+1-start)/warmup)
                   * (1 - 0.95 * clamp((t - decay_from) / (steps - decay_from), 0, 1))."""
        rate = self.lr * min(1.0, (step + 1 - self.start) / self.warmup)
        if 0 < self.decay_from <= step:
            span = max(1, self.steps - self.decay_from)
            rate *= 1.0 - 0.95 * min(1.0, (step - self.decay_from) / span)
        return rate

    def resolved(self) -> "TrainConfig":
        """This config with `precision` "auto" made concrete for this machine; an unknown precision is an
        error naming it (never a silent fp32)."""
        from avert.pipeline.runtime import native_bf16

        if not 0.0 <= self.object_weight <= 100.0:
            raise ValueError(f"object_weight: {self.object_weight!r} is not allowed; must be a number from 0.0 to 100.0")
        if not 0.0 <= self.tone_noise <= 1.0:
            raise ValueError(f"tone_noise: {self.tone_noise!r} is not allowed; must be a number from 0.0 to 1.0")
        if not 1 <= self.tone_noise_below <= 1000:
            raise ValueError(f"tone_noise_below: {self.tone_noise_below!r} is not allowed; must be an integer "
                             "from 1 to 1000 (a training timestep)")
        if self.tone_noise_captions not in TONE_NOISE_CAPTIONS:
            raise ValueError(f"tone_noise_captions: {self.tone_noise_captions!r} is not allowed; must be one of "
                             f"{', '.join(TONE_NOISE_CAPTIONS)}")
        if self.tone_noise == 0.0 and (self.tone_noise_below, self.tone_noise_captions) != (1000, "tone-only"):
            raise ValueError(f"tone_noise: {self.tone_noise!r} is not allowed with tone_noise_below or "
                             "tone_noise_captions set; they only apply with tone_noise above 0.0")
        if self.object_mask not in OBJECT_MASKS:
            raise ValueError(f"object_mask: {self.object_mask!r} is not allowed; must be one of {', '.join(OBJECT_MASKS)}")
        if self.default_guidance not in GUIDANCE_METHODS:
            raise ValueError(f"default_guidance: {self.default_guidance!r} is not allowed; must be one of "
                             f"{', '.join(GUIDANCE_METHODS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is not allowed; must be one of {', '.join(PRECISIONS)}")
        if self.precision != "auto":
            return self
        return replace(self, precision="bf16" if native_bf16() else "fp32")


PRECISIONS = ("auto", "bf16", "fp32")
OBJECT_MASKS = ("all", "named", "named+tone")
TONE_NOISE_CAPTIONS = ("tone-only", "bare")

