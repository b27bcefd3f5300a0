"""Several negatives compose (issue 28): each rule against its formula on hand-made tensors, the rules inside
every method, one negative unchanged under every rule, joined negatives as A1111's one field, and the record."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avert.api import generate
from avert.guidance import cfg as f
from avert.guidance import compose as c
from avert.guidance.strategy import (
    EMPTY,
    Guidance,
    StepContext,
    Term,
    negative_branch,
    prompt_branch,
)
from avert.request import GenerationRequest, Negative

CTX = StepContext(3, 10, 500.0, sigma=2.0)
SHARED = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # what every text has against the empty prompt
A = SHARED + torch.tensor([[0.0, 0.0, 2.0, 0.0]])
B = SHARED + torch.tensor([[0.0, 0.0, 0.0, 1.0]])


def test_sum_and_mean():
    assert torch.equal(c.compose([A, B], "sum"), torch.tensor([[2.0, 2.0, 2.0, 1.0]]))
    assert torch.equal(c.compose([A, B], "mean"), torch.tensor([[1.0, 1.0, 1.0, 0.5]]))


def test_cap_keeps_the_sums_direction_at_the_longest_parts_length():
    capped = c.compose([A, B], "cap")
    total = A + B
    assert torch.allclose(capped, total * (A.norm() / total.norm()))  # |A| = sqrt 6 > |B| = sqrt 3
    assert torch.allclose(capped.norm(), A.norm())
    short = [torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.5]])]  # the sum is shorter than either: unchanged
    assert torch.equal(c.compose(short, "cap"), short[0] + short[1])


def test_orthogonal_counts_the_shared_part_once_in_any_order():
    # A is longer: B loses its part along A. <B, A> = 2, |A|^2 = 6
    expected = A + (B - (2.0 / 6.0) * A)
    assert torch.allclose(c.compose([A, B], "orthogonal"), expected)
    assert torch.allclose(c.compose([B, A], "orthogonal"), expected)
    same = c.compose([A, A.clone()], "orthogonal")  # a negative given twice acts once
    assert torch.allclose(same, A)


def test_strongest_takes_the_largest_magnitude_per_element():
    x = torch.tensor([[3.0, -1.0, 0.5, -4.0]])
    y = torch.tensor([[-5.0, 2.0, 0.5, 1.0]])
    assert torch.equal(c.compose([x, y], "strongest"), torch.tensor([[-5.0, 2.0, 0.5, -4.0]]))
    assert torch.equal(c.compose([A, B], "strongest"), torch.tensor([[1.0, 1.0, 2.0, 1.0]]))


@pytest.mark.parametrize("rule", c.RULES)
def test_one_contribution_is_itself_and_none_is_zero(rule):
    assert c.compose([A], rule, A) is A
    assert c.compose([], rule, A) == 0.0


def test_rules_work_per_sample():
    batch = [torch.cat([A, B]), torch.cat([B, 3 * A])]  # the longer negative differs between the samples
    direction = torch.cat([B, A])
    for rule in ("cap", "orthogonal", "protect"):
        both = c.compose(batch, rule, direction)
        for row in range(2):
            one = c.compose([b[row:row + 1] for b in batch], rule, direction[row:row + 1])
            assert torch.allclose(both[row:row + 1], one)


def test_protect_caps_the_part_along_the_prompt_at_the_largest_single_part():
    d_c = torch.tensor([[2.0, 0.0]])
    c1, c2 = torch.tensor([[2.0, 1.0]]), torch.tensor([[3.0, -1.0]])
    assert torch.allclose(c.compose([c1, c2], "protect", d_c), torch.tensor([[3.0, 0.0]]))
    away = [torch.tensor([[-1.0, 1.0]]), torch.tensor([[-2.0, 0.0]])]  # both pull toward the prompt: unchanged
    assert torch.allclose(c.compose(away, "protect", d_c), away[0] + away[1])
    strongest = c.compose([c1, c2], "strongest-protect", d_c)  # strongest gives (3, 1); along 3 <= 3: kept
    assert torch.allclose(strongest, torch.tensor([[3.0, 1.0]]))
    assert torch.equal(c.compose([c1, c2], "protect", torch.zeros_like(d_c)), c1 + c2)  # no direction: the sum
    assert torch.equal(c.compose([c1, c2], "protect", torch.full_like(d_c, 1e-30)), c1 + c2)  # |d_c| underflows
    small = [torch.tensor([[0.2, 0.0]]), torch.tensor([[0.3, 1.0]])]  # along 0.5, the largest single part 0.3
    assert torch.allclose(c.compose(small, "protect", d_c), torch.tensor([[0.3, 1.0]]))
    with pytest.raises(ValueError, match="direction"):
        c.compose([c1, c2], "protect")


def test_orthogonal_keeps_request_order_between_negatives_of_equal_length():
    first, second = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])  # both of length 1
    assert torch.allclose(c.compose([first, second], "orthogonal"), torch.tensor([[1.0, 0.8]]))
    assert torch.allclose(c.compose([second, first], "orthogonal"), torch.tensor([[1.24, 0.32]]))


def test_an_unknown_rule_names_the_rules():
    for rule in ("max", "mean-protect", "joined"):  # joined is the request's, never a tensor rule
        with pytest.raises(ValueError, match="must be one of sum, mean, cap, orthogonal, strongest, protect, "
                                             "strongest-protect$"):
            c.compose([A, B], rule, A)


def test_the_formulas_default_to_the_sum():
    d_c, args = E_C - E_0, ([N1, N2], [1.0, 0.5], 7.0, 5.0)
    assert torch.equal(f.separate_scales(E_0, d_c, *args), f.separate_scales(E_0, d_c, *args, "sum"))
    assert torch.equal(f.dynamic_negative(E_0, d_c, *args), f.dynamic_negative(E_0, d_c, *args, "sum"))
    assert torch.equal(f.perp_neg(E_0, d_c, *args), f.perp_neg(E_0, d_c, *args, "sum"))


# --- inside the guidance ------------------------------------------------------------------------------------

torch.manual_seed(0)
E_C, E_0, N1, N2 = (torch.randn(2, 4, 4, 4) for _ in range(4))


def predictions(*negatives):
    out = {prompt_branch(0): E_C, EMPTY: E_0}
    out.update({negative_branch(i): n for i, n in enumerate(negatives)})
    return out


@pytest.mark.parametrize("rule", c.RULES)
def test_plain_cfg_with_two_negatives_is_cfg_around_e0_plus_the_push(rule):
    g = Guidance(7.0, negatives=(Term(), Term(0.5)), rule=rule)
    push = c.compose([N1 - E_0, 0.5 * (N2 - E_0)], rule, E_C - E_0)
    uncond = E_0 + push if rule != "sum" else -0.5 * E_0 + N1 + 0.5 * N2
    assert torch.allclose(g.combine(predictions(N1, N2), CTX), f.cfg(E_C, uncond, 7.0), atol=1e-5)
    assert EMPTY in g.branches(CTX)


@pytest.mark.parametrize("method", ["perp-neg", "dynamic", "cfg"])
def test_three_branch_methods_compose_their_own_contributions(method):
    g = Guidance(7.0, method=method, negative_scale=5.0, negatives=(Term(), Term()), rule="strongest")
    d_c, d1, d2 = E_C - E_0, N1 - E_0, N2 - E_0
    parts = {"perp-neg": [f.perpendicular(d1, d_c), f.perpendicular(d2, d_c)],
             "dynamic": [f.presence(d_c, d1) * d1, f.presence(d_c, d2) * d2], "cfg": [d1, d2]}[method]
    expected = E_0 + 7.0 * d_c - 5.0 * c.strongest(parts)
    assert torch.allclose(g.combine(predictions(N1, N2), CTX), expected, atol=1e-5)


def test_the_sum_rule_is_the_old_arithmetic_bit_for_bit():
    g = Guidance(7.0, method="perp-neg", negatives=(Term(), Term(0.5)))
    assert torch.equal(g.combine(predictions(N1, N2), CTX),
                       f.perp_neg(E_0, E_C - E_0, [N1, N2], [1.0, 0.5], 7.0, 7.0))


def test_one_negative_at_weight_one_needs_no_empty_prompt_under_any_rule():
    for rule in c.RULES:
        assert Guidance(7.0, rule=rule).branches(CTX) == (negative_branch(0), prompt_branch(0))
    halves = (Term(0.5), Term(0.5))  # weights summing to 1: the sum needs no e_0, another rule does
    assert EMPTY not in Guidance(7.0, negatives=halves).branches(CTX)
    assert EMPTY in Guidance(7.0, negatives=halves, rule="mean").branches(CTX)


def test_the_and_parts_of_one_negative_add_up_before_the_rule():
    halves = (Term(0.5, group=0), Term(0.5, group=0))  # "blue tree :0.5 AND blue tree :0.5": one negative
    assert EMPTY not in Guidance(7.0, negatives=halves, rule="strongest").branches(CTX)
    whole = Guidance(7.0, negatives=(Term(),)).combine(predictions(N1), CTX)
    for rule in c.RULES:
        mixed = Guidance(7.0, negatives=halves, rule=rule).combine(predictions(N1, N1), CTX)
        assert torch.allclose(mixed, whole, atol=1e-5), rule
    two = (Term(0.5, group=0), Term(0.5, group=0), Term(group=1))  # two negatives, the first of two parts
    got = Guidance(7.0, negatives=two, rule="strongest").combine(predictions(N1, N2, N2), CTX)
    expected = f.cfg(E_C, E_0 + c.strongest([0.5 * (N1 - E_0) + 0.5 * (N2 - E_0), N2 - E_0]), 7.0)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["cfg", "perp-neg", "dynamic"])
def test_three_branch_methods_add_the_and_parts_of_one_negative_before_the_rule(method):
    """The first negative has two AND parts, the second one: the rule sees two contributions, not three."""
    terms = (Term(group=0), Term(group=0), Term(group=1))
    g = Guidance(7.0, method=method, negative_scale=5.0, negatives=terms, rule="strongest")
    got = g.combine(predictions(N1, N2, N1), CTX)
    d_c = E_C - E_0
    part = {"cfg": lambda n: n - E_0, "perp-neg": lambda n: f.perpendicular(n - E_0, d_c),
            "dynamic": lambda n: f.presence(d_c, n - E_0) * (n - E_0)}[method]
    expected = E_0 + 7.0 * d_c - 5.0 * c.strongest([part(N1) + part(N2), part(N1)])
    assert torch.allclose(got, expected, atol=1e-5)
    ungrouped = E_0 + 7.0 * d_c - 5.0 * c.strongest([part(N1), part(N2), part(N1)])
    assert not torch.allclose(got, ungrouped, atol=1e-3)


def test_one_negative_of_another_weight_is_the_sums_arithmetic_bit_for_bit_under_any_rule():
    sums = Guidance(7.0, negatives=(Term(0.5),)).combine(predictions(N1), CTX)
    for rule in c.RULES:
        assert torch.equal(Guidance(7.0, negatives=(Term(0.5),), rule=rule).combine(predictions(N1), CTX), sums)


# --- requests ------------------------------------------------------------------------------------------------

BASE = GenerationRequest(prompt="a red house", seed=3, steps=4, guidance="cfg")
TWO = BASE.replace(negatives=(Negative("trees"), Negative("clouds")))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def test_joined_equals_one_comma_joined_negative(tiny):
    joined = generate(TWO.replace(negatives_rule="joined"), tiny)
    assert np.array_equal(pixels(joined), pixels(generate(BASE.replace(negative_prompt="trees, clouds"), tiny)))
    assert "Negatives rule: joined" in joined.images[0].infotext


def test_rules_differ_with_several_negatives_and_not_with_one(tiny):
    images = {rule: pixels(generate(TWO.replace(negatives_rule=rule), tiny)) for rule in c.RULES}
    assert all(np.abs(images[r] - images["sum"]).max() > 0 for r in c.RULES if r != "sum")
    one = BASE.replace(negative_prompt="trees")
    assert all(np.array_equal(pixels(generate(one.replace(negatives_rule=r), tiny)), pixels(generate(one, tiny)))
               for r in ("mean", "strongest"))


def test_the_record_keeps_the_rule_and_every_negative(tiny):
    from avert.output.pnginfo import parse_parameters
    from avert.pipeline.metadata import request_from_a1111

    result = generate(TWO.replace(negatives_rule="orthogonal"), tiny)
    text = result.images[0].infotext
    assert "Negative prompt: trees, clouds" in text and "Negatives rule: orthogonal" in text
    again = request_from_a1111(parse_parameters(text))
    assert again.negatives_rule == "orthogonal" and [n.text for n in again.all_negatives()] == ["trees", "clouds"]
    assert np.array_equal(pixels(generate(again, tiny)), pixels(result))
    assert "Negatives rule" not in generate(BASE.replace(negative_prompt="trees"), tiny).images[0].infotext
    older = text.replace(", Negatives rule: orthogonal", "")  # an image from before the rules: the sum made it
    assert "Negatives rule" not in older and request_from_a1111(parse_parameters(older)).negatives_rule == "sum"


def test_a_request_without_a_rule_gets_its_methods_default_and_records_it(tiny):
    from avert.guidance.compose import DEFAULT_RULES
    from avert.schema import GUIDANCE_METHODS

    assert set(DEFAULT_RULES) == set(GUIDANCE_METHODS)
    result = generate(TWO, tiny)
    assert result.images[0].record["request"]["negatives_rule"] == DEFAULT_RULES["cfg"] == "strongest-protect"
    named = generate(TWO.replace(negatives_rule="strongest-protect"), tiny)
    assert np.array_equal(pixels(result), pixels(named))


def test_joined_refuses_weights_and_windows_by_name():
    from avert.errors import ValidationError
    from avert.validation import validate

    with pytest.raises(ValidationError, match=r"negatives_rule.*negatives\[1\] has weight 0.5"):
        validate(TWO.replace(negatives_rule="joined", negatives=(Negative("trees"), Negative("clouds", 0.5))))
    with pytest.raises(ValidationError, match="negatives_rule.*must be one of: sum, mean"):
        validate(TWO.replace(negatives_rule="max"))


# --- the measure (avert eval compose) -----------------------------------------------------------------------

def test_lab_and_delta_e_match_the_published_values():
    from avert.evaluation.collateral import delta_e, lab

    rgb = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    expected = np.array([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]])
    assert np.allclose(lab(rgb), expected, atol=0.05)  # CIELAB of sRGB primaries (D65), as colour tables give them
    assert delta_e(rgb[:1], rgb[1:2]) == pytest.approx(100.0, abs=0.01)


def test_ties_imply_the_worlds_rules_and_unrelated_leaves_them_out():
    from avert.world import CONCEPTS
    from avert.world.ties import IMPLIED, implied, unrelated

    assert implied(["sun"]) == {"day sky", "sunset"} and implied(["boat"]) == {"sea"}
    assert {"house", "blue house"} <= implied(["red house"]) and "red house" not in implied(["red house"])
    assert set(IMPLIED) <= set(CONCEPTS) and all(set(v) <= set(CONCEPTS) for v in IMPLIED.values())
    others = unrelated(["cloud", "tree"], CONCEPTS)
    assert "cloudy sky" not in others and "tree" not in others and "house" in others and "sun" in others


def test_pixel_collateral_splits_absent_from_outside_the_region():
    from avert.evaluation.common import reading_from
    from avert.evaluation.collateral import pixel_collateral
    from avert.world import CONCEPT_INDEX, CONCEPTS

    without = np.zeros((2, 4, 4, 3), np.uint8)
    with_ = without.copy()
    with_[:, :2] = 255  # the top half turns white in both images
    present = np.zeros((2, len(CONCEPTS)), bool)
    present[1, CONCEPT_INDEX["sun"]] = True  # image 1 has the sun, in its top half

    class Regions:
        def mask(self, index, concept):
            m = np.zeros((4, 4), bool)
            m[:2] = True
            return m

    absent, n_absent, outside, n_outside = pixel_collateral(without, with_, reading_from(present, np.zeros(2, bool)),
                                                            ["sun"], Regions())
    assert (n_absent, n_outside) == (1, 1)
    assert absent == pytest.approx(50.0, abs=0.01) and outside == 0.0


def test_eval_compose_rows_on_the_embedded_model():
    from avert.evaluation import compose as com
    from avert.evaluation.common import load_components
    from avert.models.default import EMBEDDED_MODEL

    case = com.Case("a red house in a lush valley", ("mountains", "sun"), ("house", "red house"))
    methods = com.methods_for("gated")
    assert [m.label for m in methods] == ["cfg, sum", "gated, joined", "gated, strongest-protect (default)"]
    from avert.evaluation.common import Settings

    standing = com.Case("a red house on a hill", ("boat", "sepia"), ("house", "red house"), standing=True)
    rows = com.evaluate_compose([case, standing], load_components(EMBEDDED_MODEL), 2, methods[::2], (1, 2),
                                Settings(steps=5), progress=False)
    assert [(r.k, r.method) for r in rows[:4]] == [(1, "cfg, sum"), (2, "cfg, sum"), (1, methods[2].label),
                                                   (2, methods[2].label)]
    assert all(r.fidelity_alone is None and r.worst_ratio is None for r in rows[4:])  # standing: not rendered alone
    one, two = rows[2], rows[3]
    assert one.suppressions == one.suppressions_alone and two.concepts == ("mountain", "sun")
    assert two.suppressions[0] == com.suppression(two.rates_without[0], two.rates_with[0])
    assert 0 <= two.collateral_rates <= 1 and two.n_absent + two.n_outside <= 2
