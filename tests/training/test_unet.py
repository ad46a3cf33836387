import json

import pytest

from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series
from napari_mousesegment.models.unet import UNetConfig
from napari_mousesegment.store.load import load_unet
from napari_mousesegment.training.checkpoint import TrainingError
from napari_mousesegment.training.unet import UNetSettings, train_unet

pytestmark = pytest.mark.filterwarnings("ignore:.*not the usual 35:UserWarning")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for seed in range(4):
        write_us_series(root / f"S{seed}", ultrasound_series(seed=seed, n_frames=4, frame_shape=(64, 96)))
    return root


def settings(**kw):
    """The report's recipe (plateau drops, a fine-tuning stage, series split), small."""
    base = dict(epochs=3, finetune_epochs=1, batch_size=4, lr=3e-3, test_series=1, val_fraction=0.34,
                schedule="plateau", val_split="series")
    return UNetSettings(**{**base, **kw})


def test_training_learns_and_writes_a_durable_model(tmp_path, lab):
    config = UNetConfig(organ="placenta", arch="residual", width=4, image_size=32)
    summary = train_unet([lab], tmp_path / "m", config, settings(), log=lambda m: None, progress=False)
    rows = (tmp_path / "m" / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[-1].split(",")[1] == "finetune"
    losses = [float(r.split(",")[2]) for r in rows[1:]]
    assert losses[-1] < losses[0]
    model, cfg, meta = load_unet(tmp_path / "m")
    assert 0.3 <= cfg.threshold <= 0.95 and cfg.threshold == summary["threshold"]
    assert meta["training"]["test_series"] and not set(meta["training"]["test_series"]) & set(meta["training"]["train_series"])
    assert (tmp_path / "m" / "curves.png").stat().st_size > 0


def test_resume_continues_and_refuses_a_changed_split(tmp_path, lab):
    config = UNetConfig(organ="heart", width=4, image_size=32)
    train_unet([lab], tmp_path / "m", config, settings(epochs=2, finetune_epochs=0), log=lambda m: None, progress=False)
    with pytest.raises(FileExistsError):
        train_unet([lab], tmp_path / "m", config, settings(), log=lambda m: None, progress=False)
    train_unet([lab], tmp_path / "m", config, settings(epochs=3, finetune_epochs=0, resume=True),
               log=lambda m: None, progress=False)
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3]
    with pytest.raises(TrainingError, match="split differs"):
        train_unet([lab], tmp_path / "m", config, settings(epochs=4, seed=7, resume=True),
                   log=lambda m: None, progress=False)


def test_threshold_by_dice_by_f05_or_by_a_precision_target():
    import torch

    from napari_mousesegment.training.thresholds import choose_threshold

    truth = torch.zeros(1, 1, 1, 100)
    truth[..., :50] = 1
    prob = torch.linspace(1.0, 0.0, 100).view(1, 1, 1, 100)  # confident inside, fading outside
    prob[..., 40:50] = 0.45  # some organ pixels look doubtful
    prob[..., 50:60] = 0.6  # and some background looks like organ
    t, scores = choose_threshold(prob, truth)  # Dice: 0.909 at 0.4 (10 false pixels), lower from 0.55 up
    assert t == 0.4 and scores["recall"] == 1.0 and round(scores["dice"], 3) == 0.909
    t, scores = choose_threshold(prob, truth, rule="f0.5")
    assert t >= 0.6 and scores["precision"] == 1.0  # F0.5 prefers dropping the false organ pixels
    with pytest.raises(ValueError, match="threshold rule"):
        choose_threshold(prob, truth, rule="f1")
    t_low, s_low = choose_threshold(prob, truth, precision_target=0.8)
    assert t_low <= 0.45 and s_low["precision"] >= 0.8 and s_low["recall"] == 1.0


def test_augment_option_parses_ranges_and_switches(capsys):
    from argparse import Namespace

    from napari_mousesegment.cli.options import augment_settings
    from napari_mousesegment.training.augment import AugmentSettings

    def parse(text, defaults=AugmentSettings(), off=False):
        return augment_settings(Namespace(augment=text, no_augment=off), defaults)

    settings = parse("rotation=10,vflip=true,noise=0")
    assert settings.rotation == 10 and settings.vflip and settings.noise == 0 and settings.scale == 0.15
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse("spin=3")
    ct = parse("scale=0.25", AugmentSettings.for_ct())  # train mosnet's defaults: never flipped
    assert ct.scale == 0.25 and ct.rotation == 10 and not ct.hflip and ct.noise == 0
    assert AugmentSettings.for_ct().scale == 0.15  # the defaults themselves are not changed
    assert parse("rotation=5", AugmentSettings.for_ct(), off=True) == AugmentSettings.off()


@pytest.mark.parametrize("bad", [{"alpha": 1.5}, {"plateau_factor": 1.0}, {"lr": 0}, {"finetune_lr": -1e-5},
                                 {"threshold_rule": "f1"}])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        UNetSettings(**bad)


def test_default_recipe_anneals_over_its_budget_with_a_frame_split(tmp_path, lab):
    """Defaults: cosine over the epochs budget (no fine-tuning stage, no early stop), frames resized,
    and with fewer than 6 series validation frames drawn within the series."""
    config = UNetConfig(organ="heart", width=4, image_size=32, frame_size=32)
    lines = []
    train_unet([lab], tmp_path / "m", config, UNetSettings(epochs=4, batch_size=4, lr=3e-3, test_series=1),
               log=lines.append, progress=False)
    rows = [r.split(",") for r in (tmp_path / "m" / "history.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    stages, lrs = [r[header.index("stage")] for r in rows], [float(r[header.index("lr")]) for r in rows]
    assert stages == ["train"] * 4
    assert lrs[1] > lrs[-1] and lrs[-1] < 3e-3 * 0.5  # warmed up, then annealed within the 4 epochs
    meta = load_unet(tmp_path / "m")[2]["training"]
    assert meta["train_series"] == meta["val_series"] and len(meta["train_series"]) == 3
    assert meta["settings"]["threshold_rule"] == "dice"  # what a round on this model reads
    assert all(len(v) == 1 for v in meta["val_frames"].values())  # 0.2 of 4 frames: one held out per series
    assert any("held out within" in line for line in lines)


def test_one_series_is_enough_to_train(tmp_path):
    write_us_series(tmp_path / "lab" / "only", ultrasound_series(seed=3, n_frames=6, frame_shape=(64, 80)))
    config = UNetConfig(organ="heart", width=4, image_size=32, frame_size=32)
    summary = train_unet([tmp_path / "lab"], tmp_path / "m", config,
                         UNetSettings(epochs=1, batch_size=4, test_series=0), log=lambda m: None, progress=False)
    assert summary["epochs_run"] == 1
    held = load_unet(tmp_path / "m")[2]["training"]["val_frames"]
    assert list(held) == ["only"] and len(held["only"]) == 1  # 0.2 of 6 frames


def test_validation_split_rules():
    import numpy as np

    from napari_mousesegment.data.us_dataset import USItem
    from napari_mousesegment.training.unet import assign_validation

    def items(n, split="train"):
        return [USItem(f"s{i}", split, np.zeros((10, 4, 4)), {"heart": np.zeros((10, 4, 4))}) for i in range(n)]

    few, held = assign_validation(items(5), "auto", 0.2, 0)
    assert len(held) == 5 and all(len(v) == 2 for v in held.values())
    assert sum(len(i.frames) for i in few if i.split == "train") == 40
    many, held = assign_validation(items(6), "auto", 0.2, 0)
    assert not held and sum(i.split == "val" for i in many) == 1
    kept, held = assign_validation(items(2) + items(1, "val"), "auto", 0.2, 0)
    assert not held and [i.split for i in kept] == ["train", "train", "val"]  # a dataset folder's own split
    forced, held = assign_validation(items(7), "frames", 0.1, 0)
    assert len(held) == 7 and all(len(v) == 1 for v in held.values())
