"""Hypothesis profiles for the fuzz tests, the seed files they mutate, the outcome counts, and for
the command suite a model store of its own (``home``) and models loaded before the clock runs (``warm``).

Profiles: ``ci`` (the default: few examples, derandomized so every run tries the same inputs) and
``long`` (``HYPOTHESIS_PROFILE=long``; ``FUZZ_EXAMPLES`` overrides its example count).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from . import harness

_COMMON = {"deadline": None, "database": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture]}
settings.register_profile("ci", max_examples=40, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")), **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_sessionfinish(session, exitstatus):
    """Add this run's outcome counts to $FUZZ_COUNTS, when set."""
    harness.write_counts()


@pytest.fixture(scope="session")
def seeds(tmp_path_factory) -> Path:
    """Small valid files of every format the readers take, written once by the project's writers."""
    import imageio.v3 as iio
    import nibabel

    from napari_mousesegment.io.composites import montage
    from napari_mousesegment.io.tiff import write_array, write_tiff

    folder = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 2000, (4, 6, 8)).astype(np.int16)
    write_tiff(folder / "volume.tif", volume, (0.5, 0.25, 0.25))
    affine = np.diag([0.25, 0.25, 0.5, 1.0])
    nifti = nibabel.Nifti1Image(volume.transpose(2, 1, 0), affine)
    nifti.header.set_xyzt_units("mm")
    nibabel.save(nifti, folder / "volume.nii")
    nibabel.save(nifti, folder / "volume.nii.gz")
    nibabel.save(nibabel.AnalyzeImage(volume.transpose(2, 1, 0), affine), folder / "volume.hdr")
    frames = rng.integers(0, 200, (6, 16, 16)).astype(np.uint8)  # no constant rows: only the gutters
    image = montage(frames, (2, 3), gap=8, gap_value=255)  # 8x8 blocks: gutters survive JPEG
    iio.imwrite(folder / "montage.png", image)
    iio.imwrite(folder / "montage.jpg", image, quality=100)
    labels = np.zeros((3, 12, 16), np.uint16)
    labels[1, 3:8, 4:10] = 1
    write_array(folder / "labels.tif", labels)
    write_array(folder / "image.tif", rng.integers(0, 255, (3, 12, 16)).astype(np.uint8))
    return folder


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """A folder for the mutated files (each test overwrites its own file name per example)."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture
def home(tmp_path_factory, monkeypatch) -> Path:
    """A model store of the test's own ($MOUSESEGMENT_HOME): models a command installs, publishes or
    breaks, and the traceback file of an unexpected error, stay out of the user's folders."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(root))
    return root


@pytest.fixture(scope="session")
def warm() -> None:
    """Import torch and load every built-in model once, outside the time limit: the first load
    takes seconds on a busy machine, which the command tests must not count as a hang."""
    from napari_mousesegment.store.load import load_model
    from napari_mousesegment.store.registry import BUILTIN

    for folder in sorted(BUILTIN.iterdir()):
        if (folder / "config.json").is_file():
            load_model(folder.name, "cpu")
