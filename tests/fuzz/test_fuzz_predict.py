"""``predict ct`` and ``predict ultrasound`` on bad files, odd contents, broken models and bad values.

Oracles (issue 21): no traceback, no hang, one clean line for every refusal, and no wrong result:
a micro-CT "scan" that cannot be HU (uint8, uint16, bool, int8, all one value, no air, RGB, NaN)
is refused without ``--force``; a voxel size outside 1 um .. 10 mm, an unknown condition or organ,
a broken model folder are refused; what is accepted writes its labels.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st

from napari_mousesegment.io.tiff import write_array, write_stack, write_tiff

from .commands import BROKEN_MODELS, FILE_CLASSES, bad_file, broken_model, examples, judge, refused
from .test_fuzz_cli import BAD_NUMBERS

pytestmark = pytest.mark.usefixtures("warm", "home")
SPACING = (0.28, 0.28, 0.28)
CT = ["--model", "mosnet-synthetic", "--condition", "native", "--device", "cpu"]
US = ["--organs", "heart", "--model", "heart=unet-heart-synthetic", "--device", "cpu"]


def _scan(seed: int = 0, shape=(8, 24, 24)) -> np.ndarray:
    """A small int16 volume in HU: air, soft tissue and some bone."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1200, shape).astype(np.int16)


def _frames(seed: int = 0, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, 48, 64)).astype(np.uint8)


def _wrote_labels(out, stem: str) -> bool:
    return any((out / stem).glob("*labels*")) if (out / stem).is_dir() else False


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    return write_tiff(tmp_path_factory.mktemp("scan") / "scan.tif", _scan(), SPACING)


@pytest.fixture(scope="module")
def frames_file(tmp_path_factory):
    return write_stack(tmp_path_factory.mktemp("frames") / "frames.tif", _frames())


@pytest.mark.parametrize("command", ["ct", "ultrasound"])
@pytest.mark.parametrize("kind", FILE_CLASSES)
def test_predict_of_bad_files(command, kind, scan_file, frames_file, tmp_path, capsys):
    valid = scan_file if command == "ct" else frames_file
    path = bad_file(kind, tmp_path / valid.name, valid.read_bytes())
    argv = ["predict", command, path, "--out", tmp_path / "out", *(CT if command == "ct" else US)]
    refused(argv, capsys, f"cli predict {command} files", (path.name,), f"the input is {kind}")


#: Volumes that are not micro-CT scans in HU, and what predict ct must do without --force.
SCAN_CONTENTS = {
    "uint8": "refuse", "uint16": "refuse", "bool": "refuse", "int8": "refuse", "all zero": "refuse",
    "all one value": "refuse", "no air": "refuse", "RGB image": "refuse", "float with NaN": "refuse",
    "4D": "refuse", "float HU": "judge", "one slice": "judge", "tiny": "judge",
}


def _scan_content(content: str, seed: int) -> tuple[np.ndarray, bool]:
    """The volume, and whether it is an RGB image (written without a voxel size: --spacing is given)."""
    scan = _scan(seed)
    rng = np.random.default_rng(seed)
    if content in ("uint8", "uint16", "int8"):
        info = np.iinfo(content)
        return rng.integers(max(info.min, 0) if content != "int8" else info.min, info.max, scan.shape).astype(content), False
    return {
        "bool": lambda: (scan > 0, False),
        "all zero": lambda: (np.zeros_like(scan), False),
        "all one value": lambda: (np.full_like(scan, -200), False),
        "no air": lambda: (rng.integers(0, 800, scan.shape).astype(np.int16), False),
        "RGB image": lambda: (rng.integers(0, 255, (8, 30, 3)).astype(np.uint8), True),  # 8 "slices" of 30x3
        "float with NaN": lambda: (np.where(scan > 1000, np.nan, scan).astype(np.float32), False),
        "4D": lambda: (np.stack([scan, scan]), False),
        "float HU": lambda: (scan.astype(np.float32), False),
        "one slice": lambda: (scan[:1], False),
        "tiny": lambda: (scan[:2, :2, :2], False),
    }[content]()


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("content", list(SCAN_CONTENTS))
def test_predict_ct_refuses_what_is_not_hu(content, force, tmp_path, capsys):
    volume, rgb = _scan_content(content, 0)
    path = tmp_path / "odd.tif"
    plain = rgb or volume.dtype in (np.bool_, np.int8) or volume.shape[0] < 3 or volume.ndim != 3  # not ImageJ
    if rgb:
        tifffile.imwrite(path, volume, photometric="rgb")
    elif plain:
        write_array(path, volume)
    else:
        write_tiff(path, volume, SPACING)
    out = tmp_path / "out"
    argv = ["predict", "ct", path, "--out", out, *CT, *(["--spacing", "0.28"] if plain else []),
            *(["--force"] if force else [])]
    what = "cli predict ct contents" + (" --force" if force else "")
    if SCAN_CONTENTS[content] == "refuse" and not force:
        refused(argv, capsys, what, (path.name, "--hu", "--force"), f"a {content} volume is not a scan in HU")
    elif judge(argv, capsys, what, (path.name, "--hu", "--force", "--spacing")) == "ok":
        assert _wrote_labels(out, "odd"), "predict ct exited 0 but wrote no labels"


def test_predict_ct_refuses_a_nifti_without_voxel_size(tmp_path, capsys):
    """The issue's NIfTI with pixdim 0: volumes 46 times too large, exit 0."""
    import nibabel

    image = nibabel.Nifti1Image(_scan().transpose(2, 1, 0), np.diag([0.28, 0.28, 0.28, 1.0]))
    image.header["pixdim"][1:4] = 0
    nibabel.save(image, tmp_path / "pixdim0.nii.gz")
    argv = ["predict", "ct", tmp_path / "pixdim0.nii.gz", "--out", tmp_path / "out", *CT]
    refused(argv, capsys, "cli predict ct pixdim", ("pixdim0.nii.gz",), "a NIfTI with voxel size 0")


#: --spacing values that parse as numbers but are no mouse's voxel size.
ABSURD_SPACINGS = ("1000", "1e-300", "0.00001", "100,0.1,0.1", "11")


@given(text=st.one_of(st.sampled_from(BAD_NUMBERS + ABSURD_SPACINGS), st.text(max_size=12)))
@examples(30)
def test_predict_ct_spacing_values(tmp_path_factory, capsys, text):
    """A TIFF with no voxel size: whatever --spacing says is refused, or sane and used."""
    folder = tmp_path_factory.mktemp("spacing")
    write_array(folder / "raw.tif", _scan())
    argv = ["predict", "ct", folder / "raw.tif", "--out", folder / "out", *CT, f"--spacing={text}"]
    names = ("--spacing", "spacing", "voxel size", "raw.tif")
    try:
        values = [float(v) for v in text.split(",")]
        sane = len(values) in (1, 3) and all(0.001 <= v <= 10 for v in values)
    except ValueError:
        sane = False
    if not sane:
        refused(argv, capsys, "cli predict ct --spacing", names, f"voxel size {text!r} mm")
    elif judge(argv, capsys, "cli predict ct --spacing", names) == "ok":
        assert _wrote_labels(folder / "out", "raw")


#: Option values of predict ct: "refuse" (exit 0 would be a wrong result) or "judge" (either is fine).
OPTION_VALUES = {
    "--condition": {"": "refuse", "kidneyz": "refuse", "NATIVE": "refuse", "native ": "judge",
                    "contrast,native": "refuse"},
    "--model": {"": "refuse", "nonexistent": "refuse", "../..": "refuse", "/": "refuse",
                "mosnet-synthetic/": "judge", "unet-heart-synthetic": "refuse"},
    "--batch-size": {"0": "refuse", "-1": "refuse", "nan": "refuse", "1e9": "refuse", "": "refuse"},
    "--hu": {"": "refuse", "nan": "refuse", "1,1": "refuse", "0,-1": "refuse", "a,b": "refuse", "inf,0": "refuse",
             "1e300,-1e300": "refuse"},
    "--series": {"": "judge", "1.2.3": "judge"},
}


@given(option=st.sampled_from(sorted(OPTION_VALUES)), data=st.data())
@examples(30)
def test_predict_ct_option_values(scan_file, tmp_path_factory, capsys, option, data):
    value = data.draw(st.sampled_from(sorted(OPTION_VALUES[option])), label="value")
    out = tmp_path_factory.mktemp("options") / "out"
    base = {"--model": "mosnet-synthetic", "--condition": "native"}
    base.pop(option, None)
    argv = ["predict", "ct", scan_file, "--out", out, "--device", "cpu",
            *[a for k, v in base.items() for a in (k, v)], f"{option}={value}"]
    names = (option, value or "''", scan_file.name, "condition", "model")
    if OPTION_VALUES[option][value] == "refuse":
        refused(argv, capsys, "cli predict ct options", names, f"{option} {value!r}")
    elif judge(argv, capsys, "cli predict ct options", names) == "ok":
        assert _wrote_labels(out, "scan")


@pytest.mark.parametrize("command", ["ct", "ultrasound"])
@pytest.mark.parametrize("how", BROKEN_MODELS)
def test_predict_with_a_broken_model(command, how, scan_file, frames_file, tmp_path, capsys):
    model = broken_model("mosnet-synthetic" if command == "ct" else "unet-heart-synthetic", how, tmp_path / "model")
    if command == "ct":
        argv = ["predict", "ct", scan_file, "--out", tmp_path / "out", "--model", model, "--condition", "native",
                "--device", "cpu"]
    else:
        argv = ["predict", "ultrasound", frames_file, "--out", tmp_path / "out", "--organs", "heart",
                "--model", f"heart={model}", "--device", "cpu"]
    refused(argv, capsys, f"cli predict {command} model", (str(model), "config.json", "weights.safetensors",
                                                              "--model"), f"a model folder with {how}")


FRAME_CONTENTS = {
    "float with NaN": "refuse", "4D": "refuse", "one row": "judge", "RGB frames": "judge", "bool": "judge",
    "int8": "judge", "uint16": "judge", "all zero": "judge", "one 2D frame": "judge", "tiny": "judge",
}


@pytest.mark.parametrize("content", list(FRAME_CONTENTS))
def test_predict_ultrasound_of_odd_frames(content, tmp_path, capsys):
    frames = _frames()
    frames = {
        "float with NaN": lambda: np.where(frames > 250, np.nan, frames).astype(np.float32),
        "4D": lambda: frames[None],
        "one row": lambda: frames[:, :1],
        "RGB frames": lambda: np.stack([frames] * 3, -1),
        "bool": lambda: frames > 100,
        "int8": lambda: (frames.astype(np.int16) - 128).astype(np.int8),
        "uint16": lambda: frames.astype(np.uint16) * 200,
        "all zero": lambda: np.zeros_like(frames),
        "one 2D frame": lambda: frames[0],
        "tiny": lambda: frames[:1, :2, :2],
    }[content]()
    path = write_array(tmp_path / "odd.tif", frames)
    out = tmp_path / "out"
    argv = ["predict", "ultrasound", path, "--out", out, *US]
    what = "cli predict ultrasound contents"
    if FRAME_CONTENTS[content] == "refuse":
        refused(argv, capsys, what, (path.name,), f"frames holding {content}")
    elif judge(argv, capsys, what, (path.name,)) == "ok":
        labels = tifffile.imread(out / "odd" / "heart_labels.tif")
        assert labels.shape[-2:] == frames.shape[-2:] if frames.ndim in (2, 3) else True


#: Option values of predict ultrasound: "refuse" or "judge", as for predict ct.
US_OPTIONS = {
    "--organs": {"kidneyz": "refuse", "": "refuse", ",": "refuse", "heart,kidneyz": "refuse", " ": "refuse"},
    "--model": {"": "refuse", "heart=": "refuse", "=unet-heart-synthetic": "refuse",
                "kidneyz=unet-heart-synthetic": "refuse", "heart=nonexistent": "refuse",
                "heart=mosnet-synthetic": "refuse", "liver=unet-heart-synthetic": "judge"},
    "--grid": {"0x0": "refuse", "-1x2": "refuse", "999999x1": "judge", "x": "refuse", "2x3x4": "refuse"},
}


@given(option=st.sampled_from(sorted(US_OPTIONS)), data=st.data())
@examples(24)
def test_predict_ultrasound_option_values(frames_file, tmp_path_factory, capsys, option, data):
    value = data.draw(st.sampled_from(sorted(US_OPTIONS[option])), label="value")
    out = tmp_path_factory.mktemp("us-options") / "out"
    base = {"--organs": "heart", "--model": "heart=unet-heart-synthetic"}
    base.pop(option, None)
    argv = ["predict", "ultrasound", frames_file, "--out", out, "--device", "cpu",
            *[a for k, v in base.items() for a in (k, v)], f"{option}={value}"]
    names = (option, value or "''", frames_file.name, "organ", "model", "kidneyz", "grid")
    if US_OPTIONS[option][value] == "refuse":
        refused(argv, capsys, "cli predict ultrasound options", names, f"{option} {value!r}")
    elif judge(argv, capsys, "cli predict ultrasound options", names) == "ok":
        assert (out / "frames" / "heart_labels.tif").is_file()
