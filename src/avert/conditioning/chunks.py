"""Weighted prompt fragments to 75-token chunks, as AUTOMATIC1111 builds them.

A chunk holds `size` tokens (the encoder's window less BOS and EOS: 75 for CLIP) and is encoded with its own
BOS and EOS, so prompts of any length are encoded chunk by chunk and concatenated. `BREAK` ends a chunk early.
When a chunk is full and a comma lies within the last `comma_backtrack` tokens (A1111's default 20), the
words after that comma move to the next chunk, so a phrase is not cut in two. A textual-inversion embedding
is never split across chunks: if it does not fit, the chunk is closed and it starts the next one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

from avert.conditioning.embeddings import Embedding, EmbeddingError, EmbeddingLibrary
from avert.prompts.attention import Fragment

COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class Chunk:
    """Content tokens (no BOS/EOS, not padded), their weights, and embeddings placed at content offsets."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]
    embeddings: tuple[tuple[int, Embedding], ...] = ()


@dataclass(frozen=True)
class ChunkedText:
    chunks: tuple[Chunk, ...]
    token_count: int  # tokens used, as A1111 counts them (full chunks count 75)


@dataclass(frozen=True)
class TokenVocabulary:
    """What the chunker needs from a tokenizer: the window and the special and comma token ids."""

    size: int
    bos: int
    eos: int
    pad: int
    comma: int | None


_VOCABULARIES: "weakref.WeakKeyDictionary[object, TokenVocabulary]" = weakref.WeakKeyDictionary()


def vocabulary(tokenizer) -> TokenVocabulary:
    """Special tokens read from the tokenizer itself (CLIP: <|startoftext|> ...; BERT: [CLS] ... [SEP]),
    read once per tokenizer."""
    if tokenizer not in _VOCABULARIES:
        _VOCABULARIES[tokenizer] = _read_vocabulary(tokenizer)
    return _VOCABULARIES[tokenizer]


def _read_vocabulary(tokenizer) -> TokenVocabulary:
    ends = tokenizer("").input_ids
    comma = tokenizer(",", add_special_tokens=False).input_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ends[-1]
    known_comma = len(comma) == 1 and comma[0] != tokenizer.unk_token_id
    return TokenVocabulary(tokenizer.model_max_length - 2, ends[0], ends[-1], pad, comma[0] if known_comma else None)


def chunk_fragments(
    fragments: Sequence[Fragment],
    tokenizer,
    library: EmbeddingLibrary = EmbeddingLibrary(),
    comma_backtrack: int = COMMA_BACKTRACK,
) -> ChunkedText:
    """Split weighted fragments into chunks (see the module docstring)."""
    return chunk_with(fragments, tokenizer, EmbeddingFinder.build(library, tokenizer), comma_backtrack)


def chunk_with(fragments: Sequence[Fragment], tokenizer, finder: "EmbeddingFinder",
               comma_backtrack: int = COMMA_BACKTRACK) -> ChunkedText:
    """`chunk_fragments` with the embedding names already tokenised (once per encoder, not once per text)."""
    vocab = vocabulary(tokenizer)
    builder = _Builder(vocab.size, comma_backtrack)
    for fragment in fragments:
        if fragment.is_break:
            builder.close()
            continue
        ids = tokenizer(fragment.text, add_special_tokens=False, verbose=False).input_ids if fragment.text else []
        position = 0
        while position < len(ids):
            match = finder.at(ids, position)
            if match is None:
                builder.add_token(ids[position], fragment.weight, ids[position] == vocab.comma)
                position += 1
            else:
                embedding, matched = match
                builder.add_embedding(embedding, fragment.weight, vocab.pad)
                position += matched
    return builder.finish()


class _Builder:
    """The mutable state of one chunking pass (kept inside `chunk_fragments`; its result is frozen)."""

    def __init__(self, size: int, comma_backtrack: int):
        self.size, self.backtrack = size, comma_backtrack
        self.chunks: list[Chunk] = []
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.fixes: list[tuple[int, Embedding]] = []
        self.last_comma = -1
        self.count = 0

    def add_token(self, token: int, weight: float, is_comma: bool) -> None:
        if is_comma:
            self.last_comma = len(self.tokens)
        elif self._full() and self.last_comma != -1 and len(self.tokens) - self.last_comma <= self.backtrack:
            self._move_after_comma()
        if self._full():
            self.close()
        self.tokens.append(token)
        self.weights.append(weight)

    def add_embedding(self, embedding: Embedding, weight: float, placeholder: int) -> None:
        if embedding.length > self.size:
            raise EmbeddingError(f"embedding {embedding.path.name}: {embedding.length} vectors do not fit in one "
                                 f"chunk of {self.size} tokens of this model's text encoder")
        if self._full() or len(self.tokens) + embedding.length > self.size:
            self.close()
        self.fixes.append((len(self.tokens), embedding))
        self.tokens += [placeholder] * embedding.length
        self.weights += [weight] * embedding.length

    def close(self, last: bool = False) -> None:
        self.count += len(self.tokens) if last else self.size
        self.chunks.append(Chunk(tuple(self.tokens), tuple(self.weights), tuple(self.fixes)))
        self.tokens, self.weights, self.fixes, self.last_comma = [], [], [], -1

    def finish(self) -> ChunkedText:
        if self.tokens or not self.chunks:
            self.close(last=True)
        return ChunkedText(tuple(self.chunks), self.count)

    def _full(self) -> bool:
        return len(self.tokens) >= self.size

    def _move_after_comma(self) -> None:
        cut = self.last_comma + 1
        moved = (self.tokens[cut:], self.weights[cut:], [(o - cut, e) for o, e in self.fixes if o >= cut])
        self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
        self.fixes = [(o, e) for o, e in self.fixes if o < cut]
        self.close()
        self.tokens, self.weights, self.fixes = list(moved[0]), list(moved[1]), moved[2]


@dataclass(frozen=True)
class EmbeddingFinder:
    """Finds embedding names in a token sequence: first token id -> (name ids, name), longest first (as A1111)."""

    library: EmbeddingLibrary
    table: dict[int, tuple[tuple[tuple[int, ...], str], ...]]

    @classmethod
    def build(cls, library: EmbeddingLibrary, tokenizer) -> "EmbeddingFinder":
        table: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        for name in library.names():
            ids = tuple(tokenizer(name, add_special_tokens=False).input_ids)
            if ids:
                table.setdefault(ids[0], []).append((ids, name))
        return cls(library, {k: tuple(sorted(v, key=lambda o: -len(o[0]))) for k, v in table.items()})

    def at(self, ids: list[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose name starts at `position`, and how many tokens the name takes."""
        for name_ids, name in self.table.get(ids[position], ()):
            if tuple(ids[position : position + len(name_ids)]) == name_ids:
                if name in self.library.problems:
                    raise EmbeddingError(self.library.problems[name])
                return self.library.embeddings[name], len(name_ids)
        return None
