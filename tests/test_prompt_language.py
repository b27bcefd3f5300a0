"""The prompt language (issue 4): A1111's parser semantics, chunking, schedules at the UNet input, AND,
embeddings, caching, clip skip and emphasis, on tiny components and on the embedded model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from avert.api import generate
from avert.conditioning.chunks import chunk_fragments
from avert.conditioning.embeddings import EmbeddingError, load_embeddings
from avert.conditioning.encode import EncodeOptions, TextEncoding
from avert.prompts import BREAK, Fragment, SubPrompt, parse_attention, schedule, split_and
from avert.request import GenerationRequest
from tiny_models import beyond_size

CONFIGS = Path(__file__).parents[1] / "src/avert/models/configs"
BASE = GenerationRequest("a red house", negative_prompt="blue tree", seed=7, steps=4, cfg_scale=7.5,
                         width=16, height=16, sampler="Euler")

# --- parser tables (A1111's own doctests first, then edge cases) ------------------------------------------

ATTENTION = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),  # an unclosed bracket of either kind weighs to the end
    ("a [b", [("a ", 1.0), ("b", 1 / 1.1)]),
    ("[[x", [("x", 1 / 1.21)]),
    ("((x", [("x", 1.21)]),
    ("a [b (c", [("a ", 1.0), ("b ", 1 / 1.1), ("c", 1.0)]),
    ("a (b [c", [("a ", 1.0), ("b ", 1.1), ("c", 1.0)]),
    ("[a] (b", [("a", 1 / 1.1), (" ", 1.0), ("b", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
    ("[x]", [("x", 1 / 1.1)]),
    ("(x:1)", [("x", 1.0)]),
    ("( x : 1.5 )", [(" x ", 1.5)]),
    ("a: b", [("a: b", 1.0)]),
    ("stray) close]", [("stray) close]", 1.0)]),
    ("\\\\ backslash", [("\\ backslash", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),
    ("aBREAKb", [("aBREAKb", 1.0)]),
    ("", [("", 1.0)]),
]


@pytest.mark.parametrize("text,expected", ATTENTION)
def test_attention_table(text, expected):
    got = parse_attention(text)
    assert [f.text for f in got] == [t for t, _ in expected]
    assert [f.weight for f in got] == pytest.approx([w for _, w in expected])


SCHEDULES = [  # over 10 steps; A1111's doctests, then more
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]: 2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", [[s, "a" if s % 2 else "(b:1.1)"] for s in range(1, 11)]),
    ("[fe|]male", [[s, "female" if s % 2 else "male"] for s in range(1, 11)]),
    ("[fe|||]male", [[s, "female" if s % 4 == 1 else "male"] for s in range(1, 11)]),
    ("[:blurry:0.5]", [[5, ""], [10, "blurry"]]),
    ("[blurry::0.5]", [[5, "blurry"], [10, ""]]),
    ("a [b:c:25]", [[10, "a b"]]),
    ("a [b:c:1.0]", [[10, "a b"]]),
    ("\\[a:b:2\\]", [[10, "\\[a:b:2\\]"]]),
]


@pytest.mark.parametrize("text,expected", SCHEDULES)
def test_schedule_table(text, expected):
    assert [[e.end_step, e.text] for e in schedule(text, 10)] == expected


@pytest.mark.parametrize("text,expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog :0.5", [("a cat", 1.0), (" a dog", 0.5)]),
    ("a AND b:-1 AND c : 2.", [("a", 1.0), (" b", -1.0), (" c", 2.0)]),
    ("a dog:0.5 BREAK x", [("a dog:0.5 BREAK x", 1.0)]),  # the weight must end the part
    ("ANDROID and ANDY", [("ANDROID and ANDY", 1.0)]),
])
def test_and_table(text, expected):
    assert split_and(text) == tuple(SubPrompt(t, w) for t, w in expected)


def test_values_are_immutable():
    fragment = parse_attention("(a)")[0]
    with pytest.raises(Exception):
        fragment.weight = 2.0  # type: ignore[misc]
    assert BREAK == Fragment("BREAK", -1.0)


# --- chunking with the real CLIP vocabulary ----------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(CONFIGS / "sd15" / "tokenizer")


def words(n: int) -> str:
    return " ".join(["house"] * n)  # one token each


@pytest.mark.parametrize("n,chunks,count", [(0, 1, 0), (1, 1, 1), (75, 1, 75), (76, 2, 76), (150, 2, 150),
                                             (151, 3, 151)])
def test_chunk_counts(clip_tokenizer, n, chunks, count):
    chunked = chunk_fragments(parse_attention(words(n)), clip_tokenizer)
    assert len(chunked.chunks) == chunks
    assert chunked.token_count == (count if n % 75 or n == 0 else n)
    assert sum(len(c.tokens) for c in chunked.chunks) == n


def test_comma_backtrack_moves_the_last_phrase_to_the_next_chunk(clip_tokenizer):
    text = words(70) + ", " + words(10)  # the comma is token 71; the chunk fills at 75
    chunked = chunk_fragments(parse_attention(text), clip_tokenizer)
    comma = clip_tokenizer(",", add_special_tokens=False).input_ids[0]
    assert len(chunked.chunks[0].tokens) == 71 and chunked.chunks[0].tokens[-1] == comma
    assert len(chunked.chunks[1].tokens) == 10


def test_no_backtrack_when_the_comma_is_far(clip_tokenizer):
    text = words(30) + ", " + words(60)
    first = chunk_fragments(parse_attention(text), clip_tokenizer).chunks[0]
    assert len(first.tokens) == 75


def test_break_starts_a_new_chunk_and_keeps_weights(clip_tokenizer):
    chunked = chunk_fragments(parse_attention("(red:1.5) house BREAK blue tree"), clip_tokenizer)
    assert len(chunked.chunks) == 2
    assert chunked.chunks[0].weights == (1.5, 1.0) and chunked.chunks[1].weights == (1.0, 1.0)


# --- generation: no-op syntax equals plain prompts; syntax that should matter does --------------------------

def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.mark.parametrize("prompt,negative", [("(a red house:1)", "blue tree"), ("a red house", "(blue tree:1.0)"),
                                             ("a red [house:house:0.5]", "[blue tree|blue tree]"),
                                             ("a red house :1", "blue tree")])
def test_noop_syntax_equals_plain(tiny, prompt, negative):
    plain = pixels(generate(BASE, tiny))
    assert np.array_equal(pixels(generate(BASE.replace(prompt=prompt, negative_prompt=negative), tiny)), plain)


@pytest.mark.parametrize("prompt,negative", [("a (red:1.5) house", "blue tree"), ("a red house", "[blue tree]"),
                                             ("a red house", "[blue tree:2]"), ("a red house", "blue BREAK tree")])
def test_syntax_that_matters_changes_the_image(tiny, prompt, negative):
    plain = pixels(generate(BASE, tiny))
    assert np.abs(pixels(generate(BASE.replace(prompt=prompt, negative_prompt=negative), tiny)) - plain).max() > 0


def test_halves_joined_by_and_equal_the_whole(tiny):
    """e_u + w (0.5 (e_c - e_u) + 0.5 (e_c - e_u)) = cfg: in the prompt and in the negative."""
    plain = pixels(generate(BASE, tiny))
    prompt_and = BASE.replace(prompt="a red house :0.5 AND a red house :0.5")
    negative_and = BASE.replace(negative_prompt="blue tree :0.5 AND blue tree :0.5")
    assert np.abs(pixels(generate(prompt_and, tiny)) - plain).max() <= 1
    assert np.abs(pixels(generate(negative_and, tiny)) - plain).max() <= 1


def capture_unet_states(monkeypatch, components):
    """Record encoder_hidden_states of every UNet call."""
    seen = []
    forward = components.unet.forward

    def spy(sample, timestep, encoder_hidden_states=None, **kw):
        seen.append(encoder_hidden_states.clone())
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kw)

    monkeypatch.setattr(components.unet, "forward", spy)
    return seen


def test_negative_schedule_switches_at_the_unet_input(tiny, monkeypatch):
    seen = capture_unet_states(monkeypatch, tiny)
    generate(BASE.replace(negative_prompt="[:blue tree:0.5]", steps=10), tiny)
    negatives = [states[0] for states in seen]  # branch order [negative, prompt]
    before, after = negatives[:6], negatives[6:]  # steps 0..5 use "", 6..9 "blue tree" (when = 5)
    assert all(torch.equal(s, before[0]) for s in before) and all(torch.equal(s, after[0]) for s in after)
    assert not torch.equal(before[0], after[0])
    plain_negative = capture_unet_states(monkeypatch, tiny)
    generate(BASE.replace(steps=1), tiny)
    assert torch.equal(after[0], plain_negative[0][0])


def test_prompt_alternation_follows_a1111_steps(tiny, monkeypatch):
    """A1111 picks the first entry with end_step >= the 0-based step: red, red, blue, red over 4 steps."""
    seen = capture_unet_states(monkeypatch, tiny)
    generate(BASE.replace(prompt="a [red|blue] house", steps=4), tiny)
    prompts = [states[1] for states in seen]
    assert torch.equal(prompts[0], prompts[1]) and torch.equal(prompts[0], prompts[3])
    assert not torch.equal(prompts[0], prompts[2])


@pytest.mark.parametrize("prompt_words,negative_words", [(10, 100), (100, 10), (80, 200), (300, 20)])
def test_long_prompt_and_negative_of_different_lengths(tiny, monkeypatch, prompt_words, negative_words):
    seen = capture_unet_states(monkeypatch, tiny)
    request = BASE.replace(prompt=" ".join(["red house"] * (prompt_words // 2)),
                           negative_prompt=" ".join(["blue tree"] * (negative_words // 2)), steps=2)
    result = generate(request, tiny)
    assert beyond_size(result.warnings) == []
    counts = [len(chunk_fragments(parse_attention(t), tiny.tokenizer).chunks)
              for t in (request.prompt, request.negative_prompt)]
    assert seen[0].shape[1] == 77 * max(counts)  # both branches padded to the longer one
    assert counts[0] != counts[1]  # (word lengths differ in tokens: "tree" is three)


def test_the_tail_of_a_long_negative_is_used(tiny):
    head = " ".join(["blue tree"] * 40)  # 80 tokens: beyond one chunk
    a = pixels(generate(BASE.replace(negative_prompt=head + " red"), tiny))
    b = pixels(generate(BASE.replace(negative_prompt=head + " car"), tiny))
    assert np.abs(a - b).max() > 0


# --- encoding: emphasis, clip skip against diffusers, caching ----------------------------------------------

def test_original_emphasis_keeps_each_chunk_mean_and_no_norm_does_not():
    from avert.conditioning.encode import _emphasize

    states = torch.randn(2, 5, 3) + 0.5
    weights = torch.tensor([[1.0, 1.5, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0, 1.0]])
    original = _emphasize(states, weights, "Original")
    no_norm = _emphasize(states, weights, "No norm")
    assert torch.allclose(original.mean(dim=(1, 2)), states.mean(dim=(1, 2)), atol=1e-6)
    assert torch.equal(no_norm, states * weights[:, :, None])
    assert torch.equal(_emphasize(states, torch.ones(2, 5), "Original"), states)  # (x:1) is x, bit for bit


def test_emphasis_modes_differ_on_the_embedded_model():
    from avert.api import load

    model = load()
    text = "a (red:1.5) house"
    original, no_norm = (TextEncoding(model.text_encoder, model.tokenizer, options=EncodeOptions(emphasis=mode))
                         .encode([text])[text].states for mode in ("Original", "No norm"))
    plain = TextEncoding(model.text_encoder, model.tokenizer).encode(["a red house"])["a red house"].states
    assert original.mean().item() == pytest.approx(plain.mean().item(), rel=1e-4)
    assert not torch.allclose(original, no_norm)


def test_clip_skip_two_is_the_penultimate_layer_with_the_final_norm(tiny):
    """diffusers' encode_prompt(clip_skip=1) formula: hidden_states[-2] through final_layer_norm. (Its own code
    reads `text_encoder.text_model`, which transformers 5 removed, so the formula is applied here.)"""
    ours = TextEncoding(tiny.text_encoder, tiny.tokenizer, options=EncodeOptions(clip_skip=2)) \
        .encode(["a red house"])["a red house"].states
    ids = tiny.tokenizer("a red house", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        theirs = tiny.text_encoder.final_layer_norm(hidden)[0]
    last = TextEncoding(tiny.text_encoder, tiny.tokenizer).encode(["a red house"])["a red house"].states
    assert torch.allclose(ours, theirs, atol=1e-6) and not torch.allclose(ours, last, atol=1e-3)


def count_encoder_calls(monkeypatch, components):
    calls = []
    forward = components.text_encoder.forward

    def spy(input_ids, *a, **kw):
        calls.append(input_ids.shape[0])
        return forward(input_ids, *a, **kw)

    monkeypatch.setattr(components.text_encoder, "forward", spy)
    return calls


def test_each_text_encoded_once_per_request_and_cached_across(tiny, monkeypatch):
    from avert.conditioning.encode import _CACHES

    _CACHES.pop(tiny.text_encoder, None)
    calls = count_encoder_calls(monkeypatch, tiny)
    request = BASE.replace(prompt="a [red|blue] car [dog:cat:2] AND a photo", negative_prompt="[tree:car:0.5] x9",
                           steps=6)
    first = generate(request, tiny)
    assert len(calls) == 1  # one batched forward for every distinct text of the request
    texts = 1 + 4 + 1 + 2  # "", the prompt's schedule entries (red/blue x dog/cat), "a photo", 2 negatives
    assert calls[0] == texts
    assert np.array_equal(pixels(generate(request, tiny)), pixels(first))
    assert len(calls) == 1  # the second request was served from the cache


def test_cache_is_bounded():
    from avert.conditioning.encode import _LRU

    cache = _LRU(3)
    for i in range(10):
        cache.put(i, i)
    assert len(cache.items) == 3 and cache.get(0) is None and cache.get(9) == 9


# --- textual-inversion embeddings --------------------------------------------------------------------------

def token_vectors(components, text: str) -> torch.Tensor:
    ids = components.tokenizer(text, add_special_tokens=False).input_ids
    return components.text_encoder.get_input_embeddings().weight[ids].detach().clone()


@pytest.fixture()
def embeddings_dir(tmp_path, tiny):
    vectors = token_vectors(tiny, "blue tree")
    save_file({"emb_params": vectors}, tmp_path / "bluetree.safetensors")  # A1111, converted
    save_file({"string_to_param.*": vectors}, tmp_path / "bluetreeb.safetensors")  # A1111 string_to_param
    save_file({"<blue-tree>": vectors}, tmp_path / "diffusersbt.safetensors")  # diffusers
    save_file({"emb_params": torch.zeros(2, 17)}, tmp_path / "wrongwidth.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    return tmp_path


@pytest.mark.parametrize("name", ["bluetree", "bluetreeb", "diffusersbt"])
def test_embedding_stands_for_its_vectors(tiny, embeddings_dir, name):
    plain = pixels(generate(BASE, tiny))
    with_embedding = generate(BASE.replace(negative_prompt=name), tiny, embeddings=embeddings_dir)
    assert np.array_equal(pixels(with_embedding), plain)
    weighted = generate(BASE.replace(negative_prompt=f"({name}:0.8)"), tiny, embeddings=embeddings_dir)
    assert np.abs(pixels(weighted) - plain).max() > 0


def test_embedding_in_the_prompt(tiny, embeddings_dir):
    request = BASE.replace(prompt="a red bluetree", negative_prompt="")
    expected = pixels(generate(request.replace(prompt="a red blue tree"), tiny))
    assert np.array_equal(pixels(generate(request, tiny, embeddings=embeddings_dir)), expected)


@pytest.mark.parametrize("name,message", [("wrongwidth", "width 17"), ("broken", "not a readable")])
def test_bad_embedding_is_an_error_naming_the_file(tiny, embeddings_dir, name, message):
    with pytest.raises(EmbeddingError, match=f"{name}.safetensors.*{message}|{message}.*"):
        generate(BASE.replace(negative_prompt=f"bad, {name}"), tiny, embeddings=embeddings_dir)
    generate(BASE, tiny, embeddings=embeddings_dir)  # unused bad files do not stop a run


def test_embedding_longer_than_a_chunk_is_an_error_naming_it(clip_tokenizer, tmp_path):
    save_file({"emb_params": torch.zeros(76, 768)}, tmp_path / "huge.safetensors")
    with pytest.raises(EmbeddingError, match="huge.safetensors: 76 vectors"):
        chunk_fragments(parse_attention("a huge"), clip_tokenizer, load_embeddings(tmp_path))


def test_embedding_is_never_split_across_chunks(clip_tokenizer, tmp_path):
    save_file({"emb_params": torch.zeros(8, 768)}, tmp_path / "EasyNegative.safetensors")
    library = load_embeddings(tmp_path)
    chunked = chunk_fragments(parse_attention(words(70) + " EasyNegative"), clip_tokenizer, library)
    assert [len(c.tokens) for c in chunked.chunks] == [70, 8]
    assert chunked.chunks[1].embeddings[0][0] == 0 and chunked.chunks[1].embeddings[0][1].name == "EasyNegative"


# --- the embedded model (MiniLM text encoder) and the CLI ---------------------------------------------------

def test_prompt_language_on_the_embedded_model(monkeypatch):
    from avert.api import load

    model = load()
    base = GenerationRequest("a red house", negative_prompt="trees", seed=3, steps=3)
    plain = pixels(generate(base, model))
    assert np.array_equal(pixels(generate(base.replace(prompt="(a red house:1)"), model)), plain)
    long_negative = ", ".join(["green tones", "trees", "a boat"] * 12)  # several 30-token chunks
    seen = capture_unet_states(monkeypatch, model)
    result = generate(base.replace(negative_prompt=long_negative, prompt="a (red:1.3) house"), model)
    assert beyond_size(result.warnings) == [] and seen[0].shape[1] > 32 and seen[0].shape[1] % 32 == 0


def test_prompt_command_json(capsys):
    from avert.cli import main

    assert main(["prompt", "a [b:3] (c:1.2)", "--steps", "10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schedule"] == [[3, "a  (c:1.2)"], [10, "a b (c:1.2)"]]
    assert report["attention"] == [[["a  ", 1.0], ["c", 1.2]], [["a b ", 1.0], ["c", 1.2]]]
    entry = report["parts"][0]["entries"][1]
    assert entry["steps"] == [4, 9] and entry["chunks"][0]["tokens"] + entry["chunks"][0]["padding"] == 30


def test_prompt_command_text(capsys):
    from avert.cli import main

    assert main(["prompt", "a cat AND a dog BREAK x :0.5", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "AND part 2, weight 0.5" in out and "chunk 2:" in out


# ---------------------------------------------------------------- bounded parsing


def test_schedule_cut_at_commas_equals_the_whole_parse_on_random_texts():
    """The parser sees each comma-separated piece alone (bounded time); the entries must equal A1111's parse of
    the whole text, for texts made of the characters that matter (brackets, colons, bars, commas, escapes)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from avert.prompts.schedule import _schedule_whole

    tokens = st.sampled_from(list("ab ,()[]:|\n") + ["1", "0.5", "3", ", ", "\\(", "\\[", "\\", "\\\n"])

    examples = int(os.environ.get("AVERT_HYPOTHESIS_EXAMPLES", "1500"))  # tools/mutation.py runs fewer

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(tokens, max_size=20), st.integers(1, 12))
    def check(parts, steps):
        text = "".join(parts)
        assert schedule.__wrapped__(text, steps) == _schedule_whole(text, steps), text

    check()


@pytest.mark.parametrize("text", ["(a:1.1), " * 910, "(masterpiece:1.2), " * 200 + "[cat:dog:0.5]", " " * 8190,
                                  "[a:b:3], " * 20 + "x" * 7000])
def test_long_prompts_parse_in_well_under_a_second(text):
    import time

    from avert.prompts.parse import parse_prompt

    started = time.perf_counter()
    parse_prompt(text, 150)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("text, limit", [("[a:b:3], " * 910, "in one stretch"), ("[a] " * 100, "in one stretch"),
                                         ("[" * 4000, "in one stretch"), ("[((a)):[b]:1] AND " * 30, "in all")])
def test_schedule_syntax_over_the_parsers_budget_is_refused_by_name(text, limit):
    from avert.prompts.parse import parse_prompt
    from avert.prompts.schedule import PromptTooComplex

    with pytest.raises(PromptTooComplex, match="must have at most 64 bracket"):
        parse_prompt(text[:8192], 20)
    with pytest.raises(Exception) as error:
        from avert.validation import validate

        validate(GenerationRequest(text[:8192]))
    assert "prompt:" in str(error.value) and "bounded time" in str(error.value)


def test_and_parts_and_distinct_text_are_bounded_in_validation():
    from avert.errors import ValidationError
    from avert.request import Negative
    from avert.validation import validate

    with pytest.raises(ValidationError, match="at most 32 AND parts"):
        validate(GenerationRequest("a AND " * 40))
    with pytest.raises(ValidationError, match="at most 32 AND parts"):
        validate(GenerationRequest("a", negatives=tuple(Negative("b AND " * 5) for _ in range(6))))
    alternating = "[a|b|c|d|e|f|g], " * 20 + "x" * 7000
    with pytest.raises(ValidationError, match="65536 characters encoded"):
        validate(GenerationRequest(alternating, steps=150, negatives=(Negative(alternating),)))
    validate(GenerationRequest(alternating, steps=150))  # alone: 7 distinct texts of 7340 characters


@pytest.mark.parametrize("text, steps, expected", [
    ("[a:b:2], [c:d:3]", 4, ((2, "a, c"), (3, "b, c"), (4, "b, d"))),
    ("[a:b:1]", 4, ((1, "a"), (4, "b"))),
    ("[a:b:0]", 4, ((4, "b"),)),
    ("[a:b:0.5]", 10, ((5, "a"), (10, "b"))),
    ("[a:b:1.5]", 10, ((10, "a"),)),
    ("[a:b:20]", 10, ((10, "a"),)),
    ("[a|b], x", 3, ((1, "a, x"), (2, "b, x"), (3, "a, x"))),
    ("x, [a:[b:c:3]:1]", 4, ((1, "x, a"), (3, "x, b"), (4, "x, c"))),
    ("[a:b:2], y|z", 4, ((4, "[a:b:2], y|z"),)),           # a piece that does not parse: all of it literally
    ("[a:b:2], y\\", 4, ((4, "[a:b:2], y\\"),)),           # a trailing backslash does not parse either
    ("[a:b:2], (c\\\nd)", 4, ((4, "[a:b:2], (c\\\nd)"),)),  # nor a backslash before a line break
    ("\\[a:b:2\\], c", 4, ((4, "\\[a:b:2\\], c"),)),        # escaped brackets are text
    ("(a, [b:c:2]), d", 4, ((2, "(a, b), d"), (4, "(a, c), d"))),
    ("a], [b:c:2]", 4, ((2, "a], b"), (4, "a], c"))),     # unbalanced: parsed whole, the stray ] is text
])
def test_schedules_of_texts_cut_into_pieces(text, steps, expected):
    from avert.prompts.schedule import ScheduleEntry, _schedule_whole

    entries = tuple(ScheduleEntry(*e) for e in expected)
    assert schedule.__wrapped__(text, steps) == entries
    assert _schedule_whole(text, steps) == entries


def test_the_parsers_budget_holds_at_its_bounds_and_names_the_counts():
    from avert.prompts.schedule import PromptTooComplex

    piece = "[a:b:1]" * 16  # 64 bracket and colon characters
    assert schedule.__wrapped__(piece, 4)[0].text == "a" * 16
    assert schedule.__wrapped__(", ".join([piece] * 4), 4)  # 256 in all
    with pytest.raises(PromptTooComplex) as info:
        schedule.__wrapped__(piece + "|", 4)
    assert str(info.value) == (
        "must have at most 64 bracket, colon and bar characters in one stretch between commas and 256 in all "
        "stretches the parser reads (this has 65 and 65), so that [from:to:when] and [a|b] parse in bounded time: "
        "separate them with commas, close every bracket (a text whose brackets do not balance is parsed whole), or "
        "escape literal brackets as \\[ \\]")
    with pytest.raises(PromptTooComplex, match=r"\(this has 64 and 257\)"):
        schedule.__wrapped__(", ".join([piece] * 4) + ", a|b", 4)


def test_a_parsed_prompt_keeps_its_text_steps_and_weighted_parts():
    from avert.prompts.parse import parse_prompt

    parsed = parse_prompt("a cat AND a dog :0.5", 7)
    assert (parsed.text, parsed.steps) == ("a cat AND a dog :0.5", 7)
    assert [(p.weight, p.entries[0].text) for p in parsed.parts] == [(1.0, "a cat"), (0.5, " a dog")]
    assert [(p.weight, p.entries[0].text) for p in parse_prompt("plain", 3).parts] == [(1.0, "plain")]


def test_a_weight_that_is_not_a_number_counts_as_absent():
    assert parse_attention("(a:1.2.3)") == (Fragment("a", 1.0),)
    assert parse_attention("(a:.5)") == (Fragment("a", 0.5),)


def test_escapes_and_stray_closers_do_not_stop_a_text_being_cut_into_pieces():
    """The parser's budget counts each piece between commas: escaped brackets and capital letters must not keep a
    long text whole (20 schedules of 4 characters each fit; as one piece they would be over 64)."""
    schedules = ", [a:b:1]" * 20
    for head in ("\\(x", "X", "x\\[", "\\\\", "a b c"):
        entries = schedule.__wrapped__(head + schedules, 4)
        assert entries[0].end_step == 1 and entries[-1].end_step == 4, head
    # an escape covers one character: the comma after it still cuts (33 and 36 characters, not 69 in one piece)
    assert schedule.__wrapped__("[a:b:1]" * 8 + "\\(," + "[a:b:1]" * 9, 4)[0].end_step == 1


def test_an_alternation_of_schedules_follows_both():
    from avert.prompts.schedule import ScheduleEntry

    assert schedule.__wrapped__("[[a:b:2]|c]", 4) == (ScheduleEntry(1, "a"), ScheduleEntry(2, "c"),
                                                      ScheduleEntry(3, "b"), ScheduleEntry(4, "c"))


def test_a_scheduled_prompt_gives_the_entry_in_force_at_each_step():
    from avert.prompts.parse import parse_prompt

    part = parse_prompt("[a:[b:c:2]:1]", 4).parts[0]
    assert [part.at(s).text for s in (0, 1, 2, 3, 4, 9)] == ["a", "a", "b", "c", "c", "c"]
