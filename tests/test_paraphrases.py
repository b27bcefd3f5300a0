"""`avert eval paraphrases`: negatives in words no caption of the world uses."""

from __future__ import annotations

import dataclasses

import pytest

from avert.evaluation import paraphrases as par
from avert.evaluation.negatives import DEFAULT_PAIRS
from avert.world import CONCEPTS


def test_every_concept_has_three_paraphrases_in_words_no_caption_uses():
    vocabulary = par.caption_words()
    assert {"sun", "green", "tones", "sailboat", "meadow", "the"} <= vocabulary  # the check reads real captions
    assert set(par.PARAPHRASES) == set(CONCEPTS)
    assert all(len(set(texts)) == 3 for texts in par.PARAPHRASES.values())
    assert par.familiar_words(vocabulary=vocabulary) == []
    assert par.familiar_words({"sun": ("a bright orb",)}, vocabulary) == [("sun", "a bright orb", "a"),
                                                                           ("sun", "a bright orb", "bright")]


def test_each_default_pair_keeps_its_prompt_with_each_paraphrase():
    made = par.pairs()
    assert made[: len(DEFAULT_PAIRS)] == DEFAULT_PAIRS and len(made) == 4 * len(DEFAULT_PAIRS)
    assert [(p.prompt, p.negative, p.concept) for p in made if p.prompt == "a view of the sea"][1:] == [
        ("a view of the sea", text, "boat") for text in par.PARAPHRASES["boat"]]


@pytest.fixture(scope="module")
def embedded():
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    return load_model(EMBEDDED_MODEL)


def test_a_run_measures_each_paraphrase_under_cfg_and_the_default_beside_its_literal(embedded):
    from avert.evaluation.common import Settings

    base = (DEFAULT_PAIRS[1],)  # a landscape in shades of green / green tones: the concept in every image
    rows = par.evaluate(embedded, 2, Settings(steps=8, batch_size=2), progress=False, align_seeds=2, base=base)
    assert [(r.method, r.paraphrase) for r in rows] == [(m, t) for m in ("cfg", "gated")
                                                         for t in par.PARAPHRASES["green tones"]]
    for r in rows:
        assert r.literal == r.concept == "green tones" and r.rate_without == 1.0 and -1.0 <= r.alignment <= 1.0
        assert r.suppression is not None and r.literal_suppression is not None
    assert len({r.alignment for r in rows}) == 3  # one per paraphrase, whatever the method
    lines = par.summary(rows)
    assert len(lines) == 2 and "mean suppression over" in lines[0] and lines[1].startswith("- **gated**")
    assert par.alignment(embedded, base[0].prompt, "sepia", "sepia", range(2), 8) == pytest.approx(1.0)
    empty = par.summary([dataclasses.replace(rows[0], suppression=None)])
    assert empty == ["- **cfg**: no suppression is defined (the concepts never appeared without a negative)"]


def test_the_command_prints_the_summary_and_writes_the_page(monkeypatch, tmp_path, capsys):
    from avert.cli import main

    row = par.ParaphraseRow("gated", "a bright day", "sun", "sun", "daystar", 0.9, 0.95, -0.1, 0.2)
    monkeypatch.setattr(par, "evaluate", lambda *args, **kwargs: [row, dataclasses.replace(row, paraphrase="x",
                                                                                             suppression=0.9)])
    assert main(["eval", "paraphrases", "--seeds", "2", "--docs", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "mean suppression over 2 paraphrases **0.40** (target at least 0.7: missed)" in out
    assert "1 below 0 (target none: missed: \"daystar\" -0.10)" in out
    page = (tmp_path / "eval" / "paraphrases.md").read_text()
    assert "`avert eval paraphrases --seeds 2`" in page and "| gated | a bright day | sun | sun | 0.95 | daystar |" in page
