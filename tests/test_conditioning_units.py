"""`avert prompt`'s report, textual-inversion files and the chunk builder, pinned value by value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from avert.conditioning.embeddings import Embedding, EmbeddingError, EmbeddingLibrary, load_embeddings, \
    read_embedding
from avert.conditioning.report import format_report, prompt_report


def test_the_report_splits_schedules_weighs_and_chunks_each_part(tiny):
    report = prompt_report("a (b:1.5) AND [c:d:2] :0.5", 4, tiny.tokenizer)
    assert report == {
        "text": "a (b:1.5) AND [c:d:2] :0.5", "steps": 4,
        "schedule": [[2, "a (b:1.5) AND c :0.5"], [4, "a (b:1.5) AND d :0.5"]],
        "attention": [[["a ", 1.0], ["b", 1.5], [" AND c :0.5", 1.0]], [["a ", 1.0], ["b", 1.5], [" AND d :0.5", 1.0]]],
        "parts": [
            {"weight": 1.0, "entries": [{"steps": [0, 3], "text": "a (b:1.5)", "attention": [["a ", 1.0], ["b", 1.5]],
                                         "token_count": 2, "chunks": [{"tokens": 2, "padding": 73, "embeddings": []}],
                                         "truncated": None}]},
            {"weight": 0.5, "entries": [
                {"steps": [0, 2], "text": " c", "attention": [[" c", 1.0]], "token_count": 1,
                 "chunks": [{"tokens": 1, "padding": 74, "embeddings": []}], "truncated": None},
                {"steps": [3, 3], "text": " d", "attention": [[" d", 1.0]], "token_count": 1,
                 "chunks": [{"tokens": 1, "padding": 74, "embeddings": []}], "truncated": None}]},
        ],
        "chunk_size": 75,
    }
    assert "chunk_size" not in prompt_report("a", 4) and "chunks" not in prompt_report("a", 4)["parts"][0]["entries"][0]


def test_the_report_places_embeddings_from_the_library_it_is_given(tiny):
    width = tiny.text_encoder.config.hidden_size
    library = EmbeddingLibrary({"zz": Embedding("zz", torch.zeros(3, width), Path("zz.safetensors"))})
    (entry,) = prompt_report("a zz b", 2, tiny.tokenizer, library)["parts"][0]["entries"]
    assert entry["chunks"] == [{"tokens": 5, "padding": 70, "embeddings": ["zz"]}]
    assert entry["token_count"] == 5


def test_the_report_as_text():
    report = {"text": "a AND b", "steps": 4, "chunk_size": 75, "parts": [
        {"weight": 1.0, "entries": [{"steps": [0, 1], "text": "a", "attention": [["a", 1.5], ["x", 1.0]],
                                     "chunks": [{"tokens": 3, "padding": 72, "embeddings": ["e1", "e2"]},
                                                {"tokens": 1, "padding": 74, "embeddings": []}]}]},
        {"weight": 0.5, "entries": [{"steps": [2, 3], "text": "b", "attention": [["b", 1.0]]}]}]}
    assert format_report(report) == (
        "'a AND b' over 4 steps\n"
        "AND part 1, weight 1:\n"
        "  steps 0-1: 'a'\n"
        "    attention: 'a'x1.5 'x'\n"
        "    chunk 1: 3/75 tokens, 72 padding, embeddings: e1, e2\n"
        "    chunk 2: 1/75 tokens, 74 padding\n"
        "AND part 2, weight 0.5:\n"
        "  steps 2-3: 'b'\n"
        "    attention: 'b'")
    single = {"text": "b", "steps": 2, "parts": [report["parts"][1]]}
    assert format_report(single) == "'b' over 2 steps\n  steps 2-3: 'b'\n    attention: 'b'"


def save(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("tensors, expected", [
    ({"emb_params": torch.ones(2, 4), "other": torch.zeros(1, 4)}, torch.ones(2, 4)),
    ({"string_to_param.*": torch.ones(1, 4), "string_to_token": torch.zeros(1)}, torch.ones(1, 4)),
    ({"<cat-toy>": torch.ones(4)}, torch.ones(1, 4)),
    ({"x": torch.ones(1, 1, dtype=torch.float16)}, torch.ones(1, 1)),
])
def test_each_layout_gives_its_vectors_as_float_n_by_dim(tmp_path, tensors, expected):
    vectors = read_embedding(save(tmp_path / "e.safetensors", tensors))
    assert vectors.dtype == torch.float32 and torch.equal(vectors, expected)


@pytest.mark.parametrize("tensors, message", [
    ({"a": torch.ones(1, 4), "b": torch.ones(1, 4)}, "embedding e.safetensors: unknown layout with keys ['a', 'b']; "
     "expected 'emb_params', one 'string_to_param.*' key, a single tensor (diffusers), or 'clip_l' and 'clip_g' "
     "(SDXL)"),
    ({"string_to_param.a": torch.ones(1, 4), "string_to_param.b": torch.ones(1, 4)}, "embedding e.safetensors: "
     "unknown layout with keys ['string_to_param.a', 'string_to_param.b']; expected 'emb_params', one "
     "'string_to_param.*' key, a single tensor (diffusers), or 'clip_l' and 'clip_g' (SDXL)"),
    ({"x": torch.ones(0, 4)}, "embedding e.safetensors: expected float vectors of shape [n, dim], found (0, 4) "
     "torch.float32"),
    ({"x": torch.ones(2, 0)}, "embedding e.safetensors: expected float vectors of shape [n, dim], found (2, 0) "
     "torch.float32"),
    ({"x": torch.ones(2, 4, dtype=torch.int64)}, "embedding e.safetensors: expected float vectors of shape [n, dim], "
     "found (2, 4) torch.int64"),
    ({"x": torch.ones(1, 2, 4)}, "embedding e.safetensors: expected float vectors of shape [n, dim], found (1, 2, 4) "
     "torch.float32"),
])
def test_a_file_that_is_no_embedding_is_named_with_what_it_holds(tmp_path, tensors, message):
    with pytest.raises(EmbeddingError) as info:
        read_embedding(save(tmp_path / "e.safetensors", tensors))
    assert str(info.value) == message


def test_a_folder_lists_each_good_file_and_each_bad_one_with_its_reason(tmp_path):
    os.mkfifo(tmp_path / "a.safetensors")
    save(tmp_path / "b.safetensors", {"emb_params": torch.ones(2, 4)})
    (tmp_path / "c.safetensors").write_bytes(b"junk")
    library = load_embeddings(tmp_path)
    assert library.folder == tmp_path
    assert library.problems["a"] == "embedding a.safetensors: not a regular file"
    assert library.problems["c"].startswith("embedding c.safetensors: not a readable .safetensors file (")
    assert list(library.embeddings) == ["b"] and library.names() == ("a", "b", "c")
    assert library.fingerprint() == (("b", str(tmp_path / "b.safetensors"), (2, 4)),)
    assert load_embeddings(None) == EmbeddingLibrary()
    with pytest.raises(EmbeddingError, match="does not exist or is not a folder"):
        load_embeddings(tmp_path / "b.safetensors")


def test_scheduled_states_hold_each_entry_up_to_its_end_step_and_the_last_beyond():
    from avert.conditioning.prompt import ScheduledStates

    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    states = ScheduledStates(((1, a), (3, b), (4, c)))
    assert [states.at(s) is x for s, x in ((0, a), (1, a), (2, b), (3, b), (4, c), (9, c))] == [True] * 6


def test_the_encoding_cache_evicts_the_least_recently_used():
    from avert.conditioning.encode import _LRU

    cache = _LRU(2)
    cache.put("a", 1), cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


@pytest.fixture(scope="module")
def bert():
    """The embedded model's tokenizer: 30-token chunks and a comma it knows (the tiny CLIP's comma is unknown)."""
    from transformers import AutoTokenizer

    from avert.models.default import EMBEDDED_MODEL

    return AutoTokenizer.from_pretrained(Path(EMBEDDED_MODEL) / "tokenizer")


def test_the_vocabulary_is_read_from_each_tokenizer(tiny, bert):
    from avert.conditioning.chunks import TokenVocabulary, _read_vocabulary

    assert _read_vocabulary(tiny.tokenizer) == TokenVocabulary(75, 94, 95, 95, None)  # its comma is unknown
    assert _read_vocabulary(bert) == TokenVocabulary(30, 101, 102, 0, 1010)


def test_a_tokenizer_without_a_pad_token_pads_with_its_end_token(tiny):
    import copy

    from avert.conditioning.chunks import _read_vocabulary

    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.pad_token = None
    assert _read_vocabulary(tokenizer).pad == 95


def chunked(tokenizer, text: str, library=EmbeddingLibrary(), backtrack: int = 20):
    from avert.conditioning.chunks import chunk_fragments
    from avert.prompts.attention import parse_attention

    return chunk_fragments(parse_attention(text), tokenizer, library, backtrack)


def test_words_after_the_last_comma_move_to_the_next_chunk_when_one_fills(bert):
    """25 words, a comma, 10 words: the chunk fills at 30 with 4 words after the comma; they move on."""
    result = chunked(bert, "a " * 25 + ", " + "b " * 10)
    assert [len(c.tokens) for c in result.chunks] == [26, 10]
    assert result.chunks[0].tokens[-1] == 1010 and result.token_count == 40
    assert [len(c.tokens) for c in chunked(bert, "a " * 25 + ", " + "b " * 10, backtrack=4).chunks] == [30, 6]
    assert [len(c.tokens) for c in chunked(bert, "a " * 25 + ", " + "b " * 10, backtrack=5).chunks] == [26, 10]
    # a comma in a chunk that was closed does not pull words out of the next one
    assert [len(c.tokens) for c in chunked(bert, "a , " + "b " * 60).chunks] == [30, 30, 2]
    # no comma at all: cut where the chunk is full
    assert [len(c.tokens) for c in chunked(bert, "b " * 31).chunks] == [30, 1]


def test_weights_follow_their_tokens_across_the_move(bert):
    result = chunked(bert, "a " * 25 + ", " + "(b:1.5) " * 10)
    assert result.chunks[0].weights == (1.0,) * 26 and result.chunks[1].weights == (1.5,) * 10


def test_an_embedding_is_never_split_and_one_too_long_is_refused(bert):
    width = 384
    library = EmbeddingLibrary({"zz": Embedding("zz", torch.zeros(5, width), Path("zz.safetensors")),
                                "yy": Embedding("yy", torch.zeros(31, width), Path("yy.safetensors"))})
    result = chunked(bert, "a " * 26 + "(zz:1.2) c", library)
    assert [len(c.tokens) for c in result.chunks] == [26, 6]
    assert [(o, e.name) for o, e in result.chunks[1].embeddings] == [(0, "zz")]
    assert result.chunks[1].weights == (1.2,) * 5 + (1.0,)
    assert [len(c.tokens) for c in chunked(bert, "a " * 25 + "zz", library).chunks] == [30]
    with pytest.raises(EmbeddingError, match="^embedding yy.safetensors: 31 vectors do not fit in one chunk of 30 "
                                             "tokens of this model's text encoder$"):
        chunked(bert, "yy", library)


def test_an_embedding_after_a_comma_moves_with_its_words(bert):
    library = EmbeddingLibrary({"zz": Embedding("zz", torch.zeros(2, 384), Path("zz.safetensors"))})
    result = chunked(bert, "a " * 25 + ", zz " + "b " * 5, library)
    assert [len(c.tokens) for c in result.chunks] == [26, 7]
    assert [(o, e.name) for o, e in result.chunks[1].embeddings] == [(0, "zz")]
    assert result.chunks[0].embeddings == ()


def test_break_and_empty_text(bert):
    assert [len(c.tokens) for c in chunked(bert, "a BREAK b b").chunks] == [1, 2]
    assert chunked(bert, "a BREAK b b").token_count == 32  # a closed chunk counts whole, as A1111 counts it
    empty = chunked(bert, "")
    assert [c.tokens for c in empty.chunks] == [()] and empty.token_count == 0


def test_emphasis_multiplies_each_token_and_original_keeps_each_chunks_mean():
    from avert.conditioning.encode import _emphasize

    states = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])
    weights = torch.tensor([[1.0, 2.0]])
    weighted = torch.tensor([[[1.0, 3.0], [4.0, 4.0]]])
    assert torch.equal(_emphasize(states, weights, "No norm"), weighted)
    assert torch.allclose(_emphasize(states, weights, "Original"), weighted * (2.0 / 3.0))
    assert _emphasize(states, torch.ones(1, 2), "Original") is states
    half = torch.tensor([[0.5, 1.0]])  # not all ones, and none of them 2
    assert torch.allclose(_emphasize(states, half, "No norm"), torch.tensor([[[0.5, 1.5], [2.0, 2.0]]]))


def test_the_attention_mask_covers_bos_tokens_and_eos_when_the_encoder_asks_for_one(tiny, monkeypatch):
    from avert.conditioning.encode import TextEncoding

    seen = []
    handle = tiny.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True)
    try:
        TextEncoding(tiny.text_encoder, tiny.tokenizer).encode(["mask test one"])
        monkeypatch.setattr(tiny.text_encoder.config, "use_attention_mask", True, raising=False)
        TextEncoding(tiny.text_encoder, tiny.tokenizer).encode(["mask test two words"])
    finally:
        handle.remove()
    n = len(tiny.tokenizer("mask test two words", add_special_tokens=False).input_ids)
    assert seen[0] is None
    assert seen[1].tolist() == [[1] * (n + 2) + [0] * (77 - n - 2)]


def test_clip_skip_finds_the_final_norm_in_either_transformers_layout_and_skips_it_where_there_is_none(tiny):
    from types import SimpleNamespace

    from avert.conditioning.encode import EncodeOptions, TextEncoding
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    class OldLayout(torch.nn.Module):
        """transformers 4.x: the norm under text_model."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.dtype = inner, inner.config, inner.dtype
            self.text_model = SimpleNamespace(final_layer_norm=inner.final_layer_norm)

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

    skip = EncodeOptions(clip_skip=2)
    new = TextEncoding(tiny.text_encoder, tiny.tokenizer, options=skip).encode(["a b"])["a b"].states
    old = TextEncoding(OldLayout(tiny.text_encoder), tiny.tokenizer, options=skip).encode(["a b"])["a b"].states
    assert torch.equal(new, old)
    bert = load_model(EMBEDDED_MODEL)
    tokens = bert.tokenizer("a b", padding="max_length", max_length=32, return_tensors="pt")  # its config asks
    hidden = bert.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask,  # for the mask
                               output_hidden_states=True).hidden_states[-2][0]
    ours = TextEncoding(bert.text_encoder, bert.tokenizer, options=skip).encode(["a b"])["a b"].states
    assert torch.allclose(ours, hidden, atol=1e-6)


def test_encodings_are_cached_per_embedding_library(tiny):
    from avert.conditioning.encode import TextEncoding

    width = tiny.text_encoder.config.hidden_size
    libraries = [EmbeddingLibrary({"zz": Embedding("zz", torch.full((1, width), v), Path(f"{v}.safetensors"))})
                 for v in (0.0, 1.0)]
    first, second = (TextEncoding(tiny.text_encoder, tiny.tokenizer, library).encode(["a zz"])["a zz"].states
                     for library in libraries)
    assert not torch.equal(first, second)


def test_encode_texts_is_diffusers_encode_prompt_and_reports_what_it_cut(tiny):
    from avert.conditioning.text import encode_texts

    long = " ".join(["word"] * 80) + " tail"
    encoded = encode_texts(tiny.text_encoder, tiny.tokenizer, ["a b", long, "a b"])
    assert encoded.texts == ("a b", long)
    ids = tiny.tokenizer(["a b"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(encoded.lookup("a b"), tiny.text_encoder(ids)[0][0])
    assert torch.equal(encoded.lookup(long), encoded.embeds[1])
    cut = tiny.tokenizer.decode(tiny.tokenizer(long).input_ids[76:-1])
    assert encoded.truncated == ((long, cut),) and cut.endswith("tail")


def test_the_comma_rule_needs_a_comma_in_the_chunk_even_with_a_long_backtrack(bert):
    """Without a comma nothing moves, however far back the rule may look, also after a chunk was closed."""
    assert [len(c.tokens) for c in chunked(bert, "b " * 61, backtrack=40).chunks] == [30, 30, 1]
    assert [len(c.tokens) for c in chunked(bert, "b , " + "b " * 60, backtrack=40).chunks] == [2, 30, 30]


def test_an_embedding_fills_a_chunk_exactly_and_keeps_the_weights_before_it(bert):
    library = EmbeddingLibrary({"zz": Embedding("zz", torch.zeros(5, 384), Path("zz.safetensors")),
                                "full": Embedding("full", torch.zeros(30, 384), Path("full.safetensors"))})
    assert [len(c.tokens) for c in chunked(bert, "full", library).chunks] == [30]
    (chunk,) = chunked(bert, "a (zz:1.2)", library).chunks
    assert chunk.weights == (1.0,) + (1.2,) * 5 and [o for o, _ in chunk.embeddings] == [1]


def test_the_longest_embedding_name_wins(bert):
    library = EmbeddingLibrary({"zz": Embedding("zz", torch.zeros(1, 384), Path("zz.safetensors")),
                                "zzbig": Embedding("zzbig", torch.zeros(2, 384), Path("zzbig.safetensors"))})
    assert len(bert("zzbig", add_special_tokens=False).input_ids) > 1  # the names share their first token
    (chunk,) = chunked(bert, "zzbig zz", library).chunks
    assert [e.name for _, e in chunk.embeddings] == ["zzbig", "zz"]


def test_an_unknown_layout_names_its_first_six_keys(tmp_path):
    tensors = {f"k{i}": torch.ones(1, 4) for i in range(7)}
    with pytest.raises(EmbeddingError, match=r"unknown layout with keys \['k0', 'k1', 'k2', 'k3', 'k4', 'k5'\]; "):
        read_embedding(save(tmp_path / "e.safetensors", tensors))


def test_a_text_that_just_fits_the_window_is_not_reported_cut(tiny):
    from avert.conditioning.text import encode_texts

    fits = " ".join(["a"] * 75)  # one token a letter in the tiny vocabulary
    assert len(tiny.tokenizer(fits).input_ids) == 77
    assert encode_texts(tiny.text_encoder, tiny.tokenizer, [fits]).truncated == ()


def test_emphasis_keeps_the_states_dtype():
    from avert.conditioning.encode import _emphasize

    states = torch.ones(1, 2, 2, dtype=torch.bfloat16)
    assert _emphasize(states, torch.tensor([[1.0, 1.1]]), "No norm").dtype == torch.bfloat16
