"""Negatives in attention space: Normalized Attention Guidance (NAG), as attention processors for a run.

NAG (Chen et al., "Normalized Attention Guidance: Universal Negative Guidance for Diffusion Models", NeurIPS 2025,
arXiv:2505.21179) guides inside every cross-attention layer (the UNet's `attn2`) instead of between two UNet
passes, so a negative acts even where classifier-free guidance cannot (CFG scale 1, few-step and distilled
models). With Z+ and Z- the attention outputs (before the output projection) of the same queries over the
prompt's and the negative's keys and values, per token over the channels:

    Z~ = s Z+ - (s - 1) Z-                 (extrapolate away from the negative)
    r  = |Z~|_1 / |Z+|_1                   (how far that moved the feature's L1 norm)
    Z^ = Z~ min(r, tau) / r                (cap the growth at tau)
    Z  = alpha Z^ + (1 - alpha) Z+         (blend back toward the prompt's features)

Several negatives with weights w_i (those active at the step, each in its window) extrapolate together:
Z~ = Z+ + (s - 1) sum_i w_i (Z+ - Z-_i), which is the formula above for one negative of weight 1; then the same cap
and blend. NAG acts on the prompt's rows only: with CFG above 1 the negative's UNet branch is evaluated as usual
and guidance combines the predictions; at CFG 1 NAG is the only guidance and costs one more attention over the
negative's tokens per cross-attention layer, not a second UNet pass. `end` stops it after that fraction of the run.

`installed(unet, state)` puts `NagProcessor`s on every `attn2` for a run and the previous processors back after,
even on an error; the denoiser sets `state.call` before each UNet evaluation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class NagSettings:
    """NAG's scale s (1: off), cap tau, blend alpha and the fraction of the run after which it stops."""

    scale: float = 1.0
    tau: float = 2.5
    alpha: float = 0.5
    end: float = 1.0

    @property
    def on(self) -> bool:
        return self.scale != 1.0


def nag(positive: torch.Tensor, negatives: Sequence[torch.Tensor], weights: Sequence[float],
        settings: NagSettings) -> torch.Tensor:
    """The guided attention output from the prompt's (Z+) and the negatives' (Z-_i), [..., tokens, channels]."""
    pushed = sum(w * (positive - z) for w, z in zip(weights, negatives))
    extrapolated = positive + (settings.scale - 1.0) * pushed
    norm_positive = positive.abs().sum(dim=-1, keepdim=True)
    norm_extrapolated = extrapolated.abs().sum(dim=-1, keepdim=True)
    ratio = norm_extrapolated / norm_positive
    capped = extrapolated * (ratio.clamp(max=settings.tau) / ratio)
    capped = torch.where(ratio > 0, capped, extrapolated)  # Z~ = 0 (ratio 0): nothing to rescale
    return settings.alpha * capped + (1.0 - settings.alpha) * positive


@dataclass(frozen=True)
class NagCall:
    """One UNet evaluation as NAG sees it: the batch rows of the prompt's branches and, per active negative, its
    weight and its hidden states [tokens, dim] (the same for every row)."""

    rows: torch.Tensor  # bool [batch]
    negatives: tuple[tuple[float, torch.Tensor], ...]


@dataclass
class NagState:
    """What the processors of one run share: the settings and the evaluation in progress (None: NAG idle)."""

    settings: NagSettings
    call: NagCall | None = None
    layers: int = field(default=0)


class NagProcessor:
    """A cross-attention processor: the plain attention for every row, NAG on the prompt's rows while a call is set.

    Written for the UNet's `attn2` (3-D hidden states, no group norm, no residual, no mask), where the plain path is
    diffusers' AttnProcessor2_0; anything else goes to the processor it replaced.
    """

    def __init__(self, previous, state: NagState):
        self.previous, self.state = previous, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        call = self.state.call
        simple = (hidden_states.ndim == 3 and encoder_hidden_states is not None and attention_mask is None
                  and attn.group_norm is None and attn.spatial_norm is None and not attn.residual_connection
                  and attn.norm_q is None and not attn.norm_cross)
        if call is None or not call.negatives or not simple:
            return self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        query = _heads(attn, attn.to_q(hidden_states))
        out = _attend(attn, query, encoder_hidden_states)
        rows = call.rows.to(out.device)
        n = int(rows.sum())
        context = [(w, s.to(encoder_hidden_states)[None].expand(n, -1, -1)) for w, s in call.negatives]
        negatives = [_attend(attn, query[rows], states) for _, states in context]
        out[rows] = nag(out[rows], negatives, [w for w, _ in context], self.state.settings)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, inner = x.shape
    return x.view(batch, tokens, attn.heads, inner // attn.heads).transpose(1, 2)


def _attend(attn, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Attention of `query` (heads split) over `context`'s keys and values: [batch, tokens, channels], before the
    output projection."""
    key, value = _heads(attn, attn.to_k(context)), _heads(attn, attn.to_v(context))
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    batch, heads, tokens, dim = out.shape
    return out.transpose(1, 2).reshape(batch, tokens, heads * dim).to(query.dtype)


def cross_attention_layers(unet) -> list:
    """The UNet's cross-attention modules (`attn2` of every transformer block)."""
    return [module for name, module in unet.named_modules() if name.endswith("attn2")]


@contextlib.contextmanager
def installed(unet, state: NagState | None) -> Iterator[NagState | None]:
    """NAG processors on every `attn2` of `unet` for the block, the previous processors put back after (None:
    nothing to install)."""
    if state is None:
        yield None
        return
    layers = cross_attention_layers(unet)
    previous = [module.processor for module in layers]
    state.layers = len(layers)
    try:
        for module, processor in zip(layers, previous):
            module.processor = NagProcessor(processor, state)
        yield state
    finally:
        for module, processor in zip(layers, previous):
            module.processor = processor
