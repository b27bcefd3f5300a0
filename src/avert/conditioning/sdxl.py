"""SDXL's conditioning: two text encoders side by side, the pooled projection, and the size values.

SDXL (Podell et al. 2023, arXiv:2307.01952) conditions its UNet on
- the penultimate hidden states of CLIP ViT-L and of OpenCLIP ViT-bigG, concatenated along the features
  ([tokens, 768 + 1280]); each encoder tokenizes, chunks and weights the text with its own tokenizer (they share
  the BPE vocabulary; bigG pads with "!", CLIP-L with its end token), so both give the same number of chunks
  unless a second prompt differs; the shorter is then padded with its own encoding of "" (A1111's pad_cond);
- the pooled projection of bigG for the text (`text_embeds`, [1280]; of the first chunk);
- six size values, `time_ids` = (original height, original width, crop top, crop left, target height, target
  width), each embedded sinusoidally by the UNet ("micro-conditioning"). The negative branch takes its own
  (diffusers' `negative_original_size`, ...), which default to the prompt's.

An empty negative is either the encoding of "" or the zero tensor for states and pooled alike (the model's
`force_zeros_for_empty_prompt`; A1111 zeros an empty SDXL negative too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avert.conditioning.encode import EncodedText


@dataclass(frozen=True)
class SizeConditioning:
    """The `time_ids` of the prompt's branches and of the others (negatives, the empty prompt), [6] each."""

    prompt: torch.Tensor
    negative: torch.Tensor

    def rows(self, negative_side: tuple[bool, ...], rows: int) -> torch.Tensor:
        """[len(negative_side) * rows, 6]: each branch's values, one row per image, in branch order."""
        values = [self.negative if side else self.prompt for side in negative_side]
        return torch.cat([v[None].expand(rows, -1) for v in values])


def time_ids(original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(original h, w, crop top, left, target h, w) as float32 values, as diffusers' `_get_add_time_ids` lists them."""
    return torch.tensor([*original, *crop, *target], dtype=torch.float32)


def join(first: EncodedText, second: EncodedText, pad_first: EncodedText, pad_second: EncodedText) -> EncodedText:
    """One text's SDXL conditioning from its two encodings: states side by side (the one with fewer chunks padded
    with its encoder's "" chunk), the second encoder's pooled projection; the chunking is the first encoder's."""
    a, b = first.states, second.states
    if a.shape[0] < b.shape[0]:
        a = torch.cat([a, pad_first.states.repeat((b.shape[0] - a.shape[0]) // pad_first.states.shape[0], 1)])
    elif b.shape[0] < a.shape[0]:
        b = torch.cat([b, pad_second.states.repeat((a.shape[0] - b.shape[0]) // pad_second.states.shape[0], 1)])
    return EncodedText(torch.cat([a, b.to(a.dtype)], dim=-1), first.chunked, second.pooled)


def zeros(encoded: EncodedText) -> EncodedText:
    """The zero conditioning of the same shape: states and pooled projection."""
    pooled = None if encoded.pooled is None else torch.zeros_like(encoded.pooled)
    return EncodedText(torch.zeros_like(encoded.states), encoded.chunked, pooled)
