"""Retraining rounds on corrections: frames touched as segmentations, thresholds chosen for the new
version, and the promotion guard that refuses a version that finds nothing or has no evidence."""

import json

import numpy as np
import pytest
import torch

from napari_mousesegment.active.queue import Queue, QueueError, touched_planes
from napari_mousesegment.active.rounds import (
    MIN_EVIDENCE,
    HeldOut,
    RoundResult,
    ThresholdChoice,
    promotion,
)
from napari_mousesegment.active.worker import run_rounds
from napari_mousesegment.cli import main
from napari_mousesegment.inference.ultrasound import segment_frames
from napari_mousesegment.io.roi import labels_to_rois, rois_to_labels
from napari_mousesegment.metrics import dice
from napari_mousesegment.models.folder import save_model
from napari_mousesegment.models.unet import UNet, UNetConfig
from napari_mousesegment.store import versions
from napari_mousesegment.store.load import load_unet
from napari_mousesegment.training.finetune import FineTuneSettings

SHAPE = (64, 80)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


def _discs(n: int, seed: int, pairs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, 64, 80) of dark speckle with a bright disc (two with ``pairs``), and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    frames = rng.normal(60, 15, (n, *SHAPE))
    labels = np.zeros((n, *SHAPE), np.uint16)
    for k in range(n):
        centres = [(32, 20), (32, 60)] if pairs else [(int(rng.integers(18, 46)), int(rng.integers(18, 62)))]
        for i, (cy, cx) in enumerate(centres, start=1):
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(8, 13)) ** 2
            frames[k][disc] += 100
            labels[k][disc] = i
    return frames.clip(0, 255).astype(np.uint8), labels


def _per_series(labels: np.ndarray) -> np.ndarray:
    """The same instances numbered across the series, as `roi import` numbers them."""
    out, offset = np.zeros_like(labels), 0
    for k, plane in enumerate(labels):
        out[k][plane > 0] = plane[plane > 0] + offset
        offset += int(plane.max())
    return out


# --- touched frames: segmentations, not id values ---------------------------------------------------------

def test_ids_renumbered_per_series_touch_no_frame(tmp_path):
    _, per_frame = _discs(6, seed=1, pairs=True)
    per_series = _per_series(per_frame)
    assert (per_series != per_frame).any()  # the id values differ on most frames...
    assert touched_planes(per_series, per_frame) == []  # ...the segmentation on none
    with pytest.raises(QueueError, match="identical to the prediction"):
        Queue(tmp_path / "q").add(np.zeros(per_frame.shape, np.uint8), per_series, "ultrasound", organ="heart",
                                  prediction=per_frame)


def test_an_unedited_roiset_round_trip_touches_no_frame():
    _, predicted = _discs(5, seed=2, pairs=True)
    back = rois_to_labels(labels_to_rois(predicted, "heart"), predicted.shape)
    assert (back != predicted).any() and ((back > 0) == (predicted > 0)).all()
    assert touched_planes(back, predicted) == []


def test_one_pixel_a_split_a_merge_or_a_moved_border_touches_that_frame_alone():
    _, pred = _discs(6, seed=3, pairs=True)
    base = _per_series(pred)
    one_pixel, split, merge, border = (base.copy() for _ in range(4))
    y, x = np.argwhere(base[1] > 0)[0]
    one_pixel[1, y, x] = 0
    first = base[2] == base[2][base[2] > 0].min()
    split[2][first & (np.arange(SHAPE[1]) < 20)] = 999  # one disc cut in two, the foreground unchanged
    merge[3][base[3] > 0] = base[3][base[3] > 0].min()  # the two discs made one instance
    left, right = np.unique(base[4][base[4] > 0])
    border[4][(base[4] == left) & (np.arange(SHAPE[1]) > 25)] = right  # pixels moved between instances
    for corrected, frame in ((one_pixel, 1), (split, 2), (merge, 3), (border, 4)):
        assert touched_planes(corrected, pred) == [frame]


def test_micro_ct_labels_are_organs_and_a_relabel_is_a_correction():
    pred = np.zeros((3, 8, 8), np.uint8)
    pred[1, 2:5, 2:5] = 1  # heart
    fixed = pred.copy()
    fixed[1][pred[1] == 1] = 3  # it was the liver: same region, another organ
    assert touched_planes(fixed, pred, instances=False) == [1]
    assert touched_planes(fixed, pred) == []  # as instances the two are one segmentation


# --- the promotion guard ------------------------------------------------------------------------------------

@pytest.mark.parametrize("before, after, guard, promoted, why", [
    (HeldOut(0.0, 0, 3), HeldOut(0.8, 3, 3), 0.0, True, "finds organs on 3 of 3"),
    (HeldOut(0.5, 2, 3), HeldOut(0.0, 0, 3), 1.0, False, "finds nothing on the 3 held-out frames"),
    (HeldOut(0.7, 3, 3), HeldOut(0.6, 3, 3), 0.05, False, "worse on the held-out frames"),
    (HeldOut(0.7, 3, 3), HeldOut(0.6, 3, 3), 0.2, True, "0.700 -> 0.600"),
    (HeldOut(0.2, 1, MIN_EVIDENCE - 1), HeldOut(0.9, 1, MIN_EVIDENCE - 1), 1.0, False, "no evidence"),
    (HeldOut(None, 0, 0), HeldOut(None, 0, 0), 1.0, False, "no evidence: 0 held-out frames"),
])
def test_promotion_needs_evidence_and_a_version_that_finds_organs(before, after, guard, promoted, why):
    decided, verdict = promotion(before, after, guard)
    assert decided is promoted and why in verdict
    assert verdict.startswith("promoted" if promoted else "kept, not promoted")


def test_a_round_result_says_why_and_what_threshold():
    result = RoundResult("m-lab", version="2", held_out=2, dice_before=0.0, dice_after=0.0, with_organs=1,
                         threshold=ThresholdChoice(0.99, 0.6, "training"),
                         verdict="kept, not promoted (no evidence: 1 held-out frames with an organ, at least 2 needed)")
    assert "threshold 0.99 -> 0.6 (chosen on the corrections it trained on" in result.summary()
    assert "no evidence" in result.summary()
    metrics = result.metrics()
    assert metrics["threshold_before"] == 0.99 and metrics["threshold_after"] == 0.6 and metrics["held_out_with_organs"] == 1
    json.dumps(metrics)  # recorded as JSON with the version and the round


# --- rounds on a tiny U-Net whose threshold is 0.99 ---------------------------------------------------------

def _tiny_unet(folder, threshold=0.99) -> str:
    """A built-in-like U-Net folder (width 4, 64-pixel crops) whose label threshold is ``threshold``."""
    torch.manual_seed(0)
    config = UNetConfig(organ="heart", width=4, image_size=64, threshold=threshold, min_size=10)
    save_model(folder, UNet(config), config, {"training": {"settings": {"precision_target": None}}})
    return str(folder)


FAST = FineTuneSettings(epochs=12, steps_per_epoch=4, batch_size=8, lr=3e-3)


def test_a_round_chooses_the_threshold_by_the_rule_its_model_was_trained_with(tmp_path, monkeypatch):
    from napari_mousesegment.active.worker import choose_unet_threshold, read_threshold_rule

    old = _tiny_unet(tmp_path / "old")  # trained before the rule was recorded: F0.5 was the only rule
    config = UNetConfig(organ="heart", width=4, image_size=64)
    save_model(tmp_path / "new", UNet(config), config, {"training": {"settings": {"threshold_rule": "dice"}}})
    save_model(tmp_path / "f05", UNet(config), config, {"training": {"settings": {"threshold_rule": "f0.5"}}})
    assert read_threshold_rule(old) == "f0.5"
    assert read_threshold_rule(str(tmp_path / "new")) == "dice"
    assert read_threshold_rule(str(tmp_path / "f05")) == "f0.5"

    class Fixed:  # probabilities that fade outside a 50-pixel organ, as in the unit test of the rules
        def __init__(self):
            self.config = UNetConfig(organ="heart", width=4, image_size=64, threshold=0.99)

    masks = np.zeros((1, 1, 100), np.uint8)
    masks[..., :50] = 1
    prob = np.linspace(1.0, 0.0, 100, dtype=np.float32).reshape(1, 1, 100)
    prob[..., 40:50], prob[..., 50:60] = 0.45, 0.6
    import napari_mousesegment.inference.ultrasound as us

    monkeypatch.setattr(us, "predict_probabilities", lambda model, frames: prob)
    by_dice = choose_unet_threshold(Fixed(), prob, masks, "held-out", rule="dice")
    by_f05 = choose_unet_threshold(Fixed(), prob, masks, "held-out", rule="f0.5")
    assert by_dice.before == 0.99 and by_dice.after == 0.4
    assert by_f05.after >= 0.6


@pytest.mark.slow
def test_a_round_rechooses_the_threshold_and_its_promoted_version_finds_the_corrected_organs(home, tmp_path,
                                                                                              monkeypatch):
    import napari_mousesegment.active.worker as worker

    rules, choose = [], worker.choose_unet_threshold
    monkeypatch.setattr(worker, "choose_unet_threshold",
                        lambda *args, **kw: rules.append(kw.get("rule", args[-1])) or choose(*args, **kw))
    model = _tiny_unet(tmp_path / "tiny")
    frames, labels = _discs(12, seed=4)
    queue = Queue(tmp_path / "q")
    queue.add(frames, labels, "ultrasound", organ="heart", model=model)
    [result] = run_rounds(queue.root, settings=FAST, device="cpu", log=lambda line: None)

    assert rules == ["f0.5"]  # the rule its config records: none, so F0.5, as it was trained
    assert result.threshold.before == 0.99 and result.threshold.on == "held-out"
    assert result.threshold.after < 0.99  # chosen for the new version, not kept from the old one
    assert result.held_out == 3 and result.with_organs == 3 and result.found_after == 3
    assert result.promoted, result.summary()
    name = versions.lab_name(model)
    tuned, config, meta = load_unet(name)  # what the name serves now
    assert meta["version"] == result.version and config.threshold == result.threshold.after
    _, found = segment_frames(tuned, frames)  # the corrected frames it learned from
    assert all(found[k].max() >= 1 for k in range(len(frames)))
    assert dice(found > 0, labels > 0) > 0.7
    assert queue.rounds()[-1].metrics["threshold_after"] == config.threshold


def _erased(frames: np.ndarray, labels: np.ndarray, organless: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A prediction with a false organ on the ``organless`` frames, and the correction that erases it."""
    pred = labels.copy()
    corrected = labels.copy()
    for k in organless:
        corrected[k] = 0
        pred[k][10:22, 10:22] = 1
    pred[[k for k in range(len(labels)) if k not in organless]] = 0  # the organs were missed: corrected too
    return pred, corrected


def test_a_round_with_nothing_to_learn_from_is_not_promoted_and_says_why(home, tmp_path, capsys):
    model = _tiny_unet(tmp_path / "tiny")
    frames, labels = _discs(8, seed=5)
    pred, corrected = _erased(frames, labels, organless=[3, 7])  # the held-out frames (every 4th) hold no organ
    queue = Queue(tmp_path / "q")
    item = queue.add(frames, corrected, "ultrasound", organ="heart", model=model, prediction=pred)
    assert item.touched == list(range(8))
    assert main(["worker", "--queue", str(queue.root), "--once", "--epochs", "1", "--guard", "1",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "not promoted (no evidence: 0 held-out frames with an organ" in out
    name = versions.lab_name(model)
    assert versions.current(name) == "0"  # the last good version still serves
    last = queue.rounds()[-1]
    assert not last.promoted and "no evidence" in last.message and last.metrics["held_out_with_organs"] == 0
    assert last.metrics["threshold_chosen_on"] == "training"  # too few held-out organs: chosen as `train` does
    assert main(["queue", "status", "--queue", str(queue.root)]) == 0
    assert "no evidence" in capsys.readouterr().out


def test_a_round_on_one_corrected_frame_runs_and_is_not_promoted(home, tmp_path, capsys):
    """One touched frame leaves nothing to hold out: the round trains, publishes, keeps the old version."""
    model = _tiny_unet(tmp_path / "tiny")
    frames, labels = _discs(4, seed=6)
    pred = labels.copy()
    pred[2] = 0  # the organ was missed on one frame alone
    queue = Queue(tmp_path / "q")
    assert queue.add(frames, labels, "ultrasound", organ="heart", model=model, prediction=pred).touched == [2]
    assert main(["worker", "--queue", str(queue.root), "--once", "--epochs", "1", "--device", "cpu"]) == 0
    assert "not promoted (no evidence: 0 held-out frames with an organ" in capsys.readouterr().out
    last = queue.rounds()[-1]
    assert not last.promoted and last.metrics["held_out"] == 0
    assert versions.current(versions.lab_name(model)) == "0"


def test_a_version_that_finds_nothing_is_never_promoted(home, tmp_path, monkeypatch):
    from napari_mousesegment.training import finetune

    def blind(model, *args, **kwargs):  # a round whose training went wrong: nothing is ever organ
        import copy

        tuned = copy.deepcopy(model).eval()
        with torch.no_grad():
            tuned.head.bias.fill_(-50.0)
        return tuned

    monkeypatch.setattr(finetune, "fine_tune_unet", blind)
    model = _tiny_unet(tmp_path / "tiny", threshold=0.5)
    frames, labels = _discs(12, seed=6)
    queue = Queue(tmp_path / "q")
    queue.add(frames, labels, "ultrasound", organ="heart", model=model)
    [result] = run_rounds(queue.root, guard=1.0, device="cpu", log=lambda line: None)
    assert result.with_organs == 3 and result.found_after == 0 and not result.promoted
    assert "finds nothing on the 3 held-out frames" in result.verdict
    assert versions.current(versions.lab_name(model)) == "0"


def test_mosnet_thresholds_follow_only_the_organs_a_round_holds():
    from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig
    from napari_mousesegment.training.slices import SliceSet
    from napari_mousesegment.training.thresholds import refine_thresholds

    torch.manual_seed(0)
    config = MOSnetConfig(organs=["heart", "liver", "bone"], width=4, depth=2, image_size=16,
                          thresholds={"heart": 0.5, "liver": 0.7, "bone": 0.9})
    model = MOSnet(config).eval()
    n = 4
    masks = torch.zeros((n, 3, 16, 16), dtype=torch.bool)
    masks[:, 0, 4:12, 4:12] = True  # only the heart was corrected
    data = SliceSet(torch.rand((n, 1, 16, 16)).half(), masks, torch.ones((n, 3), dtype=torch.bool),
                    torch.zeros(n, dtype=torch.long), ["round"] * n)
    chosen, before, after = refine_thresholds(model, data, torch.device("cpu"))
    assert chosen["liver"] == 0.7 and chosen["bone"] == 0.9  # absent: kept as they were
    assert after >= before


# --- fine-tuning at the model's working scale, annealed over the round's steps --------------------------------

def test_fine_tuning_trains_at_the_working_scale_and_anneals_over_its_steps(monkeypatch):
    from napari_mousesegment.training import finetune

    seen, schedules = [], []
    real_crops, real_fit = finetune.crops, finetune.fit

    def spy_crops(frames, masks, *args, **kwargs):
        seen.append((tuple(frames.shape[-2:]), float(masks.max())))
        return real_crops(frames, masks, *args, **kwargs)

    def spy_fit(*args, schedule=None, **kwargs):
        schedules.append(schedule)
        return real_fit(*args, schedule=schedule, **kwargs)

    monkeypatch.setattr(finetune, "crops", spy_crops)
    monkeypatch.setattr(finetune, "fit", spy_fit)
    torch.manual_seed(0)
    model = UNet(UNetConfig(organ="heart", width=4, image_size=32, frame_size=40))
    frames, labels = _discs(4, seed=7)
    settings = FineTuneSettings(epochs=3, steps_per_epoch=2, batch_size=2)
    tuned = finetune.fine_tune_unet(model, frames, labels, settings)
    assert {shape for shape, _ in seen} == {(32, 40)}  # 64x80 frames at a longer side of 40
    assert all(0 < top <= 1 for _, top in seen)  # masks as foreground fractions
    [schedule] = schedules
    assert schedule.total_steps == 6 and schedule.steps == 6 and schedule.factor() == pytest.approx(schedule.floor)
    assert tuned is not model and tuned.config.frame_size == 40
    finetune.fine_tune_unet(model, frames, labels, FineTuneSettings(epochs=1, steps_per_epoch=1, anneal=False))
    assert schedules[-1] is None  # the constant rate stays reachable
    with pytest.raises(ValueError, match="warm-up"):
        FineTuneSettings(warmup=1.0)
