"""The streaming micro-CT predictor against the naive whole-volume baseline of the benchmark."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from benchmarks.baseline import naive_predict_volume

from napari_mousesegment.data.phantom_ct import ct_phantom
from napari_mousesegment.inference.ct import iter_fused_labels, iter_labels, linear_taps, predict_volume
from napari_mousesegment.io import limits
from napari_mousesegment.models.fold import inference_copy
from napari_mousesegment.models.mosnet import MOSnet, MOSnetConfig
from napari_mousesegment.models.unet import UNet, UNetConfig
from napari_mousesegment.organs import CT_ORGANS
from napari_mousesegment.store.load import load_model


@pytest.fixture(scope="module")
def shipped():
    return load_model("mosnet-synthetic")[0]


@pytest.fixture(scope="module")
def scan():
    return ct_phantom(250, "native", shape=(48, 56, 72))


# Identity, finer and coarser z (slabs of several taps), anisotropic in-plane, and a near-identity
# grid; each case runs the slow whole-volume baseline, so the list is kept to the distinct ones.
@pytest.mark.parametrize("spacing, batch", [((0.28, 0.28, 0.28), 8), ((0.14, 0.28, 0.28), 3),
                                            ((0.5, 0.3, 0.22), 1), ((0.7, 0.28, 0.28), 4),
                                            ((0.28, 0.2805, 0.2805), 4)])
def test_streaming_matches_the_whole_volume_baseline(shipped, scan, spacing, batch):
    pred = predict_volume(shipped, scan.image, spacing, "native", batch_size=batch, keep_probabilities=True)
    labels, probabilities = naive_predict_volume(shipped, scan.image, spacing, "native")
    assert pred.labels.shape == scan.image.shape and pred.probabilities.shape == probabilities.shape
    assert np.abs(pred.probabilities.astype(np.float32) - probabilities).max() < 2e-3
    assert (pred.labels == labels).mean() > 0.999
    assert len(np.unique(labels)) > 4  # the comparison is over real organs, not background alone


def test_streaming_on_another_plane_matches_the_baseline(scan):
    torch.manual_seed(0)
    model = MOSnet(MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32, plane="coronal"))
    for module in model.modules():  # non-trivial batch-norm statistics, so folding is exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    pred = predict_volume(model, scan.image, (0.3, 0.28, 0.25), "contrast", batch_size=4, keep_probabilities=True)
    _, probabilities = naive_predict_volume(model, scan.image, (0.3, 0.28, 0.25), "contrast")
    assert np.abs(pred.probabilities.astype(np.float32) - probabilities).max() < 2e-3


@pytest.mark.parametrize("spacing, batch", [((0.28, 0.28, 0.28), 3), ((0.5, 0.3, 0.22), 1), ((0.14, 0.28, 0.28), 5)])
def test_streaming_a_2_5d_model_matches_the_baseline(scan, spacing, batch):
    """Each slab reads its slices' neighbours too: at slab edges, scan edges and any z spacing."""
    torch.manual_seed(0)
    model = MOSnet(MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32, context=2)).eval()
    with torch.no_grad():  # a random net's output barely follows its input: make it follow every channel
        model.encoder[0][0].weight.mul_(30)
    pred = predict_volume(model, scan.image, spacing, "native", batch_size=batch, keep_probabilities=True)
    _, probabilities = naive_predict_volume(model, scan.image, spacing, "native")
    assert np.abs(pred.probabilities.astype(np.float32) - probabilities).max() < 2e-3
    farther = MOSnet(replace(model.config, context_step=5))  # the same weights, other neighbours
    farther.load_state_dict(model.state_dict())
    other = predict_volume(farther.eval(), scan.image, spacing, "native", batch_size=batch, keep_probabilities=True)
    assert np.abs(other.probabilities.astype(np.float32) - probabilities).max() > 0.01  # neighbours count


@pytest.mark.parametrize("spacing, batch", [((0.28, 0.28, 0.28), 3), ((0.5, 0.3, 0.22), 2)])
def test_streaming_a_model_that_reads_slice_positions_matches_the_baseline(scan, spacing, batch):
    """Each slab's slices get their own place along the scan's model grid, as in training."""
    torch.manual_seed(0)
    model = MOSnet(MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32, position=True)).eval()
    with torch.no_grad():  # make the output follow the position channel strongly
        model.encoder[0][0].weight[:, -1].mul_(300)
    pred = predict_volume(model, scan.image, spacing, "native", batch_size=batch, keep_probabilities=True)
    _, probabilities = naive_predict_volume(model, scan.image, spacing, "native")
    assert np.abs(pred.probabilities.astype(np.float32) - probabilities).max() < 2e-3
    blind = MOSnet(replace(model.config, position=False))  # the same image weights, no position
    blind.load_state_dict({k: v[:, :1] if k == "encoder.0.0.weight" else v for k, v in model.state_dict().items()})
    other = predict_volume(blind.eval(), scan.image, spacing, "native", batch_size=batch, keep_probabilities=True)
    assert np.abs(other.probabilities.astype(np.float32) - probabilities).max() > 0.01  # the position counts


def test_organ_thresholds_decide_the_vote_as_in_the_baseline(shipped, scan):
    model = MOSnet(replace(shipped.config, thresholds={"liver": 0.97, "intestine": 0.3, "lungs": 0.8}))
    model.load_state_dict(shipped.state_dict())
    model.eval()
    pred = predict_volume(model, scan.image, (0.28, 0.28, 0.28), "native")
    labels, _ = naive_predict_volume(model, scan.image, (0.28, 0.28, 0.28), "native")
    plain = predict_volume(shipped, scan.image, (0.28, 0.28, 0.28), "native", threshold=0.5).labels
    assert (pred.labels == labels).mean() > 0.999
    liver, gut = 1 + shipped.config.organs.index("liver"), 1 + shipped.config.organs.index("intestine")
    assert (pred.labels == liver).sum() < (plain == liver).sum() and (pred.labels == gut).sum() > (plain == gut).sum()
    everywhere = predict_volume(model, scan.image, (0.28, 0.28, 0.28), "native", threshold=0.5).labels
    assert np.array_equal(everywhere, plain)  # an explicit threshold applies to every organ


def test_a_scan_thinner_than_one_model_voxel_is_refused(shipped, scan):
    with pytest.raises(ValueError, match="too thin"):
        predict_volume(shipped, scan.image[:1], (0.1, 0.28, 0.28), "native")


def test_voxels_far_coarser_than_the_model_s_are_refused_before_resampling(shipped, scan):
    """8 mm voxels would be upsampled 29x per axis (minutes of work on a CPU): a wrong --spacing."""
    with pytest.raises(ValueError, match="coarser than the model's 0.28 mm"):
        predict_volume(shipped, scan.image, (8.0, 8.0, 8.0), "native")


def test_labels_alone_equal_labels_with_probabilities(shipped, scan):
    lean = predict_volume(shipped, scan.image, (0.14, 0.28, 0.28), "native")
    full = predict_volume(shipped, scan.image, (0.14, 0.28, 0.28), "native", keep_probabilities=True)
    assert lean.probabilities is None and np.array_equal(lean.labels, full.labels)


def test_predictor_reads_a_memory_mapped_volume(shipped, scan, tmp_path):
    mapped = np.lib.format.open_memmap(tmp_path / "scan.npy", mode="w+", dtype=np.int16, shape=scan.image.shape)
    mapped[:] = scan.image
    mapped.flush()
    again = np.load(tmp_path / "scan.npy", mmap_mode="r")
    assert np.array_equal(predict_volume(shipped, again, scan.spacing, "native").labels,
                          predict_volume(shipped, scan.image, scan.spacing, "native").labels)


def test_linear_taps_match_ndimage_zoom():
    from scipy import ndimage as ndi

    line = np.random.default_rng(0).random(17).astype(np.float32)
    for n_out in (5, 17, 40):
        low, high, weight = linear_taps(n_out, len(line))
        expected = ndi.zoom(line, n_out / len(line), order=1, mode="nearest", grid_mode=True)
        assert np.allclose(line[low] * (1 - weight) + line[high] * weight, expected, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: MOSnet(MOSnetConfig(organs=["heart", "liver"], width=4, depth=2, image_size=32)),
    lambda: UNet(UNetConfig(organ="heart", arch="deep", width=4)),
])
def test_inference_copy_folds_batch_norm_and_keeps_outputs(make):
    torch.manual_seed(1)
    model = make()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    x = torch.rand(3, 1, 32, 32)
    args = (x, torch.tensor([0, 1, 0])) if isinstance(model, MOSnet) else (x,)
    with torch.inference_mode():
        expected = model(*args)[0] if isinstance(model, MOSnet) else model(*args)
        got = fast.segment(*args) if isinstance(model, MOSnet) else fast(*args)
    assert torch.allclose(expected, got, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _two_plane_model() -> MOSnet:
    """A random axial+sagittal MOSnet whose planes disagree, with one organ's threshold of its own."""
    torch.manual_seed(0)
    model = MOSnet(MOSnetConfig(organs=list(CT_ORGANS), width=4, depth=2, image_size=32,
                                plane="axial+sagittal", thresholds={"liver": 0.6})).eval()
    with torch.no_grad():
        model.encoder[0][0].weight.mul_(30)
    return model


def test_a_multi_planar_model_averages_its_planes_probabilities(scan):
    model = _two_plane_model()
    spacing = (0.3, 0.28, 0.25)
    pred = predict_volume(model, scan.image, spacing, "native", batch_size=3, keep_probabilities=True)
    each = []
    for plane in ("axial", "sagittal"):
        single = MOSnet(replace(model.config, plane=plane))
        single.load_state_dict(model.state_dict())
        each.append(naive_predict_volume(single.eval(), scan.image, spacing, "native")[1])
    assert np.abs(each[0] - each[1]).max() > 0.01  # the planes disagree, so the mean is a real fusion
    mean = (each[0] + each[1]) / 2
    assert np.abs(pred.probabilities.astype(np.float32) - mean).max() < 2e-3
    cut = np.log(np.asarray(model.config.organ_thresholds()) / (1 - np.asarray(model.config.organ_thresholds())))
    margin = np.log(mean / (1 - mean)) - cut[:, None, None, None]
    expected = np.where(margin.max(0) > 0, margin.argmax(0) + 1, 0)
    assert (pred.labels == expected).mean() > 0.999
    with pytest.raises(ValueError, match="one plane at a time"):
        next(iter_labels(model, scan.image, spacing, "native"))
    with pytest.raises(ValueError, match="not coronal"):
        next(iter_labels(model, scan.image, spacing, "native", plane="coronal"))


def test_fused_labels_wait_on_disk_and_stream_as_predict_volume_makes_them(scan, tmp_path):
    """With ``scratch`` the planes' sums live in a file there, removed when the labels are out or
    the caller stops early; the labels and probabilities are predict_volume's, slab by slab."""
    model = _two_plane_model()
    spacing = (0.3, 0.28, 0.25)
    whole = predict_volume(model, scan.image, spacing, "native", batch_size=3, keep_probabilities=True)
    slabs = iter_fused_labels(model, scan.image, spacing, "native", batch_size=3, keep_probabilities=True,
                              scratch=tmp_path)
    first = next(slabs)
    held = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(held) == 1 and held[0].stat().st_size == 4 * len(CT_ORGANS) * scan.image.size
    parts = [first, *slabs]
    assert [start for start, _, _ in parts] == list(range(0, len(scan.image), 3))
    assert np.array_equal(np.concatenate([labels for _, labels, _ in parts]), whole.labels)
    assert np.array_equal(np.concatenate([probs for _, _, probs in parts], axis=1), whole.probabilities)
    assert list(tmp_path.iterdir()) == []
    early = iter_fused_labels(model, scan.image, spacing, "native", batch_size=3, scratch=tmp_path)
    next(early)
    early.close()
    assert list(tmp_path.iterdir()) == []


def test_fused_labels_refuse_a_full_disk_in_one_line_before_any_network_runs(scan, tmp_path, monkeypatch):
    model = _two_plane_model()
    monkeypatch.setattr(limits.shutil, "disk_usage", lambda _: type("Usage", (), {"free": 1000})())
    with pytest.raises(limits.TooLarge, match="disk space; .* has 1.0 kB free") as err:
        next(iter_fused_labels(model, scan.image, (0.3, 0.28, 0.25), "native", scratch=tmp_path))
    assert "summed probabilities of a scan of (48, 56, 72) voxels" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def full(fd, offset, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(limits.os, "posix_fallocate", full)
    with pytest.raises(limits.TooLarge, match="No space left on device"):
        next(iter_fused_labels(model, scan.image, (0.3, 0.28, 0.25), "native", scratch=tmp_path))
    assert list(tmp_path.iterdir()) == []
