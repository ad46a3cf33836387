"""The one training loop: steps, stops, history rows and progress, whatever the recipe."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from napari_mousesegment.models.unet import UNet, UNetConfig
from napari_mousesegment.training.checkpoint import TrainingError
from napari_mousesegment.training.finetune import FineTuneSettings, fine_tune_unet
from napari_mousesegment.training.loop import Step, fit


@dataclass
class _Line:
    """Fit y = 3x with one weight; counts what the loop asks of it."""

    net: torch.nn.Module
    steps: int = 4
    parts: tuple[str, ...] = ("half",)
    ended: list = field(default_factory=list)

    def begin_epoch(self, epoch, history):
        return None if epoch == 3 else {"stage": "train"}

    def batches(self, epoch):
        return range(self.steps)

    def step(self, _):
        x = torch.linspace(-1, 1, 8)[:, None]
        loss = ((self.net(x) - 3 * x) ** 2).mean()
        return Step(loss, len(x), {"half": float(loss.detach()) / 2})

    def validate(self):
        return {"val_weight": float(self.net.weight.detach())}

    def end_epoch(self, row, history, stopped):
        self.ended.append((row["epoch"], stopped))


def test_fit_trains_records_a_row_per_epoch_and_lets_the_recipe_end_it():
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1, bias=False)
    recipe, events = _Line(net), []
    run = fit(net, torch.optim.SGD(net.parameters(), lr=0.2), recipe, epochs=10, progress=events.append)
    assert [r["epoch"] for r in run.history] == [1, 2, 3] and run.stopped is None  # the recipe ended it at 3
    assert list(run.history[0]) == ["epoch", "stage", "train_loss", "train_half", "val_weight", "lr", "seconds",
                                    "steps", "complete"]
    assert [r["steps"] for r in run.history] == [4, 4, 4]  # optimisation steps per epoch, as history.csv keeps
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.history[0]["train_half"] == pytest.approx(run.history[0]["train_loss"] / 2, rel=0.2)
    assert abs(run.history[-1]["val_weight"] - 3) < abs(run.history[0]["val_weight"] - 3)
    assert [e["epoch"] for e in events] == [1, 2, 3] and recipe.ended == [(1, None), (2, None), (3, None)]


def test_a_stop_ends_the_epoch_after_the_current_step_and_marks_it_incomplete():
    net = torch.nn.Linear(1, 1, bias=False)
    asked = []
    run = fit(net, torch.optim.SGD(net.parameters(), lr=0.1), _Line(net), epochs=5,
              should_stop=lambda: asked.append(1) or len(asked) >= 6)
    assert run.stopped == "cancelled" and [r["complete"] for r in run.history] == [True, False]
    assert [r["steps"] for r in run.history] == [4, 2]  # the cut epoch counts the steps it took


def test_a_loss_that_is_not_finite_stops_with_an_error_naming_the_run():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="my run, epoch 1: loss became nan"):
        fit(net, torch.optim.SGD(net.parameters(), lr=0.1), _Line(net), epochs=2, where="my run")


def test_a_retraining_round_on_the_same_corrections_gives_the_same_weights():
    torch.manual_seed(1)
    model = UNet(UNetConfig(width=4, image_size=32, dropout=0.3))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 40, 40)).astype(np.uint8)
    masks = (rng.random((3, 40, 40)) > 0.7).astype(np.uint8)
    settings = FineTuneSettings(epochs=2, steps_per_epoch=2, batch_size=2)
    torch.rand(5)  # whatever the caller's own random state
    first = fine_tune_unet(model, frames, masks, settings)
    torch.rand(7)
    second = fine_tune_unet(model, frames, masks, settings)
    changed = fine_tune_unet(model, frames, masks, FineTuneSettings(epochs=2, steps_per_epoch=2, batch_size=2, seed=1))
    same = all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), changed.state_dict().values()))
    assert same and not other
