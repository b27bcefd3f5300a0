"""Encoding prompt text chunk by chunk, with attention weights, clip skip and embeddings, cached.

Each chunk is encoded as [BOS] tokens [EOS] [PAD]... in the encoder's window (for a plain prompt that fits,
exactly the ids diffusers' `encode_prompt` makes), and the chunks of a text are concatenated along the token
axis. Emphasis follows AUTOMATIC1111: "Original" multiplies each token's hidden state by its weight, then
rescales the chunk so its mean equals the unweighted mean; "No norm" only multiplies. Clip skip n > 1 takes
the hidden states n layers from the end and applies the final layer norm where the encoder has one (CLIP),
as A1111 does (diffusers' `clip_skip` is n - 1).

An SDXL encoder (`penultimate`) gives the hidden states one layer before the one clip skip names, without the
final layer norm (SDXL's conditioning, diffusers' `hidden_states[-2]` and A1111's "penultimate" layer), and, with
a projection (OpenCLIP bigG), the pooled projection of the first chunk (A1111 pools the first chunk of a long
prompt; diffusers, which truncates at 77 tokens, its only one).

All chunks of all texts a request needs are encoded in one batched forward; results are kept in a bounded
cache per text encoder, so each distinct text is encoded once per request and repeated texts across requests
are not encoded again.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from avert.conditioning.chunks import Chunk, ChunkedText, EmbeddingFinder, chunk_with, vocabulary
from avert.conditioning.embeddings import EmbeddingLibrary, check_width
from avert.prompts.attention import parse_attention

EMPHASIS_MODES = ("Original", "No norm")
CACHE_SIZE = 256


@dataclass(frozen=True)
class EncodeOptions:
    clip_skip: int = 1
    emphasis: str = "Original"


@dataclass(frozen=True)
class EncodedText:
    """Hidden states of one text, [chunks * window, dim], how it was chunked, and (SDXL's second encoder) the
    pooled projection of its first chunk, [dim]."""

    states: torch.Tensor
    chunked: ChunkedText
    pooled: torch.Tensor | None = None


class TextEncoding:
    """Encodes texts in A1111's prompt syntax (attention, BREAK, embeddings) for one model."""

    def __init__(self, text_encoder, tokenizer, library: EmbeddingLibrary = EmbeddingLibrary(),
                 options: EncodeOptions = EncodeOptions(), device: torch.device | str = "cpu",
                 penultimate: bool = False):
        self.text_encoder, self.tokenizer, self.library, self.options = text_encoder, tokenizer, library, options
        self.penultimate = penultimate
        self.device = torch.device(device)
        self.window = tokenizer.model_max_length
        self.finder = EmbeddingFinder.build(library, tokenizer)
        self.fingerprint = library.fingerprint()

    def chunk(self, text: str) -> ChunkedText:
        return chunk_with(parse_attention(text), self.tokenizer, self.finder)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> dict[str, EncodedText]:
        """Each distinct text encoded once (cache hits are not encoded again), all misses in one forward."""
        cache = _cache_for(self.text_encoder)
        keys = {text: self._key(text) for text in dict.fromkeys(texts)}
        found = {text: cache.get(key) for text, key in keys.items()}
        missing = [t for t, hit in found.items() if hit is None]
        if missing:
            chunked = [self.chunk(t) for t in missing]
            states, pooled = self._encode_chunks([c for ct in chunked for c in ct.chunks])
            offset = 0
            for text, ct in zip(missing, chunked):
                n = len(ct.chunks)
                first = None if pooled is None else pooled[offset]
                found[text] = EncodedText(states[offset : offset + n].flatten(0, 1), ct, first)
                cache.put(keys[text], found[text])
                offset += n
        return found

    def _key(self, text: str) -> tuple:
        return (text, self.options, self.fingerprint, str(self.device), self.window, self.penultimate,
                getattr(self.text_encoder, "_avert_loras", ()))  # the LoRAs applied to it (`avert.models.lora`)

    def _encode_chunks(self, chunks: list[Chunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [len(chunks), window, dim], each chunk with its own BOS/EOS, weights applied; and the
        pooled projections [len(chunks), dim] of an SDXL encoder that has one (else None)."""
        vocab = vocabulary(self.tokenizer)
        ids = torch.tensor([_chunk_ids(c, vocab, self.window) for c in chunks], device=self.device)
        weights = torch.tensor([[1.0, *c.weights, *[1.0] * (self.window - 1 - len(c.weights))] for c in chunks],
                               device=self.device)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = torch.tensor([[1] * (len(c.tokens) + 2) + [0] * (self.window - len(c.tokens) - 2)
                                 for c in chunks], device=self.device)
        with _embeddings_placed(self.text_encoder, chunks):
            if self.penultimate:
                out = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True)
                states, pooled = out.hidden_states[-(self.options.clip_skip + 1)], getattr(out, "text_embeds", None)
            else:
                states, pooled = self._forward(ids, mask), None
        return _emphasize(states, weights, self.options.emphasis), pooled  # in the encoder's own dtype

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        skip = self.options.clip_skip
        out = self.text_encoder(ids, attention_mask=mask, output_hidden_states=skip > 1)
        if skip <= 1:
            return out[0]
        states = out.hidden_states[-skip]
        norm = getattr(self.text_encoder, "final_layer_norm", None)  # transformers 5 CLIP; 4.x: text_model.*
        norm = norm or getattr(getattr(self.text_encoder, "text_model", None), "final_layer_norm", None)
        return norm(states) if norm is not None else states


def _chunk_ids(chunk: Chunk, vocab, window: int) -> list[int]:
    return [vocab.bos, *chunk.tokens, vocab.eos] + [vocab.pad] * (window - len(chunk.tokens) - 2)


def _emphasize(states: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Weights times hidden states; "Original" keeps each chunk's mean (A1111 `EmphasisOriginal`)."""
    if bool((weights == 1.0).all()):
        return states
    weighted = states * weights[:, :, None].to(states.dtype)
    if mode == "No norm":
        return weighted
    before = states.mean(dim=(1, 2), keepdim=True)
    after = weighted.mean(dim=(1, 2), keepdim=True)
    return weighted * (before / after)


class _embeddings_placed:
    """While active, the encoder's token embedding layer outputs each embedding's vectors at its positions."""

    def __init__(self, text_encoder, chunks: list[Chunk]):
        self.layer = text_encoder.get_input_embeddings()
        self.fixes = [(row, offset + 1, emb) for row, c in enumerate(chunks) for offset, emb in c.embeddings]
        for _, _, emb in self.fixes:
            check_width(emb, self.layer.weight.shape[1])
        self.handle = None

    def __enter__(self):
        if self.fixes:
            self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()

    def _hook(self, module, inputs, output):
        output = output.clone()
        for row, start, emb in self.fixes:
            output[row, start : start + emb.length] = emb.vectors  # the copy takes output's device and dtype
        return output


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key not in self.items:
                return None
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_CACHES: "weakref.WeakKeyDictionary[object, _LRU]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _cache_for(text_encoder) -> _LRU:
    with _CACHES_LOCK:
        if text_encoder not in _CACHES:
            _CACHES[text_encoder] = _LRU(CACHE_SIZE)
        return _CACHES[text_encoder]
