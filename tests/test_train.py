"""`avert train`: a resumed run continues exactly as an uninterrupted one; the export is a loadable model."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file

from avert.models.loader import load_model
from avert.train.config import TrainConfig
from avert.train import loop

CONFIG = TrainConfig(steps=4, batch_size=4, images=64, checkpoint_every=2, warmup=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def train(data_dir):
    """`loop.train` sharing one encoded training set across the module's runs."""
    return functools.partial(loop.train, data_dir=data_dir)


def unet_weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def test_resume_equals_uninterrupted_and_export_loads(tmp_path, train):
    straight = tmp_path / "straight"
    train(straight, CONFIG, progress=False)
    resumed = tmp_path / "resumed"
    train(resumed, TrainConfig(**{**CONFIG.__dict__, "steps": 2}), progress=False)
    train(resumed, CONFIG, progress=False)
    a, b = unet_weights(straight), unet_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (resumed / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # checkpoints at steps 2 and 4
    model = load_model(straight / "model")
    assert model.unet.config.sample_size == 32 and model.vae is None


def test_training_moves_the_weights(tmp_path, train):
    train(tmp_path / "a", TrainConfig(**{**CONFIG.__dict__, "steps": 2}), progress=False)
    train(tmp_path / "b", TrainConfig(**{**CONFIG.__dict__, "steps": 4}), progress=False)
    a, b = unet_weights(tmp_path / "a"), unet_weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_run_can_start_from_an_exported_model(tmp_path, train):
    first = tmp_path / "first"
    train(first, TrainConfig(**{**CONFIG.__dict__, "steps": 2}), progress=False)
    assert '"trained_steps": 2' in (first / "model" / "training.json").read_text()
    continued = tmp_path / "continued"
    train(continued, CONFIG, progress=False, init_from=first / "model")
    assert '"trained_steps": 4' in (continued / "model" / "training.json").read_text()
    assert len((continued / "log.jsonl").read_text().splitlines()) == 1  # only step 4 was trained here
    assert '"start": 2' in (continued / "model" / "training.json").read_text()  # its warm-up began at step 2
    train(continued, TrainConfig(**{**CONFIG.__dict__, "steps": 6}), progress=False)  # resumed: still step 2
    assert '"start": 2' in (continued / "model" / "training.json").read_text()


def test_learning_rate_warms_up_holds_and_decays_to_five_percent():
    config = TrainConfig(steps=1000, lr=1e-3, warmup=100, decay_from=600)
    assert config.learning_rate(0) == pytest.approx(1e-5)
    assert config.learning_rate(99) == config.learning_rate(599) == pytest.approx(1e-3)
    assert config.learning_rate(800) == pytest.approx(1e-3 * (1 - 0.95 * 0.5))
    assert config.learning_rate(1000) == pytest.approx(5e-5)
    assert TrainConfig(steps=1000, lr=1e-3, warmup=100).learning_rate(999) == pytest.approx(1e-3)


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch):
    from avert.pipeline import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda: True)
    assert TrainConfig().resolved().precision == "bf16"
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    assert TrainConfig().resolved().precision == "fp32"
    assert TrainConfig(precision="bf16").resolved().precision == "bf16"  # asked for: kept
    with pytest.raises(ValueError, match="precision: 'fp16' is not allowed; must be one of auto, bf16, fp32"):
        TrainConfig(precision="fp16").resolved()


@pytest.mark.parametrize("field, value, message", [
    ("train_only", "unet", "train_only: 'unet' is not allowed; must be one of all, text"),
    ("short_share", 1.5, "short_share: 1.5 is not allowed; must be from 0 to 1"),
])
def test_bad_training_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError) as problem:
        TrainConfig(**{field: value}).resolved()
    assert str(problem.value) == message


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_precisions_train_and_are_recorded(tmp_path, train, precision):
    run = tmp_path / precision
    train(run, TrainConfig(**{**CONFIG.__dict__, "steps": 1, "precision": precision}), progress=False)
    assert f'"precision": "{precision}"' in (run / "model" / "training.json").read_text()
    assert all(torch.isfinite(w.float()).all() for w in unet_weights(run).values())


def test_a_run_started_from_a_model_warms_up_again_from_its_step():
    config = TrainConfig(steps=2000, lr=1e-3, warmup=100, decay_from=1000, start=1000)
    assert config.learning_rate(1000) == pytest.approx(1e-3 * 0.01)  # a fresh optimiser: warm-up again
    assert config.learning_rate(1049) == pytest.approx(1e-3 * 0.5 * (1 - 0.95 * 0.049))
    assert config.learning_rate(2000) == pytest.approx(5e-5)


GROWN_LAYOUT = dict(  # the experiment of 2026-11-30 (commit 2d1729b): cross-attention at 16x16 as well
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)


def exported(folder, weights: dict[str, torch.Tensor]):
    """A minimal exported model folder: only the UNet weights."""
    from safetensors.torch import save_file

    (folder / "unet").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "unet" / "diffusion_pytorch_model.safetensors")
    return folder


def unet_state(**layout) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    from avert.train.model import UNET_CONFIG

    return UNet2DConditionModel(**{**UNET_CONFIG, **layout}).state_dict()


def test_init_from_takes_the_exported_weights_exactly(tmp_path):
    from avert.train.model import new_unet

    torch.manual_seed(1)
    weights = unet_state()
    unet = new_unet()
    assert loop._load_exported(unet, exported(tmp_path / "m", weights)) == 0  # no training.json: step 0
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("change, named", [
    (lambda w: w.pop("conv_in.weight"), "conv_in.weight"),
    (lambda w: w.update(extra=torch.zeros(1)), "extra"),
    (lambda w: w.update({"conv_in.weight": torch.zeros(8, 3, 3, 3)}), "conv_in.weight"),
    (lambda w: w.update(unet_state(**GROWN_LAYOUT)), "down_blocks.1.attentions.0."),
])
def test_init_from_refuses_weights_of_another_architecture_by_name(tmp_path, capsys, change, named):
    from avert.cli import main

    weights = unet_state()
    change(weights)
    folder = exported(tmp_path / "odd", weights)
    assert main(["train", "--run", str(tmp_path / "run"), "--init-from", str(folder), "-q"]) == 2
    err = capsys.readouterr().err
    assert "does not fit this architecture" in err and named in err
    assert not (tmp_path / "run" / "data").exists()  # refused before building the training set


@pytest.mark.parametrize("content", [None, b"not safetensors"])
def test_init_from_a_folder_without_readable_weights_is_refused(tmp_path, capsys, content):
    from avert.cli import main

    if content is not None:
        (tmp_path / "unet").mkdir()
        (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(content)
    assert main(["train", "--run", str(tmp_path / "run"), "--init-from", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"init_from: {str(tmp_path)!r} is not allowed; must be a model folder exported by `avert train` " \
        "(unet/diffusion_pytorch_model.safetensors: " in err


def test_the_ema_decay_flag_reaches_the_run(tmp_path, capsys):
    from avert.cli import main

    run = tmp_path / "run"
    assert main(["train", "--run", str(run), "--steps", "1", "--images", "64", "--batch-size", "2",
                 "--ema-decay", "0.9", "-q"]) == 0
    assert '"ema_decay": 0.9,' in (run / "model" / "training.json").read_text()


@pytest.mark.parametrize("text, one", [
    ("a tree", True), ("a lone tree", True), ("a house", True), ("a red house", True), ("a landscape in sepia", True),
    ("the sun", True), ("a tree and a house", False), ("a red house on the sand", False), ("a landscape", False),
    ("", False),
])
def test_a_short_caption_names_one_thing(text, one):
    from avert.train.data import _names_one_thing

    assert _names_one_thing(text) is one


def test_short_caption_pairs_point_at_the_cached_captions_that_name_one_thing(data_dir):
    from avert.train.data import _names_one_thing, build_training_set, encode_all, short_caption_pairs
    from avert.world.dataset import scenes_and_captions

    data = build_training_set(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image, data_dir, progress=False)
    pairs = short_caption_pairs(data, CONFIG.images, CONFIG.seed, CONFIG.captions_per_image)
    _, captions = scenes_and_captions(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image)
    chosen = {tuple(p) for p in pairs.tolist()}
    assert chosen == {(i, w) for i, caps in enumerate(captions) for w, t in enumerate(caps) if _names_one_thing(t)}
    assert 0 < len(chosen) < CONFIG.images * CONFIG.captions_per_image
    (i, w), *_ = sorted(chosen)
    assert torch.equal(encode_all([captions[i][w]], progress=False)[0], data.embeds[data.caption_ids[i, w]])
    with pytest.raises(ValueError, match="the cached training set has"):
        short_caption_pairs(data, CONFIG.images // 2, CONFIG.seed, CONFIG.captions_per_image)


def test_short_share_fills_that_share_of_the_batch_and_zero_changes_nothing(data_dir):
    from avert.train.data import build_training_set

    data = build_training_set(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image, data_dir, progress=False)
    short = torch.tensor([[5, 1], [7, 0]])
    config = TrainConfig(**{**CONFIG.__dict__, "batch_size": 8, "short_share": 0.5})
    _, cond = loop._batch(data, config, 3, short)
    wanted = [data.embeds[data.caption_ids[5, 1]], data.embeds[data.caption_ids[7, 0]]]
    assert all(any(torch.equal(c, w) for w in wanted) for c in cond[:4])
    assert not all(any(torch.equal(c, w) for w in wanted) for c in cond[4:])
    plain = TrainConfig(**{**CONFIG.__dict__, "batch_size": 8})
    for a, b in zip(loop._batch(data, plain, 3), loop._batch(data, plain, 3, short)):
        assert torch.equal(a, b)


def test_train_only_text_moves_only_cross_attention_and_the_pooled_text(tmp_path, train):
    base = tmp_path / "base"
    train(base, TrainConfig(**{**CONFIG.__dict__, "steps": 1}), progress=False)
    run = tmp_path / "text"
    train(run, TrainConfig(**{**CONFIG.__dict__, "steps": 3, "train_only": "text", "short_share": 0.5}),
          progress=False, init_from=base / "model")
    a, b = unet_weights(base), unet_weights(run)
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert any("attn2." in k for k in moved) and any("add_embedding." in k for k in moved)
    assert all("attn2." in k or "add_embedding." in k for k in moved)
    assert '"train_only": "text"' in (run / "model" / "training.json").read_text()


def test_the_train_only_short_share_and_warmup_flags_reach_the_run(tmp_path):
    from avert.cli import main

    run = tmp_path / "run"
    assert main(["train", "--run", str(run), "--steps", "1", "--images", "64", "--batch-size", "2",
                 "--train-only", "text", "--short-share", "0.25", "--warmup", "7", "-q"]) == 0
    info = (run / "model" / "training.json").read_text()
    assert '"train_only": "text"' in info and '"short_share": 0.25' in info and '"warmup": 7' in info
