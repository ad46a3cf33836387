"""Real-ultrasound learning: our `train unet` recipe against the plain U-Net, same frames, same minutes.

Measured on HC18 fetal heads in the lab layout (``../shared/data/hc18_dev``; van den Heuvel et al.
2018, CC BY 4.0). Some series train, others are held out and scored with their truth masks::

    python benchmarks/learning_us.py --data ../shared/data/hc18_dev --train 00,01 --test 02 \\
        --minutes 12 --out /tmp/hc18 [--skip-plain] [-- EXTRA train unet FLAGS]

Ours is the contract command itself, run as a subprocess:
``mousesegment train unet --organ head --data LAB --arch standard --image-size 256 --test 0
--max-minutes M --device cpu``, then the model's own prediction path (threshold, hole filling,
small-object removal). The plain U-Net (``reference_unet.py``) trains in the same process
afterwards, for the same minutes. Pixel Dice is pooled over every frame of a held-out series.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_unet import predict_plain, square, train_plain  # noqa: E402

from napari_mousesegment.data.us_dataset import load_us_items  # noqa: E402
from napari_mousesegment.inference.ultrasound import segment_frames, to_unit  # noqa: E402
from napari_mousesegment.io.series import read_series  # noqa: E402
from napari_mousesegment.models.folder import load_folder  # noqa: E402

ORGAN = "head"
PLAIN_SIZE = 256


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pooled pixel Dice, precision and recall, and the mean per-frame Dice."""
    p, t = pred > 0, truth > 0
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    per_frame = [2 * (a & b).sum() / max(a.sum() + b.sum(), 1) for a, b in zip(p, t)]
    return {"dice": 2 * tp / max(2 * tp + fp + fn, 1), "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "frame_dice": float(np.mean(per_frame))}


def lab_folder(data: Path, names: list[str], out: Path) -> Path:
    """A lab-layout folder of links to the chosen series (the data is read in place, never copied)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = out / f"series_{name}"
        if not link.exists():
            link.symlink_to((data / f"series_{name}").resolve())
    return out


def held_out(data: Path, names: list[str], organ: str = ORGAN) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frames, truth masks) of each held-out series."""
    return [(n, read_series(data / f"series_{n}", [organ]).frames, tifffile.imread(data / "truth" / f"series_{n}.tif"))
            for n in names]


def train_ours(lab: Path, out: Path, minutes: float, extra: list[str], organ: str = ORGAN,
               image_size: int = 256) -> dict:
    """Run the contract command; its log goes to OUT.log."""
    command = [sys.executable, "-m", "napari_mousesegment.cli", "train", "unet", "--organ", organ, "--data", str(lab),
               "--out", str(out), "--arch", "standard", "--image-size", str(image_size), "--test", "0",
               "--max-minutes", str(minutes), "--device", "cpu", *extra]
    started = time.monotonic()
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return {"command": " ".join(command[1:]), "seconds": round(time.monotonic() - started, 1)}


def score_ours(model_dir: Path, tests: list) -> dict[str, dict]:
    model = load_folder(model_dir)[0]
    return {name: scores(segment_frames(model, frames)[1], truth) for name, frames, truth in tests}


def plain(lab: Path, minutes: float, tests: list, seed: int = 0, organ: str = ORGAN, size: int = PLAIN_SIZE) -> dict:
    """The plain U-Net on every frame of the lab series, scored on the held-out ones."""
    items = load_us_items([lab], organ, lab_split="train")
    frames = np.concatenate([to_unit(i.frames) for i in items])
    masks = np.concatenate([i.labels[organ] > 0 for i in items]).astype(np.float32)
    images = square(torch.from_numpy(frames)[:, None], size)
    targets = square(torch.from_numpy(masks)[:, None], size, masks=True)
    model, steps = train_plain(images, targets, minutes, seed)
    out = {"steps": steps, "samples_per_s": round(steps * 8 / (minutes * 60), 2)}
    for name, test_frames, truth in tests:
        prob = predict_plain(model, square(torch.from_numpy(to_unit(test_frames))[:, None], size),
                             test_frames.shape[-2:])
        out[name] = scores(prob[:, 0] > 0.5, truth)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/hc18_dev")
    parser.add_argument("--train", default="00,01", help="series numbers to train on")
    parser.add_argument("--test", default="02", help="series numbers held out")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("extra", nargs="*", help="more `train unet` flags, after --")
    args = parser.parse_args(argv)
    train, test = args.train.split(","), args.test.split(",")
    lab = lab_folder(args.data, train, args.out / "lab")
    tests = held_out(args.data, test)
    result: dict = {"train": train, "test": test, "minutes": args.minutes, "extra": args.extra}
    if not args.skip_ours:
        model_dir = args.out / "ours"
        result["ours"] = {**train_ours(lab, model_dir, args.minutes, args.extra), **score_ours(model_dir, tests)}
        print(json.dumps({"ours": result["ours"]}, indent=1), flush=True)
    if not args.skip_plain:
        result["plain"] = plain(lab, args.minutes, tests)
        print(json.dumps({"plain": result["plain"]}, indent=1), flush=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
