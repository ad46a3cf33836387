"""MOSnet's learning rate follows the budget: warm-up, cosine to the floor at the budget's end, resumable."""

import json

import pytest
import torch

from napari_mousesegment.data.ct_dataset import write_ct_case
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.models.mosnet import MOSnetConfig
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.training.mosnet import (
    MOSnetSchedule,
    TrainSettings,
    budget_schedule,
    train_mosnet,
)

SHAPE = (32, 24, 28)
LR = 2e-3


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    for seed in range(2):
        write_ct_case(root / "native", f"n{seed}", ct_phantom(seed, "native", shape=SHAPE))
        write_ct_case(root / "contrast", f"c{seed}", ct_phantom(10 + seed, "contrast", shape=SHAPE))
    return [root / "native", root / "contrast"]


def _config():
    return MOSnetConfig(organs=list(CT_ORGANS), width=2, depth=2, image_size=16)


def _settings(**kw):
    return TrainSettings(**{"epochs": 2, "batch_size": 4, "lr": LR, "device": "cpu", "slice_stride": 4,
                            "val_fraction": 0.5, **kw})


def _saved(out):
    saved = torch.load(out / "checkpoint" / "optimizer.pt", weights_only=True)
    return saved["optimizer"]["param_groups"][0]["lr"], saved["scheduler"]


def _train(datasets, out, settings):
    return train_mosnet(datasets, out, _config(), settings, log=lambda _: None, progress=False)


@pytest.mark.slow
def test_rate_warms_up_and_reaches_its_floor_at_the_last_step(datasets, tmp_path):
    _train(datasets, tmp_path / "m", _settings())
    rows = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())["history"]
    lr, schedule = _saved(tmp_path / "m")
    steps_per_epoch = schedule["steps"] // 2
    assert steps_per_epoch >= 2 and schedule["steps"] == 2 * steps_per_epoch
    assert rows[0]["lr"] == pytest.approx(LR * 0.01)  # the warm-up's first step, not the top rate
    assert LR * 0.02 < rows[1]["lr"] < LR  # half-way down the cosine
    assert lr == pytest.approx(LR * 0.02)  # the floor, exactly when the epochs end


@pytest.mark.slow
def test_resume_continues_the_schedule_and_ends_at_the_floor(datasets, tmp_path):
    _train(datasets, tmp_path / "m", _settings(epochs=1))
    first_lr, first = _saved(tmp_path / "m")
    assert first_lr == pytest.approx(LR * 0.02)  # one epoch was the whole budget
    _train(datasets, tmp_path / "m", _settings(epochs=3, resume=True))
    rows = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())["history"]
    lr, schedule = _saved(tmp_path / "m")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert schedule["steps"] == 3 * first["steps"] and schedule["seconds"] > first["seconds"]
    assert rows[1]["lr"] > first_lr  # the longer budget: a third spent, back up the cosine
    assert lr == pytest.approx(LR * 0.02)


def test_minutes_budget_and_older_checkpoints():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = budget_schedule(optimizer, _settings(epochs=100, max_minutes=12), batches_per_epoch=50)
    assert schedule.total_steps == 5000 and schedule.total_seconds == 720
    schedule.load_state_dict({"steps": 10, "seconds": 720.0})  # the minutes are spent: the floor
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * 0.02)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    legacy = MOSnetSchedule(optimizer, 50, total_steps=5000)
    legacy.load_state_dict({"last_epoch": 50, "base_lrs": [LR]})  # a LambdaLR state, 50 of 100 epochs done
    assert legacy.steps == 2500 and LR * 0.4 < optimizer.param_groups[0]["lr"] < LR * 0.6
