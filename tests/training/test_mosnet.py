import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_mousesegment.data.ct_dataset import read_ct_dataset, write_ct_case
from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.inference.ct import predict_volume
from napari_mousesegment.models.mosnet import MOSnetConfig
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.store.load import load_mosnet
from napari_mousesegment.training.mosnet import TrainSettings, train_mosnet
from napari_mousesegment.training.slices import build_slices, split_by_scan

SHAPE = (40, 32, 40)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    for seed in range(3):
        write_ct_case(root / "native", f"n{seed}", ct_phantom(seed, "native", shape=SHAPE),
                      unannotated=("kidneys", "bladder"))
        write_ct_case(root / "contrast", f"c{seed}", ct_phantom(10 + seed, "contrast", shape=SHAPE))
    return [root / "native", root / "contrast"]


def _config():
    return MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32)


def test_slices_carry_condition_and_alpha(datasets):
    sets = [read_ct_dataset(d) for d in datasets]
    slices = build_slices(sets, _config(), stride=4)
    organs = list(CT_ORGANS)
    native = slices.condition == 0
    assert slices.images.shape[1:] == (1, 32, 32) and float(slices.images.max()) <= 1
    assert not slices.annotated[native][:, organs.index("kidneys")].any()
    assert slices.annotated[~native][:, organs.index("kidneys")].all()
    assert slices.organ_masks[:, organs.index("liver")].any()


def test_slice_positions_follow_the_scan_in_training_and_in_corrected_slices(datasets):
    """The last channel is each slice's place along the scan (0 first, 1 last), the same for a
    whole scan's slices and for the touched slices of a correction."""
    from napari_mousesegment.training.slices import corrected_slices

    config = replace(_config(), position=True)
    slices = build_slices([read_ct_dataset(datasets[0])], config, stride=4)
    first = [i for i, s in enumerate(slices.scan) if s == slices.scan[0]]
    place = slices.images[first, 1].float()
    assert slices.images.shape[1] == 2 and torch.equal(place.amin((1, 2)), place.amax((1, 2)))
    assert np.allclose(place[:, 0, 0].numpy(), np.arange(0, SHAPE[0], 4) / (SHAPE[0] - 1), atol=1e-3)
    scan = ct_phantom(0, "native", shape=SHAPE)
    images, _ = corrected_slices(scan.image, scan.labels, scan.spacing, [0, 13, SHAPE[0] - 1], config)
    assert np.allclose(images[:, -1, 0, 0].numpy(), [0, 13 / (SHAPE[0] - 1), 1], atol=1e-3)
    assert torch.equal(images[:, :1].half(), build_slices([read_ct_dataset(datasets[0])], _config(),
                                                          {str(datasets[0]): ["n0"]}).images[[0, 13, 39]])
    # Slices twice the model's voxel apart: input slice t is model slice 2t + 0.5 of 2n, as the predictor reads it.
    images, _ = corrected_slices(scan.image, scan.labels, (0.56, 0.28, 0.28), [0, 13, SHAPE[0] - 1], config)
    expected = np.clip((np.array([0, 13, SHAPE[0] - 1]) * 2 + 0.5) / (2 * SHAPE[0] - 1), 0, 1)
    assert np.allclose(images[:, -1, 0, 0].numpy(), expected, atol=1e-3)
    with pytest.raises(ValueError, match="axial slices only"):
        replace(config, plane="coronal")


def test_the_position_channel_is_jittered_never_warped_swapped_or_rebuilt():
    """batch_loss keeps the position out of the geometric and intensity augmentation and the
    appearance swap (the channel stays one value per slice, near its own), and the reconstruction
    target is the image alone."""
    from napari_mousesegment.training.appearance import Swap
    from napari_mousesegment.training.augment import AugmentSettings
    from napari_mousesegment.training.mosnet import batch_loss

    class Capture(torch.nn.Module):
        def forward(self, image, condition):
            self.seen = image
            return torch.zeros(len(image), 2, *image.shape[2:], requires_grad=True), torch.zeros(len(image), 1,
                                                                                                  *image.shape[2:])

    image = torch.rand(6, 2, 16, 16)
    image[:, 1] = torch.linspace(0, 1, 6).view(6, 1, 1)
    masks = torch.zeros(6, 2, 16, 16)
    masks[:, 0, 4:12, 4:12] = 1
    batch = (image, masks, torch.ones(6, 2, dtype=torch.bool), torch.zeros(6, dtype=torch.long))
    settings = AugmentSettings(rotation=30, scale=0.3, translation=0.2, elastic=0.05, brightness=0.2, contrast=0.3,
                               noise=0.1, crop=0.2, position=0.05)
    swap = Swap(torch.tensor([[0.3, 0.0]]), 1.0)
    net = Capture()
    step = batch_loss(net, batch, torch.ones(2), 1.0, settings, torch.Generator().manual_seed(0), swap=swap,
                      channels=1)
    place = net.seen[:, 1]
    assert torch.equal(place.amin((1, 2)), place.amax((1, 2)))  # not warped, cropped or noised
    assert float((place[:, 0, 0] - image[:, 1, 0, 0]).abs().max()) <= 0.1 + 1e-6
    assert not torch.equal(net.seen[:, :1], image[:, :1])  # while the image was augmented
    # the reconstruction target is the augmented image's one channel, not the position with it
    assert step.parts["recon"] == pytest.approx(float(net.seen[:, :1].square().mean()), rel=1e-5)


def test_position_jitter_keeps_each_slice_s_channel_constant_and_in_range():
    from napari_mousesegment.training.augment import jitter_positions

    position = torch.linspace(0, 1, 64).view(64, 1, 1, 1).expand(64, 1, 8, 8)
    moved = jitter_positions(position, 0.05, torch.Generator().manual_seed(0))
    assert torch.equal(moved.amin((2, 3)), moved.amax((2, 3))) and float(moved.min()) >= 0 and float(moved.max()) <= 1
    shift = (moved - position)[:, 0, 0, 0].abs()
    assert float(shift.max()) > 0.02 and float(shift.max()) <= 0.05 + 0.1 * 0.5 + 1e-6


def test_split_is_by_scan_and_per_dataset():
    scans = [f"native/n{i}" for i in range(10)] + [f"contrast/c{i}" for i in range(3)]
    train, val = split_by_scan(scans, 0.1, seed=1)
    assert not set(train) & set(val) and sorted(train + val) == sorted(scans)
    assert {v.split("/")[0] for v in val} == {"native", "contrast"}


def test_training_learns_checkpoints_and_resumes(datasets, tmp_path):
    settings = TrainSettings(epochs=3, batch_size=8, lr=3e-3, device="cpu", slice_stride=2, val_fraction=0.34)
    out = tmp_path / "model"
    result = train_mosnet(datasets, out, _config(), settings, log=lambda _: None, progress=False)
    history = json.loads((out / "checkpoint" / "state.json").read_text())["history"]
    assert result["epochs_run"] == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert (out / "history.csv").read_text().count("\n") == 4 and (out / "curves.png").stat().st_size > 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["val_scans"] and not set(meta["training"]["val_scans"]) & set(meta["training"]["train_scans"])
    assert "kidneys" not in meta["annotated"]["native"] and "kidneys" in meta["annotated"]["contrast"]
    augment = meta["training"]["settings"]["augment"]  # the default: slices augmented, never flipped
    assert augment["rotation"] == 10 and augment["hflip"] is False and augment["noise"] == 0
    assert set(meta["thresholds"]) == set(CT_ORGANS) and all(0 < t < 1 for t in meta["thresholds"].values())
    assert load_mosnet(out)[1].thresholds == meta["thresholds"]
    with pytest.raises(FileExistsError):
        train_mosnet(datasets, out, _config(), settings, log=lambda _: None, progress=False)
    more = TrainSettings(**{**vars(settings), "epochs": 4, "resume": True})
    resumed = train_mosnet(datasets, out, _config(), more, log=lambda _: None, progress=False)
    assert resumed["epochs_run"] == 4  # history kept, one more epoch run
    rows = json.loads((out / "checkpoint" / "state.json").read_text())["history"]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # the budget schedule of the new length (4 epochs), three quarters spent: not the old end's floor
    assert rows[3]["lr"] == pytest.approx(3e-3 * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * 0.70 / 0.95))))
    other = TrainSettings(**{**vars(more), "epochs": 5, "seed": 9})
    with pytest.raises(ValueError, match="split differs"):
        train_mosnet(datasets, out, _config(), other, log=lambda _: None, progress=False)
    # A 2D run's checkpoint config is written as before the 2.5D fields existed (older ones resume),
    # and a 2.5D model never resumes from it.
    assert "context" not in json.loads((out / "checkpoint" / "config.json").read_text())
    wider = TrainSettings(**{**vars(more), "epochs": 5})
    with pytest.raises(ValueError, match="different model config.*context: checkpoint None, now 1"):
        train_mosnet(datasets, out, replace(_config(), context=1), wider, log=lambda _: None, progress=False)


def test_max_minutes_stops_cleanly_keeps_weights_and_resume_reruns_the_epoch(datasets, tmp_path):
    settings = TrainSettings(epochs=2, batch_size=8, device="cpu", slice_stride=4, max_minutes=1e-4, val_fraction=0.34)
    result = train_mosnet(datasets, tmp_path / "m", _config(), settings, log=lambda _: None, progress=False)
    assert result["stopped"].startswith("--max-minutes") and result["epochs_run"] == 1
    _, config, _ = load_mosnet(tmp_path / "m")
    assert config.width == 4
    state = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == -1 and state["history"][0]["complete"] is False  # epoch 1 not done
    again = TrainSettings(**{**vars(settings), "max_minutes": None, "resume": True})
    resumed = train_mosnet(datasets, tmp_path / "m", _config(), again, log=lambda _: None, progress=False)
    rows = json.loads((tmp_path / "m" / "checkpoint" / "state.json").read_text())["history"]
    assert resumed["stopped"] is None and [r["epoch"] for r in rows] == [1, 2]
    assert all(r["complete"] for r in rows)


def test_predict_volume_returns_the_input_grid(datasets, tmp_path):
    config = _config()
    from napari_mousesegment.models.mosnet import MOSnet

    model = MOSnet(config).eval()
    scan = ct_phantom(5, "native", shape=SHAPE)
    fine = np.repeat(scan.image, 2, axis=0)  # 0.14 mm along z: resampled with the spacing, then back
    pred = predict_volume(model, fine, (0.14, 0.28, 0.28), "native", batch_size=7, keep_probabilities=True)
    assert pred.labels.shape == fine.shape and pred.probabilities.shape == (9, *fine.shape)
    with pytest.raises(ValueError, match="NaN"):
        predict_volume(model, np.full(SHAPE, np.nan), (0.28,) * 3, "native")
    with pytest.raises(ValueError, match="unknown"):
        predict_volume(model, scan.image, (0.28,) * 3, "arterial")
    with pytest.raises(ValueError, match="3D"):
        predict_volume(model, scan.image[0], (0.28,) * 3, "native")
    with pytest.raises(InterruptedError):
        predict_volume(model, scan.image, (0.28,) * 3, "native", should_stop=lambda: True)


def test_labels_stay_aligned_with_images_when_resized():
    import torch

    from napari_mousesegment.models.preprocess import fit_square

    mask = torch.zeros(1, 1, 60, 60)
    mask[..., 20:40, 10:30] = 1.0
    image = fit_square(mask, 32, "bilinear")[0, 0]
    label = fit_square(mask, 32, "nearest-exact")[0, 0]

    def centre(a):
        ys, xs = torch.nonzero(a > 0.5, as_tuple=True)
        return float(ys.float().mean()), float(xs.float().mean())

    for got, want in zip(centre(label), centre(image)):
        assert abs(got - want) < 0.2  # plain "nearest" was half a pixel off


def test_organ_sampling_dice_term_and_coronal_plane_train_and_are_recorded(datasets, tmp_path):
    """The short-budget options: organ-by-organ slice draws, the Dice and exclusion terms (their own
    history columns), the appearance swap (its measured shifts recorded) and a coronal model, whose
    prediction comes back on the scan's grid."""
    from napari_mousesegment.cli import main

    out = tmp_path / "model"
    code = main(["train", "mosnet", "--data", str(datasets[0]), "--data", str(datasets[1]), "--out", str(out),
                 "--width", "4", "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--slice-stride", "2",
                 "--val-fraction", "0.34", "--sampling", "organs", "--dice-weight", "1", "--exclusion-weight", "0.5",
                 "--appearance-swap", "0.5", "--plane", "coronal",
                 "--device", "cpu"])
    assert code == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["plane"] == "coronal"
    assert meta["training"]["settings"]["sampling"] == "organs" and meta["training"]["settings"]["dice_weight"] == 1.0
    assert meta["training"]["settings"]["exclusion_weight"] == 0.5
    assert meta["training"]["settings"]["appearance_swap"] == 0.5
    swaps = meta["training"]["appearance_shifts_hu"]  # contrast lends the native scans kidneys and bladder
    assert len(swaps) == 1 and swaps[0].startswith("contrast slices: ") and "liver -" in swaps[0]
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert "train_dice" in header and "train_exclusion" in header
    model, _, _ = load_mosnet(out)
    scan = ct_phantom(7, "contrast", shape=SHAPE)
    assert predict_volume(model, scan.image, scan.spacing, "contrast").labels.shape == SHAPE


def test_a_multi_planar_model_trains_on_each_plane_and_predicts_on_the_scan_grid(datasets, tmp_path):
    from napari_mousesegment.cli import main

    sets = [read_ct_dataset(d) for d in datasets]
    axial = build_slices(sets[:1], _config(), stride=2)
    both = build_slices(sets[:1], replace(_config(), plane="axial+coronal"), stride=2)
    # 40 axial (z) and 32 coronal (y) slices per scan, every second one
    assert len(both.scan) == len(axial.scan) + 3 * 16 and len(axial.scan) == 3 * 20
    out = tmp_path / "model"
    assert main(["train", "mosnet", "--data", str(datasets[0]), "--data", str(datasets[1]), "--out", str(out),
                 "--width", "4", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--slice-stride", "2",
                 "--val-fraction", "0.34", "--plane", "axial+coronal", "--device", "cpu"]) == 0
    model, _, meta = load_mosnet(out)
    assert meta["plane"] == "axial+coronal" and model.config.planes == ["axial", "coronal"]
    scan = ct_phantom(7, "native", shape=SHAPE)
    assert predict_volume(model, scan.image, scan.spacing, "native").labels.shape == SHAPE


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="sampling"):
        TrainSettings(sampling="rare")
