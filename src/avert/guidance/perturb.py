"""Guidance by a perturbed copy of the prompt's branch: PAG, SEG and SLG, as diffusers' guiders combine them.

A third kind of branch: the prompt's conditioning, with the UNet made worse in chosen transformer blocks for that
branch's rows only, then guidance away from it, on top of the negatives' guidance:

- pag, Perturbed-Attention Guidance (Ahn et al., "Self-Rectifying Diffusion Sampling with Perturbed-Attention
  Guidance", ECCV 2024, arXiv:2403.17377): the self-attention map replaced by the identity, so self-attention
  returns its values, Z = V (diffusers' `PerturbedAttentionGuidance`, `skip_attention_scores`);
- seg, Smoothed Energy Guidance (Hong, "Smoothed Energy Guidance", NeurIPS 2024, arXiv:2408.00760): the queries of
  self-attention blurred over the image's height and width by a Gaussian of sigma, which smooths the attention's
  energy landscape; sigma above 9999 is infinite: every query replaced by their mean (uniform attention);
- slg, Skip-Layer Guidance (diffusers' `SkipLayerGuidance`, after Stability AI's SD 3.5): the chosen transformer
  blocks skipped, their output their input.

With e_p the perturbed branch's prediction and s its scale, per diffusers' guiders (`forward`):
    e = e_guided + s (e_c - e_p)     where the negatives' guidance applies at this step,
    e = e_p + s (e_c - e_p)          where it does not (diffusers' formula when its CFG is off),
and guidance rescale after. The perturbation acts on evaluations i of n with int(start n) < i < int(stop n), diffusers'
range, strict at both ends (so even a start of 0 leaves out the first step; its defaults: PAG and SLG 0.01 to 0.2,
SEG 0 to 1; scale 2.8).

Layers are named as diffusers' PAG pipelines name them: "mid", "down.N", "up.N" (every transformer block in that
UNet block). The processors (pag, seg, on `attn1`) and block hooks (slg) act only on the rows the denoiser marks
in `PerturbState.rows`; `installed` puts them on for a run and takes them off after, even on an error.

Why processors and not diffusers' hooks (`diffusers.hooks.layer_skip`, `smoothed_energy_guidance_utils`): those
perturb a whole UNet call, so diffusers' guiders run the perturbed branch as a UNet call of its own; avert evaluates
every branch a step needs in one batched forward (the denoiser's contract), so the perturbation must act on that
branch's rows only. The formulas are diffusers' (tested equal within 1/255 against its guiders and hooks).

Where avert differs from diffusers 0.42: its `_gaussian_blur_2d` takes the mean of the queries when sigma is *below*
the infinity threshold and blurs when above (SEG's authors' code: the mean for infinite sigma, the blur otherwise);
avert follows the paper and the authors. diffusers also lays the queries out as the largest square; avert uses the
layer's own height and width (from the latent's aspect ratio), so a non-square image is blurred as an image.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

KINDS: tuple[str, ...] = ("pag", "seg", "slg")
DEFAULTS = {"pag": (2.8, 0.01, 0.2), "seg": (2.8, 0.0, 1.0), "slg": (2.8, 0.01, 0.2)}  # scale, start, stop
INFINITE_SIGMA = 9999.0
LAYER = r"(mid|down\.[0-9]|up\.[0-9])"
LAYERS_PATTERN = (rf"{LAYER}(,{LAYER}){{0,15}}", "UNet blocks by name, comma-separated: mid, down.N, up.N, e.g. "
                  "mid or up.0,mid")


@dataclass(frozen=True)
class Perturbation:
    """One perturbed branch: its kind, scale s, layers, step range [start, stop) and SEG's blur sigma."""

    kind: str
    scale: float = 2.8
    layers: tuple[str, ...] = ("mid",)
    start: float = 0.01
    stop: float = 0.2
    blur_sigma: float = 9999999.0

    def active(self, index: int, total: int) -> bool:
        """diffusers' range (its guiders' `_is_slg_enabled`, `_is_seg_enabled`): int(start n) < index < int(stop n)."""
        return self.scale != 0.0 and int(self.start * total) < index < int(self.stop * total)


def combine(guided: torch.Tensor, prompt: torch.Tensor, perturbed: torch.Tensor, scale: float,
            with_guidance: bool) -> torch.Tensor:
    """e_guided + s (e_c - e_p) with the negatives' guidance at this step; e_p + s (e_c - e_p) without."""
    base = guided if with_guidance else perturbed
    return base + scale * (prompt - perturbed)


def blur_queries(query: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """SEG's smoothing of queries [n, height * width, channels] over the image: the mean for infinite sigma, else a
    Gaussian of sigma (kernel ceil(6 sigma) rounded up to odd, at most the largest odd size the image takes;
    reflected edges)."""
    n, tokens, channels = query.shape
    grid = query.transpose(1, 2).reshape(n, channels, height, width)
    if sigma > INFINITE_SIGMA:
        grid = grid.mean(dim=(-2, -1), keepdim=True).expand_as(grid)
    else:
        side = min(height, width)
        size = min(math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2, side - (side % 2 == 0))
        half = (size - 1) / 2
        x = torch.linspace(-half, half, size, dtype=query.dtype, device=query.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        kernel2d = (kernel[:, None] * kernel[None, :]).expand(channels, 1, size, size)
        pad = size // 2
        grid = F.conv2d(F.pad(grid, [pad] * 4, mode="reflect") if pad else grid, kernel2d, groups=channels)
    return grid.reshape(n, channels, tokens).transpose(1, 2)


@dataclass
class PerturbState:
    """What the run's processors and hooks share: the perturbation, the latent's height and width, and the rows of
    the evaluation in progress that are the perturbed branch (None: no perturbed rows)."""

    perturbation: Perturbation
    size: tuple[int, int] = (0, 0)
    rows: torch.Tensor | None = None


class PerturbedSelfAttention:
    """A self-attention (`attn1`) processor: the previous processor for the rows not marked, PAG's or SEG's output for
    the marked rows (each row computed once)."""

    def __init__(self, previous, state: PerturbState):
        self.previous, self.state = previous, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        rows = self.state.rows
        if rows is None or hidden_states.ndim != 3 or encoder_hidden_states is not None or attention_mask is not None:
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        rows = rows.to(hidden_states.device)
        perturbed = self._perturbed(attn, hidden_states[rows])
        out = perturbed.new_empty((hidden_states.shape[0], *perturbed.shape[1:]))
        out[rows] = perturbed
        if not rows.all():
            out[~rows] = self.previous(attn, hidden_states[~rows], None, None, temb, **kwargs).to(out.dtype)
        return out

    def _perturbed(self, attn, mine: torch.Tensor) -> torch.Tensor:
        """PAG's identity attention (each token's own value) or SEG's smoothed one, through the output projection."""
        z = attn.to_v(mine) if self.state.perturbation.kind == "pag" else _seg_attention(attn, mine, self.state)
        z = attn.to_out[1](attn.to_out[0](z))
        if attn.residual_connection:
            z = z + mine
        return z / attn.rescale_output_factor


def _seg_attention(attn, hidden: torch.Tensor, state: PerturbState) -> torch.Tensor:
    """Self-attention of `hidden` with its queries blurred (`blur_queries`), before the output projection."""
    tokens = hidden.shape[1]
    height, width = _layer_size(tokens, state.size)
    query = blur_queries(attn.to_q(hidden), height, width, state.perturbation.blur_sigma)
    heads = attn.heads

    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(attn.to_k(hidden)), split(attn.to_v(hidden)))
    return out.transpose(1, 2).reshape(hidden.shape[0], tokens, -1).to(hidden.dtype)


def _layer_size(tokens: int, latent: tuple[int, int]) -> tuple[int, int]:
    """A layer's height and width from its token count and the latent's height and width (downsampled alike)."""
    height, width = latent
    factor = math.sqrt(height * width / tokens)
    h, w = round(height / factor), round(width / factor)
    if h * w != tokens:
        raise ValueError(f"a layer of {tokens} tokens does not tile a {height}x{width} latent")
    return h, w


def _skip_rows(state: PerturbState):
    """A forward hook on a transformer block: the marked rows leave it as they came in (SLG)."""

    def hook(module, args, kwargs, output):
        rows = state.rows
        if rows is None:
            return output
        given = args[0] if args else kwargs["hidden_states"]
        output = output.clone()
        output[rows.to(output.device)] = given[rows.to(given.device)].to(output.dtype)
        return output

    return hook


def unet_layers(unet) -> dict[str, list[tuple[str, torch.nn.Module]]]:
    """Layer name ("mid", "down.N", "up.N") -> the transformer blocks in it, with their module names, in order."""
    found: dict[str, list] = {}
    for name, module in unet.named_modules():
        match = re.fullmatch(r"(mid_block|down_blocks\.(\d+)|up_blocks\.(\d+))\.attentions\.\d+\.transformer_blocks"
                             r"\.\d+", name)
        if match:
            layer = "mid" if match.group(1) == "mid_block" else \
                f"{'down' if match.group(2) is not None else 'up'}.{match.group(2) or match.group(3)}"
            found.setdefault(layer, []).append((name, module))
    return found


def blocks(unet, layers: tuple[str, ...]) -> list[tuple[str, torch.nn.Module]]:
    """The transformer blocks of the named layers; a name the model lacks raises ValueError naming those it has."""
    available = unet_layers(unet)
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise ValueError(f"{', '.join(missing)}: this model has no transformer blocks there; it has "
                         f"{', '.join(sorted(available)) or 'none'}")
    return [b for layer in dict.fromkeys(layers) for b in available[layer]]


@contextlib.contextmanager
def installed(unet, state: PerturbState | None) -> Iterator[PerturbState | None]:
    """The perturbation's processors (pag, seg: on each chosen block's `attn1`) or hooks (slg: on each chosen block)
    for the block, removed after (None: nothing to install)."""
    if state is None:
        yield None
        return
    chosen = blocks(unet, state.perturbation.layers)
    handles, replaced = [], []
    try:
        for _, block in chosen:
            if state.perturbation.kind == "slg":
                handles.append(block.register_forward_hook(_skip_rows(state), with_kwargs=True))
            else:
                replaced.append((block.attn1, block.attn1.processor))
                block.attn1.processor = PerturbedSelfAttention(block.attn1.processor, state)
        yield state
    finally:
        for handle in handles:
            handle.remove()
        for module, processor in replaced:
            module.processor = processor
