"""Text conditioning: prompts and negatives to the text encoder's hidden states.

Tokenisation and encoding follow diffusers' `StableDiffusionPipeline.encode_prompt`: pad to the
tokenizer's `model_max_length`, truncate beyond it (reported, never silent), pass the attention mask
only when the encoder's config asks for it (`use_attention_mask`), take output [0] (last hidden state).
Each distinct text is encoded once per request, all in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class EncodedTexts:
    """Hidden states for distinct texts: `embeds[i]` belongs to `texts[i]`; shape [N, tokens, dim]."""

    texts: tuple[str, ...]
    embeds: torch.Tensor
    truncated: tuple[tuple[str, str], ...]  # (text, the part that was cut off)

    def lookup(self, text: str) -> torch.Tensor:
        return self.embeds[self.texts.index(text)]


@torch.no_grad()
def encode_texts(text_encoder, tokenizer, texts: Sequence[str], device: torch.device | str = "cpu") -> EncodedTexts:
    """Encode each distinct text once, in one batched forward of the text encoder."""
    distinct = tuple(dict.fromkeys(texts))
    max_length = tokenizer.model_max_length
    tokens = tokenizer(list(distinct), padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    mask = tokens.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    embeds = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    embeds = embeds.to(dtype=text_encoder.dtype)
    return EncodedTexts(distinct, embeds, _truncations(tokenizer, distinct, max_length))


def _truncations(tokenizer, texts: tuple[str, ...], max_length: int) -> tuple[tuple[str, str], ...]:
    """For each text longer than the encoder's window, the words that did not fit (as diffusers logs them)."""
    cut = []
    for text in texts:
        ids = tokenizer(text, truncation=False).input_ids
        if len(ids) > max_length:
            cut.append((text, tokenizer.decode(ids[max_length - 1 : -1])))
    return tuple(cut)
