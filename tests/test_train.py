"""`avert train`: a resumed run continues exactly as an uninterrupted one; the export is a loadable model."""

from __future__ import annotations

import functools

import numpy as np

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


def test_the_warmup_flag_reaches_the_run(tmp_path):
    from avert.cli import main

    run = tmp_path / "run"
    assert main(["train", "--run", str(run), "--steps", "1", "--images", "64", "--batch-size", "2",
                 "--warmup", "7", "-q"]) == 0
    assert '"warmup": 7,' in (run / "model" / "training.json").read_text()


def test_object_masks_are_the_worlds_masks_cached(data_dir):
    from avert.train.data import build_object_masks
    from avert.world.dataset import sample_scenes
    from avert.world.render import object_mask

    masks = build_object_masks(CONFIG.images, CONFIG.seed, data_dir, progress=False)
    assert (data_dir / f"world-{CONFIG.images}-{CONFIG.seed}-objects.pt").exists()
    scenes = sample_scenes(CONFIG.images, CONFIG.seed)
    assert masks.shape == (CONFIG.images, 32, 32) and masks.dtype == torch.bool
    assert all(torch.equal(masks[i], torch.from_numpy(object_mask(s))) for i, s in enumerate(scenes[:8]))
    assert torch.equal(build_object_masks(CONFIG.images, CONFIG.seed, data_dir, progress=False), masks)


def test_pixel_weights_follow_the_flipped_images(data_dir):
    from avert.train.data import build_training_set

    data = build_training_set(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image, data_dir, progress=False)
    bright = data.images[..., 0] > 200  # a stand-in mask that can be read back from the image itself
    config = TrainConfig(**{**CONFIG.__dict__, "batch_size": 16, "object_weight": 3.0})
    images, cond, weight = loop._batch(data, config, 5, bright)
    assert weight.shape == (16, 1, 32, 32) and set(weight.unique().tolist()) <= {1.0, 4.0}
    assert torch.equal(weight[:, 0] == 4.0, images[:, 0] > 200 / 127.5 - 1)
    plain_images, plain_cond, none = loop._batch(data, TrainConfig(**{**CONFIG.__dict__, "batch_size": 16}), 5)
    assert none is None and torch.equal(plain_images, images) and torch.equal(plain_cond, cond)


def test_the_object_weight_changes_training_and_is_recorded(tmp_path, train):
    plain, weighted = tmp_path / "plain", tmp_path / "weighted"
    train(plain, TrainConfig(**{**CONFIG.__dict__, "steps": 2}), progress=False)
    train(weighted, TrainConfig(**{**CONFIG.__dict__, "steps": 2, "object_weight": 3.0}), progress=False)
    a, b = unet_weights(plain), unet_weights(weighted)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert '"object_weight": 3.0' in (weighted / "model" / "training.json").read_text()
    assert '"object_weight": 0.0' in (plain / "model" / "training.json").read_text()


def test_a_negative_object_weight_is_refused_by_name():
    with pytest.raises(ValueError) as problem:
        TrainConfig(object_weight=-1.0).resolved()
    assert str(problem.value) == "object_weight: -1.0 is not allowed; must be a number from 0.0 to 100.0"


def test_named_object_masks_follow_each_caption_and_are_cached(data_dir):
    from avert.train.data import build_named_object_masks, named_kinds
    from avert.world.dataset import sample_captions, sample_scenes
    from avert.world.render import object_mask

    k = CONFIG.captions_per_image
    masks = build_named_object_masks(CONFIG.images, CONFIG.seed, k, data_dir, progress=False)
    assert (data_dir / f"world-{CONFIG.images}-{CONFIG.seed}-{k}-named-objects.pt").exists()
    assert masks.shape == (CONFIG.images, k, 32, 32) and masks.dtype == torch.bool
    scenes = sample_scenes(CONFIG.images, CONFIG.seed)
    phrases = sample_captions(scenes, CONFIG.seed, k)
    for i in range(12):
        for j, (_, concepts) in enumerate(phrases[i]):
            assert torch.equal(masks[i, j], torch.from_numpy(object_mask(scenes[i], kinds=named_kinds(concepts))))
    everything = torch.from_numpy(np.stack([object_mask(s) for s in scenes]))
    outside = (masks & ~everything.unsqueeze(1)).sum()  # pixels not in the image's mask of every object
    assert outside <= 0.02 * masks.sum()  # only where objects meet in the downscale
    assert masks.sum() < 0.8 * everything.unsqueeze(1).expand_as(masks).sum()  # captions name a subset
    assert torch.equal(build_named_object_masks(CONFIG.images, CONFIG.seed, k, data_dir, progress=False), masks)


def test_a_caption_naming_a_tone_weighs_the_whole_image_under_named_plus_tone(data_dir):
    from avert.train.data import build_named_masks_with_tones, build_named_object_masks, names_a_tone
    from avert.world.dataset import sample_captions, sample_scenes

    k = CONFIG.captions_per_image
    named = build_named_object_masks(CONFIG.images, CONFIG.seed, k, data_dir, progress=False)
    masks = build_named_masks_with_tones(CONFIG.images, CONFIG.seed, k, data_dir, progress=False)
    phrases = sample_captions(sample_scenes(CONFIG.images, CONFIG.seed), CONFIG.seed, k)
    toned = [(i, j) for i, caps in enumerate(phrases) for j, (_, concepts) in enumerate(caps) if names_a_tone(concepts)]
    assert 0.2 * CONFIG.images * k < len(toned) < 0.8 * CONFIG.images * k  # graded images are about half
    for i, caps in enumerate(phrases):
        for j, _ in enumerate(caps):
            assert torch.equal(masks[i, j], torch.ones_like(masks[i, j]) if (i, j) in toned else named[i, j])


def test_the_tone_noise_table_lists_ungraded_images_and_tone_only_captions():
    from avert.train.data import names_a_tone, tone_noise_table
    from avert.world.dataset import sample_captions, sample_scenes

    k = CONFIG.captions_per_image
    ungraded, tone_only = tone_noise_table(CONFIG.images, CONFIG.seed, k)
    scenes = sample_scenes(CONFIG.images, CONFIG.seed)
    assert ungraded.tolist() == [s.tone == "none" for s in scenes] and 0 < ungraded.sum() < CONFIG.images
    phrases = sample_captions(scenes, CONFIG.seed, k)
    texts = sorted({t for caps in phrases for t, _ in caps} | {""})  # the rows of TrainingSet.embeds
    concepts = {t: c for caps in phrases for t, c in caps}
    named = [concepts[texts[i]] for i in tone_only.tolist()]
    assert named and all(c and all(names_a_tone(frozenset({x})) for x in c) for c in named)
    assert len(tone_only) == len({t for t, c in concepts.items() if c and all(names_a_tone(frozenset({x})) for x in c)})


def test_the_bare_tone_noise_table_keeps_only_tone_phrases_alone():
    from avert.train.data import caption_rows, tone_noise_table
    from avert.world.captions import TONE_WORDS
    from avert.world.dataset import sample_captions, sample_scenes

    k = CONFIG.captions_per_image
    ungraded, tone_only = tone_noise_table(CONFIG.images, CONFIG.seed, k)
    bare_ungraded, bare = tone_noise_table(CONFIG.images, CONFIG.seed, k, bare=True)
    phrases = sample_captions(sample_scenes(CONFIG.images, CONFIG.seed), CONFIG.seed, k)
    text = {i: t for t, i in caption_rows([[t for t, _ in caps] for caps in phrases]).items()}
    words = {w for ws in TONE_WORDS.values() for w in ws}
    assert torch.equal(bare_ungraded, ungraded) and 0 < len(bare) < len(tone_only)
    assert set(bare.tolist()) <= set(tone_only.tolist()) and {text[i] for i in bare.tolist()} <= words
    assert {text[i] for i in tone_only.tolist()} & words == {text[i] for i in bare.tolist()}
    with pytest.raises(ValueError) as problem:
        TrainConfig(tone_noise_captions="all").resolved()
    assert str(problem.value) == "tone_noise_captions: 'all' is not allowed; must be one of tone-only, bare"
    with pytest.raises(ValueError, match="they only apply with tone_noise above 0.0"):
        TrainConfig(tone_noise_captions="bare").resolved()
    assert TrainConfig(tone_noise=0.1, tone_noise_captions="bare").resolved().tone_noise_captions == "bare"


def test_tone_noise_swaps_only_ungraded_images_to_tone_only_captions(data_dir):
    from avert.train.data import build_training_set, tone_noise_table

    data = build_training_set(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image, data_dir, progress=False)
    noise = tone_noise_table(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image)
    plain = TrainConfig(**{**CONFIG.__dict__, "batch_size": 32, "object_weight": 3.0})
    masks = torch.ones((CONFIG.images, CONFIG.captions_per_image, 32, 32), dtype=torch.bool)
    images, cond, weight = loop._batch(data, plain, 3, masks)
    rng = np.random.default_rng([plain.seed, 3])
    idx, which = rng.integers(0, CONFIG.images, 32), rng.integers(0, CONFIG.captions_per_image, 32)
    ungraded = noise[0][torch.from_numpy(idx)]
    tone_rows = data.embeds[noise[1]]
    for p, expected in ((0.0, 0), (1.0, int(ungraded.sum()))):
        config = TrainConfig(**{**plain.__dict__, "tone_noise": p})
        noisy_images, noisy_cond, noisy_weight = loop._batch(data, config, 3, masks, noise)
        assert torch.equal(noisy_images, images)  # the same images and flips: the draws come after them
        swapped = [i for i in range(32) if not torch.equal(noisy_cond[i], cond[i])]
        assert len(swapped) == expected and all(bool(ungraded[i]) for i in swapped)
        assert all(any(torch.equal(noisy_cond[i], t) for t in tone_rows) for i in swapped)
        assert all(bool((noisy_weight[i] == 1.0).all()) for i in swapped)  # a tone-only caption names no object
        assert all(torch.equal(noisy_weight[i], weight[i]) for i in range(32) if i not in swapped)
    with pytest.raises(ValueError) as problem:
        TrainConfig(tone_noise=1.5).resolved()
    assert str(problem.value) == "tone_noise: 1.5 is not allowed; must be a number from 0.0 to 1.0"


def test_tone_noise_below_swaps_only_at_low_timesteps(data_dir):
    from avert.train.data import build_training_set, tone_noise_table

    data = build_training_set(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image, data_dir, progress=False)
    noise = tone_noise_table(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image)
    config = TrainConfig(**{**CONFIG.__dict__, "batch_size": 32, "tone_noise": 1.0, "tone_noise_below": 300})
    _, cond, _ = loop._batch(data, config, 3, None)
    _, everywhere, _ = loop._batch(data, config, 3, None, noise)
    t = torch.arange(32) * 31  # 0 .. 961: some below 300, most above
    _, limited, _ = loop._batch(data, config, 3, None, noise, t)
    swapped = {i for i in range(32) if not torch.equal(everywhere[i], cond[i])}
    assert swapped & {i for i in range(32) if t[i] < 300} and swapped - {i for i in range(32) if t[i] < 300}
    for i in range(32):
        assert torch.equal(limited[i], everywhere[i] if t[i] < 300 else cond[i])
    for bad in (0, 1001):
        with pytest.raises(ValueError) as problem:
            TrainConfig(tone_noise_below=bad).resolved()
        assert str(problem.value) == (f"tone_noise_below: {bad} is not allowed; must be an integer from 1 to "
                                      "1000 (a training timestep)")


def test_names_a_tone():
    from avert.train.data import names_a_tone

    assert names_a_tone(frozenset({"tree", "sepia"})) and names_a_tone(frozenset({"green tones"}))
    assert not names_a_tone(frozenset({"tree", "green grass", "blue house"})) and not names_a_tone(frozenset())


def test_named_kinds_are_the_object_kinds_a_caption_names():
    from avert.train.data import named_kinds

    assert named_kinds(frozenset({"red house", "tree", "sunset", "green tones", "cloudy sky"})) == {"house", "tree"}
    assert named_kinds(frozenset()) == frozenset()


def test_named_masks_weigh_the_drawn_caption(data_dir):
    from avert.train.data import build_training_set

    data = build_training_set(CONFIG.images, CONFIG.seed, CONFIG.captions_per_image, data_dir, progress=False)
    n, k = data.caption_ids.shape
    # A stand-in per-caption mask that says which caption was drawn: all ones for caption 1, zeros for caption 0.
    which_mask = torch.zeros((n, k, 32, 32), dtype=torch.bool)
    which_mask[:, 1] = True
    config = TrainConfig(**{**CONFIG.__dict__, "batch_size": 16, "object_weight": 3.0, "object_mask": "named"})
    images, cond, weight = loop._batch(data, config, 5, which_mask)
    rng = np.random.default_rng([config.seed, 5])
    idx, which = rng.integers(0, n, 16), rng.integers(0, k, 16)
    assert 0 < which.sum() < 16
    assert torch.equal(weight[:, 0, 0, 0], torch.from_numpy(1.0 + 3.0 * which).float())
    assert torch.equal(cond, data.embeds[data.caption_ids[torch.from_numpy(idx), torch.from_numpy(which)]])


@pytest.mark.parametrize("mask", ["named", "named+tone"])
def test_the_named_object_mask_is_recorded_and_an_unknown_one_refused(tmp_path, train, mask):
    run = tmp_path / "named"
    train(run, TrainConfig(**{**CONFIG.__dict__, "steps": 1, "object_weight": 3.0, "object_mask": mask}),
          progress=False)
    assert f'"object_mask": "{mask}"' in (run / "model" / "training.json").read_text()
    with pytest.raises(ValueError) as problem:
        TrainConfig(object_mask="some").resolved()
    assert str(problem.value) == "object_mask: 'some' is not allowed; must be one of all, named, named+tone"


def test_a_bad_setting_fails_before_the_model_or_the_data(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(ValueError, match="object_mask: 'some' is not allowed"):
        loop.train(tmp_path / "run", TrainConfig(**{**CONFIG.__dict__, "object_mask": "some"}), progress=False,
                   init_from=tmp_path / "no-such-model", data_dir=data)
    assert not data.exists()


def test_the_export_recommends_its_default_guidance_and_the_flag_reaches_it(tmp_path, train):
    """The exported folder's avert.json names the run's default guidance (gated unless --default-guidance says
    otherwise), and the loader gives it to requests that name none; an unknown method is refused by name."""
    from avert.cli import build_parser

    run = tmp_path / "run"
    train(run, TrainConfig(**{**CONFIG.__dict__, "steps": 1}), progress=False)
    assert load_model(run / "model").default_guidance == "gated"
    other = tmp_path / "other"
    train(other, TrainConfig(**{**CONFIG.__dict__, "steps": 1, "default_guidance": "cfg"}), progress=False)
    assert load_model(other / "model").default_guidance == "cfg"
    args = build_parser().parse_args(["train", "--default-guidance", "posterior"])
    assert args.default_guidance == "posterior"
    with pytest.raises(ValueError) as problem:
        TrainConfig(default_guidance="best").resolved()
    assert str(problem.value).startswith("default_guidance: 'best' is not allowed; must be one of cfg, apg")
