"""What a model knows: `scope.json` beside `model_index.json`, for models whose training captions are known.

    {"about": "...", "concepts": ["sun", ...], "vocabulary": ["boat", ...], "ignored": ["the", ...],
     "far_below": 0.5}

The embedded model ships one (made by `avert.world.vocabulary.embedded_scope`, a test holds the file to it): `about`
says in a sentence what the model is, `concepts` what it can draw, `vocabulary` the content words of its training
captions, `ignored` the function words of the captions and of English, never looked at. A Stable Diffusion checkpoint has none (its captions are the web's), and nothing is said of its words.

A word of a prompt or negative outside the vocabulary is *far* when the cosine similarity of its text-encoder
embedding (the mean of the encoder's last hidden states over the word's tokens, as sentence embeddings are made)
to every vocabulary word's is below `far_below`: the model never saw it nor anything close, so the word steers it
somewhere arbitrary. Measured on the embedded model (docs/embedded-model.md, "Words it does not know"): the bound
separates everyday words outside the world from the paraphrases that work, but not perfectly.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from avert.errors import ModelLoadError

SCOPE_FILE = "scope.json"
WORD = re.compile(r"[a-z]+")
MAX_WORDS = 64  # distinct unknown words a request's texts are checked for (the rest are not looked at)


@dataclass(frozen=True)
class ModelScope:
    about: str
    concepts: tuple[str, ...]
    vocabulary: tuple[str, ...]
    ignored: tuple[str, ...]
    far_below: float

    def to_text(self) -> str:
        return json.dumps({"about": self.about, "concepts": list(self.concepts), "vocabulary": list(self.vocabulary),
                           "ignored": list(self.ignored), "far_below": self.far_below}, indent=1) + "\n"


def read_scope(folder: Path) -> ModelScope | None:
    """The scope `folder/scope.json` declares, None without the file; a bad file is an error naming it."""
    path = Path(folder) / SCOPE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        scope = ModelScope(str(data["about"]), tuple(map(str, data["concepts"])), tuple(map(str, data["vocabulary"])),
                           tuple(map(str, data["ignored"])), float(data["far_below"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model: {str(path)!r} must be JSON with about, concepts, vocabulary, ignored and far_below: "
                             f"{exc}") from None
    return scope


_embeddings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # text encoder -> {scope vocabulary: [V, d]}
_lock = threading.Lock()


@torch.no_grad()
def embed_words(words, tokenizer, text_encoder) -> torch.Tensor:
    """Unit embeddings [len(words), d]: the mean of the encoder's last hidden states over each word's tokens."""
    batch = tokenizer(list(words), padding=True, truncation=True, max_length=16, return_tensors="pt")
    device = next(text_encoder.parameters()).device
    mask = batch.attention_mask.to(device)
    hidden = text_encoder(input_ids=batch.input_ids.to(device), attention_mask=mask)[0].float()
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(mean, dim=-1).cpu()


def nearest_known(words, scope: ModelScope, tokenizer, text_encoder) -> list[tuple[str, float, str]]:
    """(word, similarity, nearest vocabulary word) for each of `words`."""
    with _lock:
        cache = _embeddings.setdefault(text_encoder, {})
        if scope.vocabulary not in cache:
            cache[scope.vocabulary] = embed_words(scope.vocabulary, tokenizer, text_encoder)
        known = cache[scope.vocabulary]
    similarity = embed_words(words, tokenizer, text_encoder) @ known.T
    best, index = similarity.max(dim=1)
    return [(w, float(s), scope.vocabulary[int(i)]) for w, s, i in zip(words, best, index)]


def unknown_words(texts, scope: ModelScope) -> list[str]:
    """The distinct words of `texts` (letters only, lower case) outside the vocabulary and its plain plurals,
    in order, at most `MAX_WORDS`."""
    known = set(scope.vocabulary) | set(scope.ignored)
    found = dict.fromkeys(w for text in texts for w in WORD.findall(text.lower())
                          if not (w in known or (w.endswith("s") and w[:-1] in known) or len(w) <= 2))
    return list(found)[:MAX_WORDS]


def phrases(texts) -> list[str]:
    """The comma-separated pieces of `texts` (prompt syntax's brackets, weights and AND left out), lower case."""
    pieces = [p for text in texts for p in re.split(r",|\bAND\b|\n", re.sub(r"[()\[\]{}:|0-9.]+", " ", text))]
    return [" ".join(WORD.findall(p.lower())) for p in pieces if WORD.search(p.lower())]


def far_words(texts, scope: ModelScope, tokenizer, text_encoder) -> list[tuple[str, float, str]]:
    """The words of `texts` the model never saw nor anything near: a word outside the vocabulary whose similarity
    to every caption word is below `far_below`, alone and together with the other content words of its
    comma-separated phrase ("disc" alone is far, "lunar disc" is near the moon: not named)."""
    words = unknown_words(texts, scope)
    if not words:
        return []
    far = {w: entry for w, entry in zip(words, nearest_known(words, scope, tokenizer, text_encoder))
           if entry[1] < scope.far_below}
    if not far:
        return []
    context = {}
    for phrase in phrases(texts):
        content = [w for w in phrase.split() if w not in scope.ignored]
        if len(content) > 1:
            for w in content:
                if w in far:
                    context.setdefault(w, []).append(" ".join(content))
    together = sorted({p for ps in context.values() for p in ps})
    near_phrases = {p for p, s, _ in nearest_known(together, scope, tokenizer, text_encoder) if s >= scope.far_below} \
        if together else set()
    return [far[w] for w in far if not any(p in near_phrases for p in context.get(w, []))]
