"""Where a negative acted, as tensors: the leave-one-out change of the guided prediction, its accumulation over the
run, and the pictures and small record made of it (`avert.guidance.attribution`, `avert.output.maps`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from avert.guidance import attribution as a
from avert.guidance import cfg as f
from avert.guidance.strategy import EMPTY, Guidance, StepContext, Term, negative_branch, prompt_branch
from avert.output import maps as m

torch.manual_seed(1)
E_C, E_0, N1, N2 = (torch.randn(2, 3, 4, 4) for _ in range(4))
CTX = StepContext(2, 10, 500.0, sigma=2.0)


def predictions(*negatives):
    return {prompt_branch(0): E_C, EMPTY: E_0, **{negative_branch(i): n for i, n in enumerate(negatives)}}


def test_one_negative_under_plain_cfg_changes_the_prediction_by_w_minus_1_times_e0_minus_en():
    g = Guidance(7.0)
    guided = g.combine(predictions(N1), CTX)
    change = a.changes(g, predictions(N1), CTX, None, {}, guided)
    assert list(change) == [0]
    assert torch.allclose(change[0], 6.0 * (E_0 - N1), atol=1e-5)
    assert EMPTY in g.branches(CTX, empty=True) and EMPTY not in g.branches(CTX)


def test_with_the_sum_each_negative_changes_the_prediction_by_its_own_term():
    g = Guidance(7.0, method="cfg", negative_scale=5.0, negatives=(Term(), Term(0.5)), rule="sum")
    guided = g.combine(predictions(N1, N2), CTX)
    change = a.changes(g, predictions(N1, N2), CTX, None, {}, guided)
    assert torch.allclose(change[0], -5.0 * (N1 - E_0), atol=1e-5)
    assert torch.allclose(change[1], -5.0 * 0.5 * (N2 - E_0), atol=1e-5)


def test_the_and_parts_of_one_negative_are_one_map_and_a_rule_gives_each_negative_its_share():
    g = Guidance(7.0, negatives=(Term(group=0), Term(group=0), Term(group=1)), rule="strongest")
    preds = predictions(N1, N2, N1)
    guided = g.combine(preds, CTX)
    change = a.changes(g, preds, CTX, None, {}, guided)
    assert sorted(change) == [0, 1]
    alone = Guidance(7.0, negatives=(Term(group=0), Term(group=0))).combine(predictions(N1, N2), CTX)
    assert torch.allclose(change[1], guided - alone, atol=1e-5)


def test_the_leave_one_out_reads_the_memory_and_does_not_change_it():
    g = Guidance(7.0, method="posterior", negatives=(Term(), Term()))
    x = torch.randn(2, 3, 4, 4)
    memory: dict = {}
    g.combine(predictions(N1, N2), StepContext(0, 10, 900.0, sigma=4.0), x, memory)
    before = dict(memory)
    guided = g.combine(predictions(N1, N2), CTX, x, memory)
    kept = dict(memory)
    change = a.changes(g, predictions(N1, N2), CTX, x, before, guided)
    assert memory == kept and set(change) == {0, 1}
    assert not torch.allclose(change[0], torch.zeros(()))


def test_the_map_sums_the_change_of_d_over_channels_weighted_by_the_steps_share_of_sigma():
    recorder = a.NegativeMaps("epsilon")
    first, second = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    first[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])  # |.| = 5
    second[0, 0, 1, 1] = 2.0
    recorder.add(StepContext(0, 2, 900.0, sigma=4.0), {0: first})
    recorder.add(StepContext(1, 2, 100.0, sigma=1.0), {0: second, 1: second})
    out = recorder.maps(3, 1, 2, 2)
    # epsilon: |dD| = sigma |de|; weights (4 - 1) / 4 and (1 - 0) / 1
    assert out.shape == (1, 3, 2, 2)
    assert out[0, 0, 0, 0].item() == pytest.approx(0.75 * 4.0 * 5.0)
    assert out[0, 0, 1, 1].item() == pytest.approx(1.0 * 1.0 * 2.0)
    assert out[0, 1].sum().item() == pytest.approx(2.0) and out[0, 2].abs().sum().item() == 0.0


def test_v_prediction_maps_use_its_own_coefficient():
    recorder = a.NegativeMaps("v_prediction")
    recorder.add(StepContext(0, 1, 500.0, sigma=2.0), {0: torch.ones(1, 1, 1, 1)})
    b = f.denoised(torch.zeros(()), torch.ones(()), 2.0, "v_prediction").item()
    assert recorder.maps(1, 1, 1, 1).item() == pytest.approx(abs(b)) and abs(b) == pytest.approx(2 / 5 ** 0.5)


def test_small_map_keeps_the_shape_of_a_map_in_at_most_16_by_16_cells():
    values = np.zeros((64, 48))
    values[:16, :12] = 2.0
    record = m.small_map(values)
    assert record["size"] == [16, 12] and record["peak"] == pytest.approx(2.0)
    back = m.read_small_map(record)
    assert back[:4, :3].min() == pytest.approx(2.0) and back[4:].max() == 0.0 and back[:, 3:].max() == 0.0
    assert m.small_map(np.zeros((8, 8)))["peak"] == 0.0


def test_overlay_and_difference_pictures():
    image = Image.new("RGB", (32, 32), (100, 100, 100))
    values = np.zeros((4, 4))
    values[0, 0] = 1.0
    shown = np.asarray(m.overlay(image, values, 0.0, 1.0))
    assert shown.shape == (32, 32, 3)
    assert shown[1, 1, 0] > 150 and tuple(shown[31, 31]) == (60, 60, 60)  # heat at the top left; grey, dimmed
    assert np.asarray(m.overlay(image, values, 1.0, 1.0)).max() == 60  # an empty range shows no heat
    changed = image.copy()
    changed.putpixel((5, 6), (140, 100, 100))
    diff = np.asarray(m.difference(image, changed))
    assert diff[6, 5, 0] == round(40 / 3 * 2) and diff.sum() == 3 * diff[6, 5, 0]


def test_a_step_at_infinite_sigma_counts_whole_and_one_at_sigma_0_not_at_all():
    """Zero terminal SNR starts at sigma = inf (a v-prediction model): (sigma - sigma') / sigma is 1 there; a
    last evaluation at sigma 0 moves nothing."""
    recorder = a.NegativeMaps("v_prediction")
    one = torch.ones(1, 1, 1, 1)
    recorder.add(StepContext(0, 3, 999.0, sigma=float("inf")), {0: one})
    recorder.add(StepContext(1, 3, 500.0, sigma=1.0), {0: one})
    recorder.add(StepContext(2, 3, 0.0, sigma=0.0), {0: one})
    b = {s: abs(f.denoised(torch.zeros(()), torch.ones(()), s, "v_prediction").item()) for s in (float("inf"), 1.0)}
    assert b[float("inf")] == pytest.approx(1.0)
    assert recorder.maps(1, 1, 1, 1).item() == pytest.approx(1.0 * b[float("inf")] + 1.0 * b[1.0])
