"""The `learning` section of bench.py: what a fixed CPU budget buys, ours against the plain U-Net.

For each budget (``--learning-minutes``, default 2, 6 and 12):

- **Real ultrasound** (``--hc18``, default ``../shared/data/hc18_dev``; HC18, van den Heuvel et al.
  2018, CC BY 4.0): `train unet` on series 00 and 01 (``--image-size 256 --test 0``), the plain
  U-Net of ``reference_unet.py`` on the same frames for the same minutes, both scored on series 02
  (pooled pixel Dice).
- **Phantom micro-CT from held-out anatomy** (``--atlas``, default ``../shared/data/rosenhain``):
  ``experiments/heldout_anatomy.py`` with mouse_b held out, MOSnet (width 16) and the plain U-Net,
  native and contrast big-organ means.

Training samples per second come from each run itself: ours from its history (validation and
checkpoints included), the plain U-Net's from its step count. The fraction of the matmul rate is
those samples/s times the convolution FLOPs of one sample's training step of that very network
(ours at the width it trained with; 3x its forward pass),
over the fp32 matmul rate measured in the same run (ours trains in bf16 where the CPU has it, so
its fraction can pass what fp32 allows). The whole section at 2, 6 and 12 minutes takes about
100 minutes on 2 cores (the 2-minute budget alone: 14); ``--quick`` runs 3 seconds on synthetic
series instead, to smoke-test it. The micro-CT phantoms are drawn once and shared by the budgets.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HELD_OUT_MAP = "mouse_b_organs"


def _us_data(args: argparse.Namespace, scratch: Path) -> tuple[Path, str, int]:
    """(data folder in the hc18_dev layout, organ, image size): HC18, or small synthetic series for --quick."""
    if not args.quick:
        return args.hc18, "head", 256
    from napari_mousesegment.data.phantom_us import ultrasound_series, write_us_series

    data = scratch / "us"
    (data / "truth").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        series = ultrasound_series(seed=i, n_frames=4, frame_shape=(64, 96))
        write_us_series(data / f"series_{i:02d}", series)
        tifffile.imwrite(data / "truth" / f"series_{i:02d}.tif", (series.labels["heart"] > 0).astype(np.uint8))
    return data, "heart", 64


def _ours_samples_per_s(model_dir: Path, lab: Path) -> float:
    """Training samples per second over the run: every epoch's batches over its wall seconds.

    An epoch's batch count is the one `train unet` used: its training frames (the lab's frames less
    the validation frames its config records), repeated up to at least MIN_EPOCH_STEPS batches."""
    from napari_mousesegment.io.series import read_series
    from napari_mousesegment.training.distributed import Ranks
    from napari_mousesegment.training.unet import epoch_batches

    training = json.loads((model_dir / "config.json").read_text())["training"]
    frames = sum(len(read_series(folder, []).frames) for folder in sorted(lab.glob("series_*")))
    n_train = frames - sum(len(v) for v in training.get("val_frames", {}).values())
    batch = training["settings"]["batch_size"]
    samples = sum(len(b) for b in epoch_batches(n_train, batch, 0, 0, Ranks()))
    with open(model_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r["seconds"]) for r in rows)
    return len(rows) * samples / seconds if seconds else float("nan")


def _step_flops(net: torch.nn.Module, image_shape: tuple[int, int]) -> int:
    """Convolution FLOPs of one sample's training step of ``net`` (3x the forward)."""
    from benchmarks.measure import conv_flops

    net = net.eval()
    x = torch.zeros(1, 1, *image_shape)
    with torch.no_grad():
        return 3 * conv_flops(lambda: net(x))


def _ultrasound(args: argparse.Namespace, minutes: float, scratch: Path, data: Path, organ: str,
                size: int) -> dict:
    from benchmarks import learning_us

    lab = learning_us.lab_folder(data, ["00", "01"], scratch / "lab")
    tests = learning_us.held_out(data, ["02"], organ)
    model_dir = scratch / f"ours_{minutes:g}"
    learning_us.train_ours(lab, model_dir, minutes, [], organ, size)
    ours = learning_us.score_ours(model_dir, tests)["02"]
    plain = learning_us.plain(lab, minutes, tests, organ=organ, size=size)
    return {"ours_dice": ours["dice"], "plain_dice": plain["02"]["dice"],
            "ours_samples_per_s": _ours_samples_per_s(model_dir, lab), "plain_samples_per_s": plain["samples_per_s"],
            "ours_model": _ours_model(model_dir)}


def _ours_model(model_dir: Path) -> torch.nn.Module:
    """The network `train unet` trained (its own width and architecture), for its FLOPs."""
    from napari_mousesegment.models.folder import load_folder

    return load_folder(model_dir)[0]


def _ct(args: argparse.Namespace, minutes: float, scratch: Path) -> dict:
    """Held-out anatomy at one budget; every budget trains on the same phantoms, drawn once."""
    out = scratch / f"ct_{minutes:g}"
    out.mkdir(parents=True, exist_ok=True)
    (scratch / "ct_data").mkdir(exist_ok=True)
    if not (out / "data").exists():  # heldout_anatomy.py draws into OUT/data unless it is there already
        (out / "data").symlink_to(scratch / "ct_data", target_is_directory=True)
    subprocess.run([sys.executable, str(ROOT / "experiments" / "heldout_anatomy.py"), "--atlas", str(args.atlas),
                    "--hold-out", HELD_OUT_MAP, "--minutes", str(minutes), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    result = json.loads((out / "heldout_anatomy.json").read_text())
    return {f"{who}_{key}": result[name][key] for who, name in (("ours", "mosnet"), ("plain", "plain_unet"))
            for key in ("native_big_mean", "contrast_big_mean")}


def learning(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict:
    """Dice after each budget, ours against the plain U-Net, with samples/s and the matmul fraction."""
    from benchmarks.measure import matmul_rate

    scratch.mkdir(parents=True, exist_ok=True)
    budgets = [0.05] if args.quick else [float(m) for m in args.learning_minutes.split(",")]
    data, organ, size = _us_data(args, scratch)
    have_us = (data / "truth").is_dir()
    have_ct = not args.quick and Path(args.atlas).exists()
    peak = matmul_rate(device, 1024 if args.quick else 2048)["peak"]
    out: dict = {"budgets_min": ",".join(f"{m:g}" for m in budgets), "matmul_gflops": peak / 1e9}
    if have_us:
        from benchmarks.reference_unet import PlainUNet

        plain_flops = _step_flops(PlainUNet(), (size, size))
    for minutes in budgets:
        if have_us:
            us = _ultrasound(args, minutes, scratch, data, organ, size)
            # ours trains on 540x800 frames at the working scale, 173x256, padded to the U-Net's multiple of 8
            ours_flops = _step_flops(us.pop("ours_model"), (176, 256) if not args.quick else (64, 96))
            for key, value in us.items():
                out[f"us_{minutes:g}min_{key}"] = value
            out[f"us_{minutes:g}min_ours_matmul_fraction"] = us["ours_samples_per_s"] * ours_flops / peak
            out[f"us_{minutes:g}min_plain_matmul_fraction"] = us["plain_samples_per_s"] * plain_flops / peak
        if have_ct:
            for key, value in _ct(args, minutes, scratch).items():
                out[f"ct_{minutes:g}min_{key}"] = value
    if not have_us:
        out["us_skipped"] = f"no {data}/truth"
    if not have_ct:
        out["ct_skipped"] = "--quick" if args.quick else f"no {args.atlas}"
    return out


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--learning-minutes", default="2,6,12", help="learning: CPU-minute budgets (2,6,12)")
    parser.add_argument("--hc18", type=Path, default=SHARED / "hc18_dev", help="learning: HC18 in the lab layout")
    parser.add_argument("--atlas", type=Path, default=SHARED / "rosenhain", help="learning: real label maps")
