"""``roi``, ``models``, ``dataset``, ``train`` (argument checks only) and ``evaluate`` on bad inputs.

Oracles (issue 21): no traceback, no hang, one clean line for every refusal, and no wrong result:
``roi import`` of a zip without ROIs is refused (not an all-zero stack); a broken registry.json,
versions.json or user model never stops ``models list`` from listing the other models; a broken
model folder or a zip declaring gigabytes is never installed; absurd training values (width
100000, lr NaN, batch size 0, ...) are refused before any training.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st

from napari_mousesegment.io.tiff import write_array, write_stack

from ..conftest import shared_file
from .commands import (
    BROKEN_MODELS,
    FILE_CLASSES,
    bad_file,
    broken_model,
    examples,
    judge,
    refused,
    wrong,
)

pytestmark = pytest.mark.usefixtures("home")


def _labels(n: int = 3) -> np.ndarray:
    labels = np.zeros((n, 24, 32), np.uint16)
    labels[:, 4:12, 6:16] = 1
    labels[1, 14:20, 18:28] = 2
    return labels


def _huge_member(zip_path: Path, size: int = 3 << 30) -> Path:
    """Declare the first member ``size`` bytes long, in its local header and the central directory."""
    raw = bytearray(zip_path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature)
        raw[at + offset:at + offset + 4] = struct.pack("<I", size)
    zip_path.write_bytes(bytes(raw))
    return zip_path


# --- roi import / export ---------------------------------------------------------------------


@pytest.mark.parametrize("command", ["import", "export"])
@pytest.mark.parametrize("kind", FILE_CLASSES)
def test_roi_of_bad_files(command, kind, tmp_path, capsys):
    """A named pipe once hung `roi export` for ever; now every bad file is one clean line."""
    valid = (shared_file("imagej_rois", "RoiSet_35frames.zip").read_bytes() if command == "import"
             else write_array(tmp_path / "valid.tif", _labels()).read_bytes())
    path = bad_file(kind, tmp_path / ("rois.zip" if command == "import" else "labels.tif"), valid)
    out = tmp_path / ("out.tif" if command == "import" else "out.zip")
    argv = ["roi", command, path, "--out", out, *(["--shape", "35,240,320"] if command == "import" else [])]
    refused(argv, capsys, f"cli roi {command} files", (path.name,), f"the input is {kind}")
    assert not out.exists() or kind == "truncated", "a refused input left an output behind"


ZIPS = ("no members", "a text member", "a member declaring 3 GiB", "a folder member only")


@pytest.mark.parametrize("content", ZIPS)
def test_roi_import_of_odd_zips(content, tmp_path, capsys):
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if content == "a text member":
            zf.writestr("readme.txt", "not a ROI\n")
        elif content == "a member declaring 3 GiB":
            zf.writestr("0001-0001.roi", shared_file("imagej_rois", "polygon_circle.roi").read_bytes())
        elif content == "a folder member only":
            zf.writestr("rois/", "")
    if content == "a member declaring 3 GiB":
        _huge_member(path)
    argv = ["roi", "import", path, "--shape", "1,48,64", "--out", tmp_path / "out.tif"]
    refused(argv, capsys, "cli roi import zips", (path.name,), f"a zip with {content}: no ROI to import")


LABEL_CONTENTS = ("negative ids", "id 4e9", "float with NaN", "bool", "RGB frame", "4D", "all zero", "int8",
                  "one frame")


@pytest.mark.parametrize("content", LABEL_CONTENTS)
def test_roi_export_of_odd_labels(content, tmp_path, capsys):
    labels = _labels()
    labels = {
        "negative ids": lambda: labels.astype(np.int16) * -1,
        "id 4e9": lambda: labels.astype(np.uint32) * 2_000_000_000,
        "float with NaN": lambda: np.where(labels > 1, np.nan, labels).astype(np.float32),
        "bool": lambda: labels > 0,
        "RGB frame": lambda: np.stack([labels[0].astype(np.uint8)] * 3, -1),
        "4D": lambda: labels[None, None],
        "all zero": lambda: np.zeros_like(labels),
        "int8": lambda: labels.astype(np.int8),
        "one frame": lambda: labels[1],
    }[content]()
    path, out = write_array(tmp_path / "odd.tif", labels), tmp_path / "out.zip"
    argv = ["roi", "export", path, "--out", out]
    what = "cli roi export contents"
    if content in ("negative ids", "float with NaN", "4D"):
        refused(argv, capsys, what, (path.name,), f"labels holding {content}")
    elif judge(argv, capsys, what, (path.name,)) == "ok":
        from napari_mousesegment.io.roi import read_rois

        assert zipfile.is_zipfile(out)
        assert (len(read_rois(out)) > 0) == bool(np.any(labels)), "the RoiSet does not outline the labels"


@given(text=st.sampled_from(("", "missing.tif", "a-folder", "fifo", "frames.tif", "labels.zip")))
@examples(6)
def test_roi_import_like_values(tmp_path_factory, capsys, text):
    """``--like FRAMES`` takes the stack's shape from frames at hand; anything else is one line."""
    import os

    folder = tmp_path_factory.mktemp("like")
    write_stack(folder / "frames.tif", np.zeros((35, 240, 320), np.uint8))
    (folder / "a-folder").mkdir()
    os.mkfifo(folder / "fifo")
    shutil.copy(shared_file("imagej_rois", "RoiSet_35frames.zip"), folder / "labels.zip")
    like = folder / text if text else ""
    argv = ["roi", "import", folder / "labels.zip", "--out", folder / "out.tif", f"--like={like}"]
    names = ("--like", str(like), Path(text).name or "''")
    if text == "frames.tif":
        if judge(argv, capsys, "cli roi import --like", names) == "ok":
            assert tifffile.imread(folder / "out.tif").shape == (35, 240, 320)
    else:
        refused(argv, capsys, "cli roi import --like", names, f"--like {text!r}")


# --- models ----------------------------------------------------------------------------------


#: A model store as a hand edit, a half-written file or another version of the program leaves it.
STORE_DAMAGE = ("registry a list", "registry not JSON", "registry entry without url", "registry entry a number",
                "versions a list", "versions not JSON", "versions absurd current", "user model config a list",
                "user model width 100000", "user model threshold NaN", "user model without weights")


def _damage_store(home: Path, how: str) -> None:
    """Install a user model ``lab`` (a copy of the heart U-Net) and damage the store as ``how`` says."""
    from napari_mousesegment.store.registry import BUILTIN

    models = home / "models"
    shutil.rmtree(models, ignore_errors=True)
    shutil.copytree(BUILTIN / "unet-heart-synthetic", models / "lab")
    index = models / ".versions" / "lab" / "versions.json"
    index.parent.mkdir(parents=True)
    registry = models / "registry.json"
    if how.startswith("registry"):
        registry.write_text({"registry a list": "[1, 2]", "registry not JSON": '{"a": ',
                             "registry entry without url": '{"pub": {"sha256": "00"}}',
                             "registry entry a number": '{"pub": 5}'}[how])
    elif how.startswith("versions"):
        index.write_text({"versions a list": "[]", "versions not JSON": "{",
                          "versions absurd current": '{"current": "99", "versions": {"1": {}}, "promotions": []}'}[how])
    elif how == "user model without weights":
        (models / "lab" / "weights.safetensors").unlink()
    else:
        broken_model("unet-heart-synthetic", {"user model config a list": "config a list",
                                              "user model width 100000": "width 100000",
                                              "user model threshold NaN": "threshold NaN"}[how], models / "lab")


@pytest.mark.parametrize("how", STORE_DAMAGE)
def test_models_list_and_versions_survive_a_damaged_store(how, home, capsys):
    """The issue: a registry.json or versions.json that is a list broke `models list` for every model."""
    _damage_store(home, how)
    argv = ["models", "list"]
    outcome = judge(argv, capsys, "cli models list", ("registry.json", "versions.json", "config.json", "lab"))
    if outcome != "ok":
        wrong("cli models list", argv, f"{how}: `models list` no longer lists the built-in models", was=outcome)
    names = ("versions.json", "lab", "config.json")
    if how.startswith("versions"):
        refused(["models", "versions", "lab"], capsys, "cli models versions", names, f"{how}: versions listed")
    else:
        judge(["models", "versions", "lab"], capsys, "cli models versions", names)
    assert judge(["models", "versions", "mosnet-synthetic"], capsys, "cli models versions",
                 ("mosnet-synthetic", "versions.json")) == "ok", f"{how} broke `models versions` of another model"


@pytest.mark.parametrize("how", [*BROKEN_MODELS, "missing", "a file", "an empty folder", "a fifo", "zip truncated",
                                 "zip declaring 3 GiB", "zip of a broken model"])
def test_models_import_refuses_what_cannot_serve(how, tmp_path, capsys, home):
    import os

    source = tmp_path / "model"
    if how in BROKEN_MODELS:
        broken_model("unet-heart-synthetic", how, source)
    elif how == "a file":
        source.write_text("not a model\n")
    elif how == "an empty folder":
        source.mkdir()
    elif how == "a fifo":
        os.mkfifo(source)
    elif how.startswith("zip"):
        folder = broken_model("unet-heart-synthetic", "threshold NaN" if how == "zip of a broken model"
                              else "width 0", tmp_path / "m")
        if how != "zip of a broken model":  # a sound model: the zip itself is damaged
            from napari_mousesegment.store.registry import BUILTIN

            shutil.rmtree(folder)
            shutil.copytree(BUILTIN / "unet-heart-synthetic", folder)
        source = Path(shutil.make_archive(str(tmp_path / "model"), "zip", folder))
        if how == "zip truncated":
            source.write_bytes(source.read_bytes()[:len(source.read_bytes()) // 2])
        elif how == "zip declaring 3 GiB":
            _huge_member(source)
    argv = ["models", "import", source, "--name", "imported"]
    refused(argv, capsys, "cli models import", (source.name, "config.json", "weights.safetensors", "imported"),
            f"a source that is {how}")
    assert not (home / "models" / "imported").exists(), "a refused import left a model behind"


@pytest.mark.parametrize("how", ["zip declaring 3 GiB", "zip truncated", "not found", "wrong sha256"])
def test_models_import_from_url(how, served, tmp_path, capsys, home):
    """The issue: a URL model zip with a 3 GiB member (MemoryError), and temporary mousesegment-*
    folders left in the system temp folder by URL imports."""
    import hashlib
    import logging
    import sys
    import tempfile

    import pooch

    from napari_mousesegment.store.registry import BUILTIN

    for handler in pooch.get_logger().handlers:  # bound to the stderr of the test that imported pooch
        if isinstance(handler, logging.StreamHandler):
            handler.stream = sys.stderr  # (setStream would flush the closed one)
    www, url = served
    zipped = Path(shutil.make_archive(str(www / "model"), "zip", BUILTIN / "unet-heart-synthetic"))
    if how == "zip declaring 3 GiB":
        _huge_member(zipped)
    elif how == "zip truncated":
        zipped.write_bytes(zipped.read_bytes()[:len(zipped.read_bytes()) // 2])
    sha = hashlib.sha256(zipped.read_bytes()).hexdigest() if how != "wrong sha256" else "0" * 64
    source = f"{url}/{'missing' if how == 'not found' else 'model'}.zip"
    temp = Path(tempfile.gettempdir())
    before = {p.name for p in temp.glob("mousesegment-*")}
    argv = ["models", "import", source, "--name", "fetched", "--sha256", sha]
    refused(argv, capsys, "cli models import url", (source, "model.zip", "missing.zip", "--sha256", "fetched"),
            f"a URL whose zip is {how}", timeout=30)
    assert not (home / "models" / "fetched").exists(), "a refused import left a model behind"
    left = {p.name for p in temp.glob("mousesegment-*")} - before - {"mousesegment-fuzz-failures",
                                                                    "mousesegment-last-error.txt"}
    if left:
        wrong("cli models import url", argv, f"temporary folders left behind: {sorted(left)}", was="error")


@given(name=st.one_of(st.sampled_from(("", ".", "..", "../x", "registry.json", "a" * 101, "-x", "mosnet-synthetic",
                                       "a/b", " x")), st.text(max_size=10)))
@examples(20)
def test_models_import_names(tmp_path_factory, capsys, home, name):
    from napari_mousesegment.store.registry import BUILTIN

    if "\x00" in name:
        return
    argv = ["models", "import", BUILTIN / "unet-heart-synthetic", f"--name={name}"]
    outcome = judge(argv, capsys, "cli models import --name", ("--name", name or "''", "model name"))
    if outcome == "ok":
        installed = [p for p in (home / "models").iterdir() if not p.name.startswith(".")]
        if any(p.resolve().parent != (home / "models").resolve() for p in installed) or name in ("mosnet-synthetic",):
            wrong("cli models import --name", argv, f"installed as {name!r}", was=outcome)
        shutil.rmtree(home / "models")


@given(name=st.sampled_from(("nonexistent", "", "../..", "registry.json")),
       dest=st.sampled_from(("a file", "a non-empty folder", "under a file")), fmt=st.sampled_from(("store", "zip")))
@examples(12)
def test_models_export_targets(tmp_path_factory, capsys, name, dest, fmt):
    folder = tmp_path_factory.mktemp("export")
    (folder / "file.txt").write_text("keep me\n")
    (folder / "full").mkdir()
    (folder / "full" / "mine.txt").write_text("keep me\n")
    target = {"a file": folder / "file.txt", "a non-empty folder": folder / "full",
              "under a file": folder / "file.txt" / "x"}[dest]
    for model in (name, "unet-heart-synthetic"):
        argv = ["models", "export", model, target, f"--format={fmt}"]
        refused(argv, capsys, "cli models export", (model or "''", str(target), target.name, "--format", "DEST"),
                f"export of {model!r} to {dest}")
    assert (folder / "file.txt").read_text() == "keep me\n" and (folder / "full" / "mine.txt").exists()


# --- dataset, train, evaluate ----------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """Two tiny ultrasound series in the lab layout and a dataset folder of them."""
    from napari_mousesegment.cli import main
    from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series

    root = tmp_path_factory.mktemp("lab")
    for seed in range(3):
        write_us_series(root / "lab" / f"S{seed}", ultrasound_series(seed=seed, n_frames=4, frame_shape=(64, 96)))
    assert main(["dataset", "ultrasound", str(root / "lab"), "--out", str(root / "ds"), "--test", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> Path:
    """One tiny micro-CT dataset folder (two phantoms on a coarse grid)."""
    from napari_mousesegment.data.ct_dataset import write_ct_case
    from napari_mousesegment.data.phantom_ct import ct_phantom

    root = tmp_path_factory.mktemp("ct") / "native"
    for k in range(2):
        write_ct_case(root, f"p{k}", ct_phantom(k, "native", shape=(40, 32, 40), spacing=1.4))
    return root


@pytest.mark.parametrize("command", ["dataset ultrasound", "dataset ct"])
@pytest.mark.parametrize("kind", [*FILE_CLASSES, "empty folder"])
def test_dataset_of_bad_sources(command, kind, tmp_path, capsys):
    source = tmp_path / "source"
    if kind == "empty folder":
        source.mkdir()
    else:
        bad_file(kind, source, b"II*\x00" + bytes(200))
    argv = [*command.split(), source, "--out", tmp_path / "ds", *(["--condition", "native"] if "ct" in command else [])]
    refused(argv, capsys, f"cli {command} sources", (source.name,), f"the source is {kind}")
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir()), "a refused dataset was written"


DATASET_VALUES = {"--test": ("-1", "nan", "99", ""), "--val-fraction": ("nan", "-0.5", "1", "2", "inf", ""),
                  "--organs": ("kidneyz", "", ","), "--seed": ("-1", "nan", "1e300")}


@given(option=st.sampled_from(sorted(DATASET_VALUES)), data=st.data())
@examples(16)
def test_dataset_ultrasound_values(lab, tmp_path_factory, capsys, option, data):
    value = data.draw(st.sampled_from(DATASET_VALUES[option]), label="value")
    out = tmp_path_factory.mktemp("ds") / "ds"
    argv = ["dataset", "ultrasound", lab / "lab", "--out", out, f"{option}={value}"]
    names = (option, value or "''", "organ", "series", "kidneyz")
    if option == "--seed" and value == "-1" or option == "--organs" and value == "kidneyz":
        judge(argv, capsys, "cli dataset ultrasound values", names)  # a seed; a keyword no ROI has: maybe empty
    else:
        refused(argv, capsys, "cli dataset ultrasound values", names, f"{option} {value!r}")


#: Absurd training values: each must be refused before any training starts.
UNET_VALUES = {"--width": ("0", "-1", "100000"), "--image-size": ("0", "-1", "3", "100000"),
               "--lr": ("nan", "inf", "-1", "0"), "--batch-size": ("0", "-1"), "--alpha": ("nan", "-1", "2"),
               "--plateau-factor": ("nan", "0", "2"), "--finetune-lr": ("nan", "-1"), "--early-stop": ("-1",),
               "--precision-target": ("nan", "2", "-1"), "--threshold-rule": ("f1", ""), "--epochs": ("-1",),
               "--max-minutes": ("nan", "-1"),
               "--augment": ("rotation=nan", "scale=-1", "x=1", "noise=inf"), "--organ": ("", " ")}
MOSNET_VALUES = {"--width": ("0", "-1", "100000"), "--image-size": ("0", "-1", "100000"),
                 "--voxel-mm": ("0", "nan", "-1", "1e-300", "1000"), "--lr": ("nan", "inf", "-1"),
                 "--batch-size": ("0", "-1"), "--val-fraction": ("nan", "2", "-1"), "--slice-stride": ("0", "-1"),
                 "--epochs": ("-1",), "--max-minutes": ("nan", "-1")}


@pytest.mark.usefixtures("warm")
@given(model=st.sampled_from(("unet", "mosnet")), data=st.data())
@examples(12)
def test_train_refuses_absurd_values(lab, ct_data, tmp_path_factory, capsys, model, data):
    values = UNET_VALUES if model == "unet" else MOSNET_VALUES
    option = data.draw(st.sampled_from(sorted(values)), label="option")
    value = data.draw(st.sampled_from(values[option]), label="value")
    out = tmp_path_factory.mktemp("train") / "model"
    small = {"--width": "4", "--image-size": "32", "--epochs": "1", "--max-minutes": "0.05", "--batch-size": "2"}
    small.pop(option, None)
    if model == "unet":
        argv = ["train", "unet", "--organ", "heart", "--data", lab / "ds", "--finetune-epochs", "0"]
        if option == "--organ":
            argv = argv[:2] + argv[4:]
    else:
        argv = ["train", "mosnet", "--data", ct_data, "--voxel-mm", "1.4"]
        if option == "--voxel-mm":
            argv = argv[:4]
    argv += ["--out", out, "--device", "cpu", *[a for k, v in small.items() for a in (k, v)], f"{option}={value}"]
    refused(argv, capsys, f"cli train {model} values", (option, value or "''", "organ"), f"{option} {value!r}",
            timeout=60)  # an accepted value trains (for at most 3 s, on a busy machine longer): wrong, not a hang
    assert not (out / "weights.safetensors").exists(), "a refused training wrote a model"


@pytest.mark.usefixtures("warm")
@pytest.mark.parametrize("command", ["ct", "ultrasound"])
@pytest.mark.parametrize("bad", ["model config a list", "model threshold NaN", "model without weights",
                                 "data missing", "data a file", "data an empty folder", "out a file"])
def test_evaluate_bad_inputs(command, bad, lab, ct_data, tmp_path, capsys):
    builtin = "mosnet-synthetic" if command == "ct" else "unet-heart-synthetic"
    model, data, out = builtin, (ct_data if command == "ct" else lab / "ds"), tmp_path / "report"
    if bad.startswith("model"):
        model = str(broken_model(builtin, {"model config a list": "config a list", "model threshold NaN":
                                           "threshold NaN", "model without weights": "weights missing"}[bad],
                                 tmp_path / "model"))
    elif bad == "data missing":
        data = tmp_path / "nothing"
    elif bad == "data a file":
        data = tmp_path / "data.txt"
        data.write_text("x")
    elif bad == "data an empty folder":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        out = tmp_path / "report.txt"
        out.write_text("keep me\n")
    argv = ["evaluate", command, "--model", model if command == "ct" else f"heart={model}", "--data", data,
            "--out", out, "--device", "cpu"]
    names = (Path(str(model)).name, "config.json", "weights.safetensors", Path(data).name, out.name, "--out")
    refused(argv, capsys, f"cli evaluate {command}", names, bad)
    if bad == "out a file":
        assert out.read_text() == "keep me\n"
