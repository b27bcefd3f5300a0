"""avert.evaluation: the arithmetic of suppression and fidelity, speckle, `avert eval` arguments and JSON.

All fast and model-free except `test_evaluate_pairs_end_to_end_on_the_shipped_model`, which renders with the
embedded model shipped in src/avert/embedded/model and reads the images with the shipped detector.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from avert.cli import build_parser, main
from avert.evaluation.common import Settings, reading_from
from avert.evaluation.concepts import CONCEPT_PROMPTS
from avert.evaluation.negatives import (
    Method,
    DEFAULT_METHODS,
    DEFAULT_PAIRS,
    Pair,
    PairResult,
    figure_seeds,
    figure_title,
    hstack,
    markdown_table,
    mean_suppression,
    negatives_page,
    pair_from_texts,
    pairs_from_args,
    results_json,
    summarize_pair,
    suppression,
    target_concept,
    worst_fidelity_drop,
)
from avert.evaluation.speckle import high_frequency_energy, speckle_fraction, speckle_threshold
from avert.errors import AvertError
from avert.world import CONCEPT_INDEX, CONCEPTS, make_dataset, mentioned_concepts


def reading(n: int, has: dict[str, list[int]], speckled=(), sky: bool = True, ground: bool = True):
    """A synthetic reading of n images: `has[concept]` lists the images showing it."""
    present = np.zeros((n, len(CONCEPTS)), dtype=bool)
    present[:, CONCEPT_INDEX["day sky"]] = sky
    present[:, CONCEPT_INDEX["grass"]] = ground
    for concept, rows in has.items():
        present[rows, CONCEPT_INDEX[concept]] = True
    flags = np.zeros(n, dtype=bool)
    flags[list(speckled)] = True
    return reading_from(present, flags)


def row(**changes) -> PairResult:
    values = dict(prompt="a landscape", negative="trees", concept="tree", prompt_concepts=(), rate_without=0.5,
                  rate_with=0.1, suppression=0.8, fidelity_without=1.0, fidelity_with=0.9,
                  fidelity_measure="well-formed", well_formed_without=1.0, well_formed_with=0.9,
                  speckle_without=0.0, speckle_with=0.05, n_seeds=4, cfg_scale=7.0, steps=20, sampler="Euler a",
                  seconds=1.5, flags=(), seeds_with_concept_without=(0, 2), seeds_with_concept_with=(2,))
    return PairResult(**{**values, **changes})


# --- suppression and fidelity ---------------------------------------------------------------------------------


def test_suppression_arithmetic():
    assert suppression(0.5, 0.1) == pytest.approx(0.8)
    assert suppression(0.5, 0.0) == 1.0
    assert suppression(0.4, 0.4) == 0.0
    assert suppression(0.5, 0.75) == pytest.approx(-0.5)  # the negative made it more common
    assert suppression(0.0, 0.0) is None and suppression(0.0, 0.3) is None  # nothing to suppress
    assert suppression(math.nan, 0.1) is None


def test_summarize_pair_rates_suppression_and_fidelity_with_prompt_concepts():
    pair = Pair("a house by the sea", "boat", "boat", ("house", "sea"))
    without = reading(8, {"boat": [0, 1, 2, 3], "house": list(range(8)), "sea": list(range(8))})
    with_ = reading(8, {"boat": [3], "house": [0, 1, 2, 3, 4, 5], "sea": list(range(8))}, speckled=[7])
    r = summarize_pair(pair, without, with_, Settings(), seconds=2.0)
    assert (r.rate_without, r.rate_with) == (0.5, 0.125)
    assert r.suppression == pytest.approx(0.75)
    assert r.fidelity_measure == "house, sea"
    assert r.fidelity_without == 1.0 and r.fidelity_with == pytest.approx((6 / 8 + 1) / 2)
    assert r.well_formed_with == pytest.approx(7 / 8) and r.speckle_with == pytest.approx(1 / 8)
    assert r.seeds_with_concept_without == (0, 1, 2, 3) and r.seeds_with_concept_with == (3,)
    assert (r.n_seeds, r.cfg_scale, r.steps, r.sampler, r.flags) == (8, 7.0, 20, "Euler a", ())


def test_fidelity_of_a_generic_prompt_is_the_share_of_well_formed_images():
    pair = Pair("a landscape", "trees", "tree")
    without = reading(4, {"tree": [0, 1, 2]})
    with_ = reading(4, {}, speckled=[0])  # one speckled image is not well-formed
    r = summarize_pair(pair, without, with_, Settings(cfg_scale=5.0, sampler="DDIM"), seconds=0.0)
    assert r.fidelity_measure == "well-formed"
    assert (r.fidelity_without, r.fidelity_with) == (1.0, 0.75)
    assert r.suppression == 1.0 and (r.cfg_scale, r.sampler) == (5.0, "DDIM")
    no_ground = summarize_pair(pair, reading(4, {}, ground=False), with_, Settings(), 0.0)
    assert no_ground.fidelity_without == 0.0  # no ground detected: not a world scene


def test_rate_without_zero_gives_null_suppression_and_a_flag():
    pair = Pair("a landscape", "hands", "hand")
    r = summarize_pair(pair, reading(4, {}), reading(4, {"hand": [1]}), Settings(), 0.0)
    assert r.suppression is None and r.flags and r.flags[0].startswith("undefined")
    rare = summarize_pair(pair, reading(4, {"hand": [1]}), reading(4, {}), Settings(), 0.0)
    assert rare.suppression == 1.0 and rare.flags[0].startswith("rare")
    assert json.loads(results_json([r]))[0]["suppression"] is None
    assert "n/a" in markdown_table([r])
    assert mean_suppression([r, rare]) == 1.0 and mean_suppression([r]) is None


def test_summary_page_names_the_worst_fidelity_drop():
    rows = [row(), row(negative="clouds", concept="cloud", fidelity_without=0.9, fidelity_with=0.4, suppression=None,
                       flags=("undefined: never",))]
    assert worst_fidelity_drop(rows).negative == "clouds"
    from avert.evaluation.common import RunInfo

    info = RunInfo("2026-01-01", "test machine", "model", "0123456789", 4, Settings(), "cpu, fp32")
    page = negatives_page(rows, info)
    assert "Mean suppression: **0.80** over 1 of 2 pairs" in page and "-0.50" not in page
    assert "Worst fidelity drop: **+0.50**" in page and '"clouds"' in page
    assert "0123456789" in page and "negatives.png" in page and "seeds 0..3" in page


def test_absent_page_counts_the_pairs_within_the_fidelity_target(tmp_path):
    from avert.evaluation.common import RunInfo
    from avert.evaluation.negatives import absent_page, write_negatives_docs

    rows = [row(negative="sepia", concept="sepia", rate_without=0.0, rate_with=0.0, suppression=None,
                fidelity_without=0.94, fidelity_with=0.06),
            row(negative="hands", concept="hand", rate_without=0.0, rate_with=0.0, suppression=None,
                fidelity_without=0.94, fidelity_with=0.88),  # within 10 points
            row(prompt="a house", negative="green tones", concept="green tones", rate_without=0.0, rate_with=0.0,
                suppression=None, fidelity_measure="house", fidelity_without=1.0, fidelity_with=1.0,
                well_formed_without=1.0, well_formed_with=0.5)]  # the house stays, the background does not
    info = RunInfo("2026-01-01", "test machine", "model", "0123456789", 4, Settings(), "cpu, fp32")
    page = absent_page(rows, info)
    assert "Fidelity drop within 10 points: **2 of 3 pairs**" in page
    assert "Well-formed images (a sky, a ground, not speckled) within 10 points: **2 of 3 pairs**" in page
    assert '"a house" / "green tones" 1.00 -> 0.50' in page
    assert 'Worst: **+0.88** (well-formed 0.94 -> 0.06) for "a landscape" with negative "sepia"' in page
    assert "avert eval negatives --absent" in page and "negatives-absent.png" in page
    written = write_negatives_docs(rows, info, tmp_path, absent=True)
    assert written == tmp_path / "eval" / "negatives-absent.md" and not (tmp_path / "eval" / "negatives.md").exists()
    assert "negatives-absent.png" not in written.read_text()  # no figure given


def test_absent_pairs_are_chosen_by_flag_and_exclude_pair():
    from avert.evaluation.negatives import ABSENT_FIGURE_PAIRS, ABSENT_PAIRS

    args = build_parser().parse_args(["eval", "negatives", "--absent"])
    assert pairs_from_args(args.pair, args.absent) == ABSENT_PAIRS
    assert ("a house on a hill", "green tones") == (ABSENT_PAIRS[0].prompt, ABSENT_PAIRS[0].negative)  # README
    assert set(ABSENT_FIGURE_PAIRS) <= {(p.prompt, p.negative) for p in ABSENT_PAIRS}
    for pair in ABSENT_PAIRS:
        assert pair.concept not in mentioned_concepts(pair.prompt), pair
        assert target_concept(pair.negative, pair.prompt) == pair.concept, pair
        assert pair_from_texts(pair.prompt, pair.negative) == pair
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "negatives", "--absent", "--pair", "a landscape", "trees"])


def test_results_json_shape():
    data = json.loads(results_json([row(), row(prompt="a scene", negative="hands", concept="hand")]))
    assert isinstance(data, list) and len(data) == 2
    for key in ("prompt", "negative", "rate_without", "rate_with", "suppression", "fidelity_without",
                "fidelity_with", "concept", "n_seeds", "cfg_scale", "steps", "sampler", "seconds", "flags"):
        assert key in data[0]
    assert data[1]["negative"] == "hands" and data[0]["seeds_with_concept_without"] == [0, 2]


def test_figure_seeds_and_hstack():
    assert figure_seeds(row(seeds_with_concept_without=(5, 9, 11, 12, 40), n_seeds=64)) == [5, 9, 11, 12]
    assert figure_seeds(row(seeds_with_concept_without=(2,), n_seeds=64)) == [0, 1, 2, 3]
    assert figure_seeds(row(seeds_with_concept_without=(), n_seeds=2)) == [0, 1]
    assert figure_title(row()) == "\u201ca landscape\u201d: tree in 2/4 images without, 1/4 with the negative"
    from PIL import Image

    out = hstack([Image.new("RGB", (10, 20)), Image.new("RGB", (30, 5))], gap=4)
    assert out.size == (44, 20)


# --- pairs --------------------------------------------------------------------------------------------------


def test_default_pairs_cover_objects_colours_and_tones():
    assert len(DEFAULT_PAIRS) >= 12
    targets = {p.concept for p in DEFAULT_PAIRS}
    assert {"tree", "sun", "hand", "boat"} <= targets  # objects
    assert targets & {"red house", "blue house", "yellow house", "white house"}  # a colour
    assert targets & {"green tones", "warm tones", "blue tones", "black and white", "sepia"}  # tones
    assert len({(p.prompt, p.negative) for p in DEFAULT_PAIRS}) == len(DEFAULT_PAIRS)
    for pair in DEFAULT_PAIRS:  # the prompt never names the concept its negative targets
        assert pair.concept not in mentioned_concepts(pair.prompt), pair
        assert target_concept(pair.negative, pair.prompt) == pair.concept, pair


def test_target_concept_from_negative_text():
    assert target_concept("trees") == "tree"
    assert target_concept("sepia") == "sepia"
    assert target_concept("green tones") == "green tones"
    assert target_concept("a red house") == "red house"  # the most specific of house / red house
    assert target_concept("red", prompt="a house on a hill") == "red house"
    with pytest.raises(AvertError, match="zebras"):
        target_concept("zebras")
    with pytest.raises(AvertError, match="several"):
        target_concept("trees and clouds")


def test_pair_from_texts_uses_the_default_pair_or_reads_the_texts():
    assert pair_from_texts("a house", "red") in DEFAULT_PAIRS
    p = pair_from_texts("a boat by a house, by the sea", "boats")
    assert p.concept == "boat" and p.prompt_concepts == ("house", "sea")
    assert pairs_from_args(None) == DEFAULT_PAIRS


def test_pair_flag_parses_repeated_pairs():
    args = build_parser().parse_args(["eval", "negatives", "--pair", "a landscape", "trees", "--pair", "a scene",
                                      "hands", "--seeds", "8", "--json"])
    assert args.pair == [["a landscape", "trees"], ["a scene", "hands"]]
    assert args.seeds == 8 and args.json and args.eval_what == "negatives"
    assert [p.concept for p in pairs_from_args(args.pair)] == ["tree", "hand"]
    defaults = build_parser().parse_args(["eval", "negatives"])
    assert defaults.pair is None and defaults.seeds == 64 and defaults.cfg_scale is None and defaults.steps == 20


def test_unknown_concept_in_pair_is_an_error_naming_the_text(capsys):
    code = main(["eval", "negatives", "--pair", "a landscape", "zebras", "--model", "/nonexistent"])
    err = capsys.readouterr().err
    assert code == 2 and "'zebras'" in err and "names no concept" in err


@pytest.mark.parametrize("value", ["0", "1025", "many"])
def test_seeds_out_of_bounds_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "negatives", "--seeds", value])
    assert "must be an integer from 1 to 1024" in capsys.readouterr().err


def test_bad_settings_are_refused_before_loading(capsys):
    code = main(["eval", "concepts", "--cfg-scale", "99", "--model", "/nonexistent", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "cfg_scale" in err and "nonexistent" not in err


def test_prompt_concepts_lists_each_concept_a_prompt_names():
    from avert.evaluation.concepts import prompt_concepts

    assert prompt_concepts(["a lone tree"]) == [("tree", "a lone tree")]
    assert prompt_concepts(["a red house by the sea", "trees"]) == [
        ("house", "a red house by the sea"), ("red house", "a red house by the sea"), ("sea", "a red house by the sea"),
        ("tree", "trees")]
    with pytest.raises(AvertError, match="prompt: 'a landscape' names no concept"):
        prompt_concepts(["trees", "a landscape"])


def test_concept_summary_names_the_prompt_of_a_row_measured_under_another_phrasing():
    from avert.evaluation.concepts import ConceptResult, summary_lines

    def row(concept, prompt, rate):
        return ConceptResult(concept, prompt, rate, 0.3, 0.4, 1.0, 0.0, 64, 7.0, 20, "Euler a", 1.0)

    assert summary_lines([row("tree", "a tree", 0.84), row("sun", "the sun", 1.0)]) == [
        "1 of 2 concepts reach 90% when named; below: tree (0.84)."]
    assert summary_lines([row("tree", "a lone tree", 0.66), row("tree", "trees", 1.0), row("tree", "a tree", 0.84)]) == [
        "1 of 3 (concept, prompt) rows reach 90% when named; below: tree under \"a lone tree\" (0.66), tree (0.84)."]
    assert summary_lines([row("tree", "trees", 1.0)]) == [
        "Every one of the 1 (concept, prompt) rows reaches 90% when named (lowest: tree under \"trees\", 1.00)."]


def test_concepts_prompt_naming_no_concept_is_refused_before_loading(capsys):
    code = main(["eval", "concepts", "--prompt", "a zebra", "--model", "/nonexistent", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "'a zebra'" in err and "names no concept" in err and "nonexistent" not in err


def test_concept_prompts_name_their_concept():
    assert tuple(CONCEPT_PROMPTS) == CONCEPTS
    for concept, prompt in CONCEPT_PROMPTS.items():
        assert concept in mentioned_concepts(prompt), (concept, prompt)


# --- speckle ------------------------------------------------------------------------------------------------


def test_speckle_low_on_world_renders_high_with_added_noise():
    reference = make_dataset(400, 101, captions_per_image=0).images
    clean = make_dataset(200, 202, captions_per_image=0).images
    noise = np.random.default_rng(0).normal(0, 12, clean.shape)
    noisy = np.clip(clean + noise, 0, 255).round().astype(np.uint8)
    assert speckle_fraction(clean, reference) <= 0.05
    assert speckle_fraction(noisy, reference) >= 0.95
    assert speckle_threshold(reference) > 0


def test_high_frequency_energy_is_zero_for_flat_images_and_accepts_pil():
    from PIL import Image

    flat = np.full((2, 8, 8, 3), 120, dtype=np.uint8)
    assert np.all(high_frequency_energy(flat) == 0)
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([checker] * 3, axis=-1))
    assert high_frequency_energy([image])[0] > 0.1  # every pixel differs from its neighbours
    assert speckle_fraction(np.zeros((0, 8, 8, 3), dtype=np.uint8), flat) == 0.0


# --- end to end (needs the shipped model and detector) ------------------------------------------------------


@pytest.mark.slow
def test_evaluate_pairs_end_to_end_on_the_shipped_model():
    from avert.evaluation.negatives import evaluate_pairs
    from avert.models.default import EMBEDDED_MODEL

    assert (EMBEDDED_MODEL / "model_index.json").exists(), f"no embedded model shipped at {EMBEDDED_MODEL}"
    pair = pair_from_texts("a landscape in shades of green", "green tones")  # a default pair
    [result] = evaluate_pairs([pair], EMBEDDED_MODEL, seeds=4, progress=False)
    assert (result.prompt, result.negative, result.concept, result.n_seeds) == (
        "a landscape in shades of green", "green tones", "green tones", 4)
    assert result.rate_with <= result.rate_without  # the negative never adds the tone it names
    for value in (result.rate_without, result.rate_with, result.fidelity_without, result.fidelity_with,
                  result.speckle_without, result.speckle_with):
        assert 0.0 <= value <= 1.0
    assert set(result.seeds_with_concept_without) <= set(range(4))
    assert result.suppression is None or result.suppression <= 1.0
    assert json.loads(results_json([result]))[0]["prompt"] == "a landscape in shades of green"
    # collateral: every concept's rate; tones other than green are implied, so they do not count
    from avert.world import CONCEPT_INDEX, CONCEPTS

    assert len(result.concept_rates_without) == len(result.concept_rates_with) == len(CONCEPTS)
    changed = {c: abs(result.concept_rates_with[i] - result.concept_rates_without[i]) for c, i in CONCEPT_INDEX.items()}
    counted = [v for c, v in changed.items() if c not in ("green tones", "warm tones", "blue tones", "black and white",
                                                          "sepia")]
    assert result.collateral_rates == pytest.approx(np.mean(counted))
    assert result.n_absent + result.n_outside <= 4 and (result.delta_e_absent or 0) >= 0


@pytest.mark.slow
def test_eval_concepts_prompt_end_to_end_measures_the_given_phrasing_and_writes_no_page(tmp_path, capsys):
    code = main(["eval", "concepts", "--prompt", "a lone tree", "--seeds", "2", "--steps", "4", "--json",
                 "--docs", str(tmp_path), "-q"])
    [row] = json.loads(capsys.readouterr().out)
    assert code == 0 and (row["concept"], row["prompt"], row["n_seeds"], row["steps"]) == ("tree", "a lone tree", 2, 4)
    assert row["rate"] in (0.0, 0.5, 1.0) and row["base_rate_landscape"] in (0.0, 0.5, 1.0)
    code = main(["eval", "concepts", "--prompt", "a lone tree", "--seeds", "2", "--steps", "4",
                 "--docs", str(tmp_path), "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "| tree | a lone tree |" in out and not (tmp_path / "eval").exists()


# --- methods (issue 5) ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_method_rows_carry_method_evaluations_and_seconds():
    from avert.evaluation.common import Renderer, Settings
    from avert.evaluation.negatives import Method, evaluate_pairs
    from avert.models.default import EMBEDDED_MODEL
    from avert.api import load

    model = load(EMBEDDED_MODEL)
    pair = pair_from_texts("a day scene", "sun")
    settings = Settings(steps=4, batch_size=2)
    renderer = Renderer(model, settings, progress=False)
    rows = {m.label: evaluate_pairs([pair], model, seeds=2, steps=4, batch_size=2, progress=False, method=m,
                                    renderer=renderer)[0]
            for m in (Method(), Method("perp-neg", (("guidance", "perp-neg"),)),
                      Method("half", (("guidance_end", 0.5),)))}
    assert {label: r.unet_evals_per_image for label, r in rows.items()} == {"cfg": 8, "perp-neg": 12, "half": 6}
    assert all(r.method == label and r.seconds_per_image > 0 for label, r in rows.items())
    assert len({(r.rate_without, r.fidelity_without) for r in rows.values()}) == 1  # one shared baseline
    data = json.loads(results_json(list(rows.values())))
    assert {"method", "unet_evals_per_image", "seconds_per_image"} <= set(data[0])


def test_method_flags_make_a_labelled_method():
    from avert.cli import build_parser
    from avert.evaluation.cli import method_from_args

    args = build_parser().parse_args(["eval", "negatives", "--method", "perp-neg", "--guidance-end", "0.5",
                                      "--s-min-uncond-all", "--json"])
    method = method_from_args(args)
    assert method.label == "perp-neg, guidance_end 0.5, s_min_uncond_all"
    assert dict(method.options) == {"guidance": "perp-neg", "guidance_end": 0.5, "s_min_uncond_all": True}


def test_method_cfg_scale_sets_the_scale_of_the_renders_with_the_negative_only():
    from avert.evaluation.cli import method_from_args

    args = build_parser().parse_args(["eval", "negatives", "--guidance-rescale", "0.5", "--method-cfg-scale", "8"])
    method = method_from_args(args)
    assert method.label == "cfg, guidance_rescale 0.5, cfg_scale 8"
    settings = Settings(steps=10)  # the baseline's scale: the default, 7
    assert settings.request("a house", "red", 0, 1, method.options).cfg_scale == 8.0
    assert settings.request("a house", "", 0, 1, ()).cfg_scale == 7.0


@pytest.mark.parametrize("value", ["40", "-1", "strong"])
def test_method_cfg_scale_out_of_range_is_refused_by_name(value, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "negatives", "--method-cfg-scale", value])
    assert f"method_cfg_scale: {value!r} is not allowed; must be a number" in capsys.readouterr().err


@pytest.mark.slow
def test_a_method_at_its_own_scale_shares_the_plain_cfg_baseline():
    from avert.api import load
    from avert.evaluation.common import Renderer
    from avert.evaluation.negatives import Method, evaluate_pairs
    from avert.models.default import EMBEDDED_MODEL

    model = load(EMBEDDED_MODEL)
    pair = pair_from_texts("a day scene", "sun")
    renderer = Renderer(model, Settings(steps=4, batch_size=2), progress=False)
    plain, scaled = (evaluate_pairs([pair], model, seeds=2, steps=4, batch_size=2, progress=False, method=m,
                                    renderer=renderer)[0]
                     for m in (Method(), Method("cfg 3", (("cfg_scale", 3.0),))))
    assert (plain.rate_without, plain.seeds_with_concept_without) == (scaled.rate_without,
                                                                      scaled.seeds_with_concept_without)
    with_plain = renderer.images(pair.prompt, pair.negative, 2)
    with_scaled = renderer.images(pair.prompt, pair.negative, 2, (("cfg_scale", 3.0),))
    assert np.abs(with_plain.astype(int) - with_scaled.astype(int)).mean() > 1  # the scale reached the renders


def test_negative_window_option_puts_the_negative_in_a_window():
    from avert.cli import build_parser
    from avert.evaluation.cli import method_from_args
    from avert.evaluation.common import Settings
    from avert.request import Negative

    args = build_parser().parse_args(["eval", "negatives", "--negative-window", "0.2:1"])
    method = method_from_args(args)
    assert method.label == "cfg, negative_window 0.2-1"
    request = Settings(steps=10).request("a house", "red", 0, 1, method.options)
    assert request.negative_prompt == "" and request.negatives == (Negative("red", 1.0, 0.2, 1.0),)
    assert request.all_negatives() == (Negative("red", 1.0, 0.2, 1.0),)
    assert Settings(steps=10).request("a house", "", 0, 1, method.options).negatives == ()


def test_bad_negative_window_is_refused_before_rendering(capsys):
    from avert.cli import main

    assert main(["eval", "negatives", "--negative-window", "0.8:0.2", "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert "0.8" in err and "negatives" in err
    with pytest.raises(SystemExit):
        main(["eval", "negatives", "--negative-window", "soon"])
    assert "negative_window: 'soon' is not allowed; must be START:END" in capsys.readouterr().err


def test_bad_method_option_is_refused_before_rendering(capsys):
    from avert.cli import main

    assert main(["eval", "negatives", "--guidance-rescale", "3", "--seeds", "2"]) == 2
    assert "guidance_rescale: 3.0 is not allowed" in capsys.readouterr().err


def test_methods_targets_are_checked_against_plain_cfg():
    from avert.evaluation.methods import methods_table, target_lines

    def rows(suppression, fidelity, evals):
        return [row(suppression=suppression, fidelity_with=fidelity, unet_evals_per_image=evals)]

    table = {"cfg": rows(0.8, 0.80, 40), "perp-neg": rows(0.8, 0.90, 60), "interval": rows(0.76, 0.8, 30),
             "weak": rows(0.5, 0.95, 20)}
    lines = target_lines(table)
    assert "perp-neg" in lines[0] and "weak" not in lines[0]
    assert "interval" in lines[1] and "weak" not in lines[1]
    assert "| interval |" in methods_table(table) and "25%" in methods_table(table)


def test_the_guiders_table_is_its_own_set_page_and_labels(capsys):
    """`avert eval methods --set guiders`: diffusers' guiders and the two APG formulations, each a valid request,
    against plain CFG, written to its own page."""
    from avert.evaluation.cli import chosen_methods
    from avert.evaluation.methods import GUIDER_METHODS, PAGES, methods_page
    from avert.guidance.guiders import GUIDERS
    from avert.request import GenerationRequest
    from avert.validation import validate

    chosen = chosen_methods(None, "guiders")
    assert chosen[0].label == "cfg" and len(chosen) == len(GUIDER_METHODS)
    methods = {dict(m.options).get("guidance") for m in chosen}
    assert set(GUIDERS) | {"pag", "seg", "slg", "apg"} <= methods
    for m in chosen:
        validate(GenerationRequest("a house", "trees", **dict(m.options)))
    assert PAGES["guiders"] == "methods-guiders.md" and PAGES["avert"] == "methods.md"

    class Info:
        def line(self, command):
            return f"Measured by `{command}`"

    table = {m.label: [row()] for m in chosen}
    page = methods_page(table, Info(), "guiders")
    assert "`avert eval methods --set guiders`" in page and "| tangential |" in page
    assert main(["eval", "methods", "--set", "guiders", "--only", "gated", "--seeds", "2"]) == 2
    assert "only: 'gated' is not a method of the table; allowed: cfg; apg" in capsys.readouterr().err


# --- seed ranges and pooling -----------------------------------------------------------------------------------


def test_reading_names_seeds_from_the_first_seed():
    r = reading(4, {"tree": [1, 3]})
    assert r.seeds_with("tree") == (1, 3)
    assert r.seeds_with("tree", first_seed=64) == (65, 67)


def test_settings_request_seed_range_and_bad_first_seed():
    assert Settings(first_seed=64).request("a", "", 64 + 16, 16).seed == 80
    with pytest.raises(ValueError, match="first_seed: -1 is not allowed"):
        Settings(first_seed=-1).validate(4)
    with pytest.raises(ValueError, match="first_seed: 4294967295 is not allowed"):
        Settings(first_seed=2**32 - 1).validate(4)  # the last seed would pass SEED_MAX


def test_summarize_pair_records_absolute_seeds():
    pair = pair_from_texts("an orchard", "trees")
    result = summarize_pair(pair, reading(4, {"tree": [0, 2]}), reading(4, {"tree": [2]}),
                            Settings(first_seed=100), 1.0)
    assert result.first_seed == 100
    assert result.seeds_with_concept_without == (100, 102) and result.seeds_with_concept_with == (102,)
    assert figure_seeds(result, rows=3) == [100, 101, 102]


def test_pooled_rows_equal_one_run_over_all_seeds():
    from avert.evaluation.pool import pool_results

    pair = pair_from_texts("an orchard", "trees")
    settings = Settings()
    without, with_ = {"tree": [0, 1, 2, 5, 7]}, {"tree": [2, 6]}
    whole = summarize_pair(pair, reading(8, without), reading(8, with_), settings, 2.0)

    def half(first):
        pick = lambda has: {c: [i - first for i in rows if first <= i < first + 4] for c, rows in has.items()}
        return summarize_pair(pair, reading(4, pick(without)), reading(4, pick(with_)), Settings(first_seed=first),
                              1.0)

    [pooled] = pool_results([half(4), half(0)])  # any order of the files
    assert pooled.n_seeds == 8 and pooled.first_seed == 0
    for name in ("rate_without", "rate_with", "suppression", "fidelity_without", "fidelity_with",
                 "seeds_with_concept_without", "seeds_with_concept_with", "seconds", "concept_rates_without",
                 "concept_rates_with", "collateral_rates"):
        assert getattr(pooled, name) == pytest.approx(getattr(whole, name)), name
    # suppression is recomputed from pooled rates, not averaged: halves 1 - 1/3 and 1 - 1/2 average to 0.583
    assert pooled.suppression == pytest.approx(1 - 2 / 5)


def test_pooled_delta_e_is_weighted_by_images_and_rows_without_collateral_stay_without():
    from avert.evaluation.pool import pool_results

    [pooled] = pool_results([row(first_seed=0, delta_e_absent=2.0, n_absent=1, delta_e_outside=None, n_outside=0),
                             row(first_seed=4, delta_e_absent=5.0, n_absent=3, delta_e_outside=1.5, n_outside=2)])
    assert (pooled.delta_e_absent, pooled.n_absent) == (pytest.approx(4.25), 4)
    assert (pooled.delta_e_outside, pooled.n_outside) == (1.5, 2)
    assert pooled.concept_rates_without == () and pooled.collateral_rates is None  # older JSON had no rates


def test_pool_refuses_overlapping_or_gapped_seeds_and_different_settings():
    from avert.evaluation.pool import pool_results

    with pytest.raises(AvertError, match="seeds 0..3 are followed by seeds 2..5"):
        pool_results([row(first_seed=0), row(first_seed=2)])
    with pytest.raises(AvertError, match="seeds 0..3 are followed by seeds 8..11"):
        pool_results([row(first_seed=0), row(first_seed=8)])
    with pytest.raises(AvertError, match="differ in cfg_scale"):
        pool_results([row(first_seed=0), row(first_seed=4, cfg_scale=5.0)])
    assert len(pool_results([row(), row(first_seed=4), row(method="rescale")])) == 2  # one group per method


def test_eval_pool_command_reads_json_files(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(results_json([row(unet_evals_per_image=40), row(method="x", rate_with=0.0, unet_evals_per_image=30)]))
    b.write_text(results_json([row(first_seed=4, rate_with=0.3, unet_evals_per_image=40),
                               row(method="x", first_seed=4, rate_with=0.0, unet_evals_per_image=30)]))
    assert main(["eval", "pool", str(a), str(b), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["n_seeds"], r["rate_with"]) for r in rows] == [("cfg", 8, 0.2), ("x", 8, 0.0)]
    assert rows[0]["suppression"] == pytest.approx(0.6)
    assert main(["eval", "pool", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "## cfg (seeds 0..7)" in out and "## Methods" in out and "| x | 1.00 |" in out and "| 25% |" in out


def test_eval_pool_names_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"prompt": "x"}')
    assert main(["eval", "pool", str(bad)]) == 2
    assert "bad.json: expected a JSON list" in capsys.readouterr().err
    assert main(["eval", "pool", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad.write_text('[{"prompt": "x"}]')
    assert main(["eval", "pool", str(bad)]) == 2
    assert "row 0 is not an evaluation row" in capsys.readouterr().err
    bad.write_text(results_json([row(rate_with="many")]))
    assert main(["eval", "pool", str(bad)]) == 2
    assert "row 0 has a bad value in rate_with" in capsys.readouterr().err


def test_eval_methods_only_picks_methods_by_label(capsys):
    from avert.evaluation.cli import chosen_methods

    assert [m.label for m in chosen_methods(["cfg, rescale 0.2", "cfg"])] == ["cfg", "cfg, rescale 0.2"]
    assert len(chosen_methods(None)) == len(DEFAULT_METHODS)
    assert main(["eval", "methods", "--only", "cfg, rescale 9", "--seeds", "2"]) == 2
    assert "only: 'cfg, rescale 9' is not a method of the table; allowed: cfg; perp-neg" in capsys.readouterr().err


def test_first_seed_flag_is_checked(capsys):
    args = build_parser().parse_args(["eval", "methods", "--first-seed", "64"])
    assert args.first_seed == 64
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "negatives", "--first-seed", "-3"])
    assert "first_seed: '-3' is not allowed" in capsys.readouterr().err


def test_discordant_images_and_sign_test():
    from avert.evaluation.methods import discordant_images, paired_lines, sign_test

    base = [row(seeds_with_concept_with=(1, 2)), row(prompt="b", seeds_with_concept_with=())]
    other = [row(seeds_with_concept_with=(2, 3)), row(prompt="b", seeds_with_concept_with=(0,))]
    assert discordant_images(base, other) == (2, 1)  # seeds 3 and b/0 kept; seed 1 removed
    assert sign_test(2, 1) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(0, 6) == pytest.approx(2 / 64) and sign_test(6, 0) == sign_test(0, 6)
    assert sign_test(1, 9) == pytest.approx(2 * 11 / 1024)
    [line] = paired_lines({"cfg": base, "x": other})
    assert "stays in 2 image(s) where cfg removed it and is removed in 1" in line and "p = 1.00" in line
    with pytest.raises(ValueError, match="different pairs"):
        discordant_images(base, list(reversed(other)))


@pytest.mark.slow
def test_a_later_seed_range_renders_the_same_images_as_the_tail_of_a_longer_run():
    from avert.api import load
    from avert.evaluation.common import Renderer
    from avert.models.default import EMBEDDED_MODEL

    model = load(EMBEDDED_MODEL)
    whole = Renderer(model, Settings(steps=3, batch_size=2), progress=False).images("a house", "red", 4)
    tail = Renderer(model, Settings(steps=3, batch_size=2, first_seed=2), progress=False).images("a house", "red", 2)
    assert tail.shape == (2, *whole.shape[1:])
    np.testing.assert_array_equal(tail, whole[2:])
    assert not np.array_equal(tail, whole[:2])


def test_a_renderer_of_another_seed_range_is_refused_before_loading():
    from types import SimpleNamespace

    from avert.evaluation.negatives import evaluate_pairs

    renderer = SimpleNamespace(settings=Settings(first_seed=64))
    with pytest.raises(ValueError, match="first_seed: 0 but the renderer given renders from seed 64"):
        evaluate_pairs([pair_from_texts("an orchard", "trees")], "no/such/model", seeds=2, renderer=renderer)


def test_without_method_the_evaluation_measures_the_models_default_guidance():
    """No --method: the model's default (the embedded model's gated), labelled and set explicitly; with a
    plain-CFG model, plain CFG. A method's own request names cfg unless its options name another, so the
    methods table means what its labels say on any model."""
    from avert.evaluation.cli import method_from_args

    args = build_parser().parse_args(["eval", "negatives"])
    gated = method_from_args(args, "gated")
    assert gated.label == "gated" and dict(gated.options) == {"guidance": "gated"}
    plain = method_from_args(args)
    assert plain.label == "cfg" and plain.options == ()
    assert Settings(steps=10).request("a house", "red", 0, 1, plain.options).guidance == "cfg"
    assert Settings(steps=10).request("a house", "red", 0, 1, gated.options).guidance == "gated"
    explicit = build_parser().parse_args(["eval", "negatives", "--method", "cfg"])
    assert method_from_args(explicit, "gated").label == "cfg"


def test_a_run_of_another_method_than_the_models_default_writes_its_own_page(tmp_path):
    """`avert eval negatives --method cfg` on a model whose default is gated writes negatives-cfg.md, whose
    header gives the command that re-makes it and points to the default's page; the default's run writes
    negatives.md and says the method is the model's default."""
    from avert.evaluation.common import RunInfo
    from avert.evaluation.negatives import write_negatives_docs

    info = RunInfo("2026-01-01", "test machine", "model", "0123456789", 4, Settings(), "cpu, fp32")
    cfg_rows = [row(method="cfg")]
    page = write_negatives_docs(cfg_rows, info, tmp_path, model_default="gated")
    assert page == tmp_path / "eval" / "negatives-cfg.md" and not (tmp_path / "eval" / "negatives.md").exists()
    text = page.read_text()
    assert "`avert eval negatives --method cfg`" in text
    assert "Guidance of the renders with the negative: **cfg**, `--method cfg`; the model's default is gated, " \
           "measured in [negatives.md](negatives.md)" in text
    absent = write_negatives_docs(cfg_rows, info, tmp_path, absent=True, model_default="gated")
    assert absent.name == "negatives-absent-cfg.md" and "--absent --method cfg" in absent.read_text()
    default = write_negatives_docs([row(method="gated")], info, tmp_path, model_default="gated")
    assert default.name == "negatives.md"
    assert "**gated**, the model's default" in default.read_text() and "--method" not in default.read_text()
    with pytest.raises(ValueError, match="one method's"):
        write_negatives_docs([row(method="cfg"), row(method="gated")], info, tmp_path, model_default="gated")


@pytest.fixture(scope="module")
def four_seeds():
    """One renderer for the figures re-measured at 4 seeds: the renders without a negative (plain CFG for every
    method) are made once and shared."""
    from avert.evaluation.common import Renderer, load_components
    from avert.models.default import EMBEDDED_MODEL

    components = load_components(EMBEDDED_MODEL)
    renderer = Renderer(components, Settings(), progress=False)
    try:
        yield components, renderer
    finally:
        renderer.close()


def claimed(page: str, pattern: str) -> float:
    from pathlib import Path

    return float(re.search(pattern, (Path(__file__).parents[1] / "docs" / "eval" / page).read_text()).group(1))


@pytest.mark.slow
def test_the_headline_negatives_figures_hold_at_four_seeds(four_seeds):
    """docs/eval/negatives.md's headline (mean suppression over the 14 default pairs and the worst fidelity drop,
    64 seeds, the model's default guidance) re-measured on seeds 0..3. The tolerance is the seed noise, measured
    on that run's rows (docs/eval/negatives-gated.json, which list the seeds with the concept): over the 16 groups
    of 4 consecutive seeds the mean suppression has a standard deviation of 0.031 and strays at most 0.064 from
    the 64-seed figure, so 0.10 is three deviations. A fidelity drop moves in steps of one image in 4 (0.25), so
    the worst drop may be one image above the page's."""
    from avert.evaluation.negatives import evaluate_pairs, mean_suppression, worst_fidelity_drop

    components, renderer = four_seeds
    results = evaluate_pairs(model=components, seeds=4, progress=False, renderer=renderer,
                             method=Method("gated", (("guidance", "gated"),)))
    assert len(results) == 14
    assert abs(mean_suppression(results) - claimed("negatives.md", r"Mean suppression: \*\*([\d.]+)\*\*")) <= 0.10
    assert worst_fidelity_drop(results).fidelity_drop <= claimed(
        "negatives.md", r"Worst fidelity drop: \*\*\+?([\d.]+)\*\*") + 0.25


@pytest.mark.slow
@pytest.mark.parametrize("label, options, page, row", [
    ("posterior, negative scale 10", (("guidance", "posterior"), ("negative_scale", 10.0)), "methods.md",
     r"\| posterior, negative scale 10 \| ([\d.]+) \|"),
])
def test_the_methods_tables_suppression_holds_at_four_seeds(four_seeds, label, options, page, row):
    """The methods table's mean suppression for the method the README quotes as removing less than plain CFG
    (posterior 0.89 against 0.96), re-measured on seeds 0..3 within the seed noise (0.10; over the 16 groups of 4
    seeds of docs/eval/negatives-posterior.json: standard deviation 0.040, at most 0.073 from the 64-seed figure),
    and still below plain CFG's page figure. (Each method costs about half a minute; the others are measured by
    their command.)"""
    from avert.evaluation.negatives import evaluate_pairs, mean_suppression

    components, renderer = four_seeds
    results = evaluate_pairs(model=components, seeds=4, progress=False, renderer=renderer,
                             method=Method(label, options))
    figure = claimed(page, row)
    assert abs(mean_suppression(results) - figure) <= 0.10
    assert figure < claimed(page, r"\| cfg \| ([\d.]+) \|")


def test_eval_img2img_redraws_each_init_image_without_and_with_the_negative(tmp_path, capsys):
    from avert.cli import main
    from avert.evaluation import img2img as i2i
    from avert.evaluation.common import RunInfo, Settings
    from avert.evaluation.negatives import Method
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    components = load_model(EMBEDDED_MODEL)
    pair = pair_from_texts("a landscape in shades of green", "green tones")
    [row] = i2i.evaluate_img2img([pair], components, seeds=3, strength=0.6, progress=False)
    result = row.result
    assert (result.n_seeds, result.method, row.strength) == (3, "img2img 0.6, cfg", 0.6)
    assert row.rate_init == 1.0 and result.rate_with < result.rate_without  # the inits are green; the negative acts
    assert result.suppression == pytest.approx(1 - result.rate_with / result.rate_without)
    page = i2i.page([row], RunInfo.collect(components, 3, Settings()), Method(), None)
    assert "`avert eval img2img --strength 0.6 --seeds 3`" in page and "| a landscape in shades of green |" in page
    assert main(["eval", "img2img", "--pair", "a landscape", "sepia", "--seeds", "1", "--json", "-q",
                 "--no-inpainting"]) == 0
    assert json.loads(capsys.readouterr().out)["img2img"][0]["rate_init"] is not None


def test_eval_inpainting_masks_where_the_concept_is_and_keeps_every_other_pixel():
    from avert.evaluation import inpainting as inp
    from avert.evaluation.negatives import Method
    from avert.models.default import EMBEDDED_MODEL
    from avert.models.loader import load_model

    components = load_model(EMBEDDED_MODEL)
    pairs = [pair_from_texts("a village", "house"), pair_from_texts("a landscape in shades of green", "green tones")]
    [row] = inp.evaluate_inpainting(pairs, components, seeds=4, progress=False)  # tones have no place: left out
    assert (row.prompt, row.concept) == ("a village", "house") and row.images + row.unlocated >= 2
    assert row.outside_max == 0 and 0 < row.masked < 0.5
    assert row.rate_with < row.rate_without and row.suppression == pytest.approx(1 - row.rate_with / row.rate_without)
    section = "\n".join(inp.section([row], 0.75, Method(), None))
    assert "| a village | house (house) |" in section and "0/255" in section
