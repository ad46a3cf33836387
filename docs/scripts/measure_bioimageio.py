"""Export each shipped model to bioimage.io, time it, run bioimageio.core's test, and compare what a
consumer computes from the package (TorchScript + the package's own pre/postprocessing) with our
predictor, on 5 synthetic frames (U-Nets); MOSnet packages are checked by bioimageio's own test
against our predictor's slice probabilities.

    python docs/scripts/measure_bioimageio.py   # needs the bioimageio extra
"""
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")
from bioimageio.core import test_model

from napari_mousesegment.data.phantom_us import ultrasound_series
from napari_mousesegment.inference.ultrasound import predict_probabilities
from napari_mousesegment.jobs.bioimageio import export_bioimageio
from napari_mousesegment.models.packaged import PackagedConfig, PackagedModel
from napari_mousesegment.store.load import load_unet

out = Path(tempfile.mkdtemp())
frames = np.concatenate([ultrasound_series(seed=s, n_frames=1).frames for s in range(700, 705)])
for name in ("unet-heart-synthetic", "unet-liver-synthetic", "unet-placenta-synthetic", "mosnet-synthetic"):
    t = time.perf_counter(); zips = export_bioimageio(name, out / name); t_exp = time.perf_counter() - t
    for z in zips:
        t = time.perf_counter(); status = test_model(z).status; t_test = time.perf_counter() - t
        line = f"{z.name}: export {t_exp:.1f} s, {z.stat().st_size/1e6:.2f} MB, bioimageio test {status} in {t_test:.1f} s"
        if name.startswith("unet"):
            consumer = PackagedModel(z, PackagedConfig()).probabilities(frames)
            ours = predict_probabilities(load_unet(name)[0], frames)
            line += f"; consumer vs our predictor on 5 frames 240x320: max |dp| {np.abs(consumer-ours).max():.2e}"
        print(line, flush=True)
