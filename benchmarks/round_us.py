"""An active-learning round on real ultrasound, through the CLI a lab uses.

A head U-Net is trained on one HC18 series (A). It predicts a second series (B); 8 of B's frames,
corrected (their expert masks), are queued with that prediction, and ``worker --once`` runs a
round. Dice on a third series (C), never seen, is scored before and after, with each version's own
threshold, and on the corrected frames themselves. Nothing to learn from: the prediction queued as
its own correction must be refused, and a round on one corrected frame (no held-out evidence) must
not be promoted. With ``--control``, the same round is also run from the same model on 8 frames of
A itself (already seen): what the extra steps alone buy, so that the gain of the round on B can be
told from it::

    python benchmarks/round_us.py --out /tmp/round --base-minutes 3 [--control] [--data ../shared/data/hc18_dev]

Data: HC18 (van den Heuvel et al. 2018, CC BY 4.0), read in place.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_us import ORGAN, held_out, lab_folder, scores  # noqa: E402

MODEL = "head-hc18-round"
CORRECTED = 8


def cli(*args: str, env: dict, refused: bool = False) -> str:
    """Run a command; its output, or with ``refused`` its one-line error (the command must fail)."""
    done = subprocess.run([sys.executable, "-m", "napari_mousesegment.cli", *args], env=env, capture_output=True,
                          text=True)
    if refused:
        if not done.returncode:
            raise SystemExit(f"mousesegment {' '.join(args)} was expected to refuse, and did not")
        return done.stderr.strip().splitlines()[-1]
    if done.returncode:
        raise SystemExit(f"mousesegment {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def current_scores(env: dict, tests: list) -> dict:
    """Each test series scored with the current version of MODEL (in a child with the same home)."""
    code = ("import json,sys;sys.path.insert(0,'benchmarks');import numpy as np,tifffile;"
            "from napari_mousesegment.store.load import load_model;"
            "from napari_mousesegment.inference.ultrasound import segment_frames;from learning_us import scores;"
            f"m=load_model({MODEL!r})[0];out={{}}\n"
            "for name,path,truth in json.loads(sys.argv[1]):\n"
            "    f=tifffile.imread(path);out[name]=scores(segment_frames(m,f)[1],tifffile.imread(truth))\n"
            "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(tests)], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/hc18_dev")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--series", default="00,03,04", help="A (trains the model), B (corrected), C (scored)")
    parser.add_argument("--base-minutes", type=float, default=3.0)
    parser.add_argument("--round-epochs", type=int, default=None, help="worker --epochs (default: the worker's)")
    parser.add_argument("--control", action="store_true",
                        help="also run the round, from the same model, on 8 frames of A (already trained on)")
    args = parser.parse_args(argv)
    a, b, c = args.series.split(",")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MOUSESEGMENT_HOME": str(out / "home")}
    base = out / "base"
    if not (base / "config.json").is_file():
        cli("train", "unet", "--organ", ORGAN, "--data", str(lab_folder(args.data, [a], out / "lab_a")),
            "--out", str(base), "--image-size", "256", "--test", "0", "--max-minutes", str(args.base_minutes),
            "--device", "cpu", env=env)
    cli("models", "import", str(base), "--name", MODEL, "--force", env=env)
    # B's frames: prediction and truth; C: the unseen series.
    (_, frames_b, truth_b), (_, frames_c, truth_c) = held_out(args.data, [b, c])
    stack = {"B": (frames_b, truth_b), "C": (frames_c, truth_c)}
    pick = np.linspace(0, len(frames_b) - 1, CORRECTED).round().astype(int)
    stack["B_corrected"] = (frames_b[pick], (truth_b[pick] > 0).astype(np.uint16))
    files = []
    for name, (frames, truth) in stack.items():
        tifffile.imwrite(out / f"{name}_frames.tif", frames)
        tifffile.imwrite(out / f"{name}_truth.tif", truth)
        files.append([name, str(out / f"{name}_frames.tif"), str(out / f"{name}_truth.tif")])
    before = current_scores(env, files)
    cli("predict", "ultrasound", str(out / "B_frames.tif"), "--organs", ORGAN, "--model", f"{ORGAN}={MODEL}",
        "--out", str(out / "pred_b"), "--device", "cpu", env=env)
    predicted = tifffile.imread(next((out / "pred_b").rglob(f"*{ORGAN}*labels*.tif")))
    tifffile.imwrite(out / "corr_pred.tif", predicted[pick].astype(np.uint16))
    queue = out / "queue"
    cli("queue", "add", "--queue", str(queue), "--image", str(out / "B_corrected_frames.tif"), "--labels",
        str(out / "B_corrected_truth.tif"), "--prediction", str(out / "corr_pred.tif"), "--kind", "ultrasound",
        "--organ", ORGAN, "--model", MODEL, env=env)
    worker_flags = ["--device", "cpu", *(["--epochs", str(args.round_epochs)] if args.round_epochs else [])]
    round_log = cli("worker", "--queue", str(queue), "--once", *worker_flags, env=env)
    after = current_scores(env, files)
    # Nothing to learn from. The prediction queued as its own correction is refused at the door;
    # one corrected frame gives the round no held-out frame, so its version is kept, not promoted.
    unedited = cli("queue", "add", "--queue", str(out / "queue_unedited"), "--image", str(out / "B_corrected_frames.tif"),
                   "--labels", str(out / "corr_pred.tif"), "--prediction", str(out / "corr_pred.tif"), "--kind",
                   "ultrasound", "--organ", ORGAN, "--model", MODEL, env=env, refused=True)
    one = predicted[pick].astype(np.uint16)
    one[0] = (truth_b[pick[0]] > 0).astype(np.uint16)
    tifffile.imwrite(out / "one_frame.tif", one)
    idle = out / "queue_idle"
    cli("queue", "add", "--queue", str(idle), "--image", str(out / "B_corrected_frames.tif"), "--labels",
        str(out / "one_frame.tif"), "--prediction", str(out / "corr_pred.tif"), "--kind", "ultrasound",
        "--organ", ORGAN, "--model", MODEL, env=env)
    idle_log = cli("worker", "--queue", str(idle), "--once", "--device", "cpu", env=env)
    control = control_round(args, base, out, worker_flags) if args.control else None
    result = {"series": {"A": a, "B": b, "C": c}, "corrected_frames": pick.tolist(), "before": before,
              "after": after, "round": round_log.strip().splitlines()[-3:], "unedited_correction": unedited,
              "one_frame_round": idle_log.strip().splitlines()[-3:],
              "versions": cli("models", "versions", MODEL, env=env).strip().splitlines(), "control": control}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def control_round(args: argparse.Namespace, base: Path, out: Path, worker_flags: list[str]) -> dict:
    """The round from the same model, in a home of its own, on 8 evenly spaced frames of series A
    (its own training series, truth masks): C scored before and after, as for the round on B."""
    a, _, c = args.series.split(",")
    home = out / "control"
    env = {**os.environ, "MOUSESEGMENT_HOME": str(home / "home")}
    home.mkdir(parents=True, exist_ok=True)
    cli("models", "import", str(base), "--name", MODEL, "--force", env=env)
    (_, frames_a, truth_a), (_, frames_c, truth_c) = held_out(args.data, [a, c])
    pick = np.linspace(0, len(frames_a) - 1, CORRECTED).round().astype(int)
    files = []
    for name, (frames, truth) in {"A_corrected": (frames_a[pick], (truth_a[pick] > 0).astype(np.uint16)),
                                  "C": (frames_c, truth_c)}.items():
        tifffile.imwrite(home / f"{name}_frames.tif", frames)
        tifffile.imwrite(home / f"{name}_truth.tif", truth)
        files.append([name, str(home / f"{name}_frames.tif"), str(home / f"{name}_truth.tif")])
    before = current_scores(env, files)
    cli("predict", "ultrasound", str(home / "A_corrected_frames.tif"), "--organs", ORGAN, "--model",
        f"{ORGAN}={MODEL}", "--out", str(home / "pred"), "--device", "cpu", env=env)
    predicted = tifffile.imread(next((home / "pred").rglob(f"*{ORGAN}*labels*.tif")))
    tifffile.imwrite(home / "pred.tif", predicted.astype(np.uint16))
    cli("queue", "add", "--queue", str(home / "queue"), "--image", str(home / "A_corrected_frames.tif"), "--labels",
        str(home / "A_corrected_truth.tif"), "--prediction", str(home / "pred.tif"), "--kind", "ultrasound",
        "--organ", ORGAN, "--model", MODEL, env=env)
    log = cli("worker", "--queue", str(home / "queue"), "--once", *worker_flags, env=env)
    return {"series": a, "before": before, "after": current_scores(env, files), "round": log.strip().splitlines()[-3:]}


if __name__ == "__main__":
    main()
