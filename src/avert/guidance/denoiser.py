"""The denoiser: one batched UNet forward over exactly the branches a step needs, then guidance."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import torch

from avert.guidance import attention, attribution, perturb
from avert.guidance import cfg as f
from avert.guidance.strategy import PERTURBED, Branch, Guidance, StepContext, negative_branch, prompt_branch


class StatesOverRun(Protocol):
    """Hidden states [tokens, dim] of one branch at a sampling step (prompt schedules change them)."""

    def at(self, step: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class Forward:
    """One step's UNet inputs for a denoiser: its branches, and per branch one row per image."""

    names: tuple[Branch, ...]
    model_in: torch.Tensor
    hidden: torch.Tensor
    extra: dict


@dataclass
class EvaluationCount:
    """How many UNet forwards ran and how many conditioned samples they carried (for benchmarks/tests)."""

    forwards: int = 0
    samples: int = 0
    branches: int = 0  # branch evaluations per image, summed over steps


@dataclass(frozen=True)
class Denoiser:
    """Evaluates `unet` on the branches `guidance` asks for, in one batch, and combines them.

    `conditioning` maps each branch to its states over the run; branches evaluated together are padded to
    the same number of tokens with chunks of `empty` (the encoded empty prompt), as A1111's `pad_cond` does.
    Every image of the batch x sees the same conditioning. A 9-channel (inpainting) UNet gets
    `image_conditioning` concatenated to x along the channels (diffusers' `StableDiffusionInpaintPipeline`). An
    SDXL UNet gets each branch's pooled projection and its side's size values (`sizes`: the prompt's for prompt
    branches, the negative's for the others) as `added_cond_kwargs`.
    """

    unet: torch.nn.Module
    conditioning: Mapping[Branch, StatesOverRun]
    guidance: Guidance
    empty: torch.Tensor
    autocast_dtype: torch.dtype | None = None
    image_conditioning: torch.Tensor | None = None  # an inpainting UNet's extra input channels, one row per image
    count: EvaluationCount = field(default_factory=EvaluationCount)
    maps: attribution.NegativeMaps | None = None  # when set, records where each negative acted
    sizes: Any = None  # SDXL: avert.conditioning.sdxl.SizeConditioning
    nag: attention.NagState | None = None  # NAG's processors are installed for the run (`avert.guidance.attention`)
    perturb: perturb.PerturbState | None = None  # pag, seg, slg: installed for the run (`avert.guidance.perturb`)
    _batched: dict = field(default_factory=dict, repr=False)  # per combination of branches: batched inputs
    _memory: dict = field(default_factory=dict, repr=False)  # per run: "correction" (reuse), "apg" (momentum)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        forward = self.prepare(x, ctx)
        if self.nag is not None:
            self.nag.call = self._nag_call(forward.names, ctx, x.shape[0])
        if self.perturb is not None:
            self.perturb.size = tuple(x.shape[-2:])
            self.perturb.rows = self._perturbed_rows(forward.names, x.shape[0])
        try:
            out = self.evaluate(forward.model_in, timestep, forward.hidden, forward.extra, x.device)
        finally:
            if self.nag is not None:
                self.nag.call = None
            if self.perturb is not None:
                self.perturb.rows = None
        return self.finish(forward, out, x, ctx)

    def prepare(self, x: torch.Tensor, ctx: StepContext) -> Forward:
        """This step's branches and the UNet's inputs for them, one row per image and branch."""
        names = self.guidance.branches(ctx, empty=self.maps is not None)
        hidden = self.hidden_states(names, ctx.sampling_step, x.shape[0])
        unet_in = x if self.image_conditioning is None else torch.cat([x, self.image_conditioning.to(x)], dim=1)
        model_in = torch.cat([unet_in] * len(names)) if len(names) > 1 else unet_in
        extra = {} if self.sizes is None else {"added_cond_kwargs": self.added(names, ctx.sampling_step, x.shape[0])}
        return Forward(names, model_in, hidden, extra)

    def evaluate(self, model_in: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor, extra: dict,
                 device: torch.device) -> torch.Tensor:
        """One UNet forward (under the runtime's autocast)."""
        with self._autocast(device):
            return self.unet(model_in, timestep, encoder_hidden_states=hidden, return_dict=False, **extra)[0]

    def finish(self, forward: Forward, out: torch.Tensor, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The guided prediction from the UNet's output for `forward` (counted; maps and reuse as configured)."""
        names = forward.names
        self.count.forwards += 1
        self.count.samples += out.shape[0]
        self.count.branches += len(names)
        predictions = dict(zip(names, out.to(x.dtype).chunk(len(names))))
        before = dict(self._memory) if self.maps is not None else None  # the memory the leave-one-out reads
        combined = self.guidance.combine(predictions, ctx, x, self._memory)
        if before is not None and self.guidance.guided(ctx):
            self.maps.add(ctx, attribution.changes(self.guidance, predictions, ctx, x, before, combined))
        if self.guidance.interval.reuse:
            return self._reuse(combined, predictions[prompt_branch(0)], ctx)
        return combined

    def _reuse(self, combined: torch.Tensor, positive: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Remember a guided evaluation's correction; add the last one where guidance is skipped."""
        if self.guidance.guided(ctx):
            self._memory["correction"] = combined - positive
            return combined
        last = self._memory.get("correction")
        return combined if last is None else f.reuse_correction(combined, last)

    def hidden_states(self, names: tuple[Branch, ...], step: int, rows: int) -> torch.Tensor:
        """[len(names) * rows, tokens, dim]: each branch's states at `step`, padded alike, one row per image.

        Built once per distinct combination of branches and schedule entries, not once per step (the states
        are held by `conditioning` for the denoiser's life, so their ids are stable keys)."""
        states = [self._source(n).at(step) for n in names]
        key = (names, rows, tuple(id(s) for s in states))
        if key not in self._batched:
            self._batched[key] = self._batch(states, rows)
        return self._batched[key]

    def added(self, names: tuple[Branch, ...], step: int, rows: int) -> dict[str, torch.Tensor]:
        """SDXL's `text_embeds` [len(names) * rows, dim] and `time_ids` [len(names) * rows, 6], in branch order;
        built once per distinct combination, as `hidden_states` is."""
        pooled = [self._source(n).pooled_at(step) for n in names]
        key = ("added", names, rows, tuple(id(p) for p in pooled))
        if key not in self._batched:
            self._batched[key] = {"text_embeds": torch.cat([p[None].expand(rows, -1) for p in pooled]),
                                  "time_ids": self.sizes.rows(tuple(n.role in ("negative", "empty") for n in names),
                                                              rows)}
        return self._batched[key]

    def _source(self, branch: Branch) -> StatesOverRun:
        """A branch's conditioning; the perturbed branch is the prompt's (its first part)."""
        return self.conditioning[prompt_branch(0) if branch == PERTURBED else branch]

    def _perturbed_rows(self, names: tuple[Branch, ...], rows: int) -> torch.Tensor | None:
        """The batch rows of the perturbed branch, or None when this step has none."""
        if PERTURBED not in names:
            return None
        key = ("perturbed rows", names, rows)
        if key not in self._batched:
            self._batched[key] = torch.tensor([n == PERTURBED for n in names for _ in range(rows)])
        return self._batched[key]

    def _nag_call(self, names: tuple[Branch, ...], ctx: StepContext, rows: int) -> attention.NagCall | None:
        """NAG's view of this evaluation: the prompt branches' rows and the negatives active at this step (each in
        its window, with its weight), until the settings' end."""
        active = self.guidance.active_negatives(ctx)
        if not active or ctx.fraction >= self.nag.settings.end:
            return None
        key = ("nag rows", names, rows)
        if key not in self._batched:
            self._batched[key] = torch.tensor([n.role == "prompt" for n in names for _ in range(rows)])
        mask = self._batched[key]
        negatives = tuple((self.guidance.negatives[i].weight, self.conditioning[negative_branch(i)].at(ctx.sampling_step))
                          for i in active)
        return attention.NagCall(mask, negatives)

    def _batch(self, states: list[torch.Tensor], rows: int) -> torch.Tensor:
        longest = max(s.shape[0] for s in states)
        window = self.empty.shape[0]
        padded = [torch.cat([s, self.empty.repeat((longest - s.shape[0]) // window, 1)]) for s in states]  # +0 rows
        return torch.cat([s[None].expand(rows, -1, -1) for s in padded])

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)
