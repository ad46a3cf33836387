"""Install trained model folders as the plugin's built-in models, with honest names and their test scores.

Usage (after experiments/unet_synthetic.sh; see ship_weights.sh):
    python experiments/ship_weights.py US_WORK

Copies US_WORK/models/unet-ORGAN as ``unet-ORGAN-synthetic`` into
src/napari_mousesegment/store/builtin/, adding to each config a name, a version, a plain
description and the held-out test scores from the evaluation reports. The weights are copied
byte for byte, so the sha256 recorded at training still verifies them. ``mosnet-synthetic`` is
installed by experiments/ship_mosnet.py, which uses :func:`ship`; ``--hc18`` installs the
real-ultrasound example model (below).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

from napari_mousesegment.store.load import load_model

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "src" / "napari_mousesegment" / "store" / "builtin"
US_NOTE = ("{organ} U-Net trained on 20 synthetic fetal-ultrasound series (experiments/unet_synthetic.sh). "
           "For demonstration and testing: train on your lab's annotated series before measuring real litters.")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _us_scores(work: Path, organ: str) -> dict:
    summary = work / "reports" / organ / "summary.csv"
    row = _rows(summary)[0] if summary.is_file() else {}
    keys = ("dice", "precision", "recall", "instance_f1")
    return {"metric": "pixel and instance scores on 5 held-out series", **{k: round(float(row[k]), 3)
                                                                            for k in keys if k in row}}


def shipped_version(dest: Path, sha256: str) -> str:
    """The version a model installed at ``dest`` with weights ``sha256`` gets: "1" the first time,
    the installed one's again for the same weights, the next for new weights, so a correction
    queued with a built-in's predictions (``model_version``) names the weights that made them."""
    try:
        old = json.loads((dest / "config.json").read_text())
    except (OSError, ValueError):
        return "1"
    same = old.get("sha256") == sha256
    return str(old.get("version", "0")) if same else str(int(old.get("version", 0)) + 1)


def ship(source: Path, name: str, description: str, test_scores: dict) -> Path:
    load_model(source)  # refuse to ship anything that does not verify and load
    dest = BUILTIN / name
    meta = json.loads((source / "config.json").read_text())
    version = shipped_version(dest, meta.get("sha256", ""))
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(source / "weights.safetensors", dest / "weights.safetensors")
    shutil.copy2(source / "history.csv", dest / "history.csv")
    meta.update({"name": name, "version": version, "description": description, "test_scores": test_scores})
    (dest / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    load_model(dest)
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"{name}: {size / 1e6:.2f} MB -> {dest}")
    return dest


def main(us_work: Path) -> None:
    for organ in ("heart", "liver", "placenta"):
        ship(us_work / "models" / f"unet-{organ}", f"unet-{organ}-synthetic", US_NOTE.format(organ=organ.capitalize()),
             _us_scores(us_work, organ))
    total = sum(p.stat().st_size for p in BUILTIN.rglob("*") if p.is_file())
    print(f"built-in models: {total / 1e6:.2f} MB in all")


if __name__ == "__main__" and sys.argv[1:2] != ["--hc18"]:
    main(Path(sys.argv[1]))


HC18_NOTE = ("Fetal head U-Net trained on real ultrasound: HC18 (van den Heuvel T.L.A. et al., PLoS ONE 13(8): "
             "e0200412, 2018; CC BY 4.0), series 00 and 01 of hc18_dev (70 frames), by `train unet --organ head "
             "--image-size 256 --test 0 --max-minutes 12 --device cpu` with its other flags at their defaults (width 8, "
             "threshold by the largest validation Dice) on a 2-core CPU (benchmarks/learning_us.py). Human fetal "
             "heads, not mouse organs: a real-data example of the recipe, and a start for a lab's own training.")


def ship_hc18(source: Path, result: Path) -> Path:
    """Install the model of a benchmarks/learning_us.py run as ``unet-head-hc18``, with its held-out scores."""
    scores = json.loads(result.read_text())["ours"]
    held = {name: {k: round(v, 3) for k, v in s.items()} for name, s in scores.items() if isinstance(s, dict)}
    dest = ship(source, "unet-head-hc18", HC18_NOTE,
                {"metric": "pooled pixel Dice, precision and recall on held-out HC18 series (never trained on)",
                 "series": held})
    meta = json.loads((dest / "config.json").read_text())
    meta["training"]["data"] = {"dataset": "HC18 (hc18_dev: series_00, series_01)", "license": "CC BY 4.0",
                                "credit": "van den Heuvel T.L.A. et al., PLoS ONE 13(8): e0200412 (2018)"}
    (dest / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    load_model(dest)
    return dest


if __name__ == "__main__" and sys.argv[1:2] == ["--hc18"]:  # python experiments/ship_weights.py --hc18 MODEL RESULT
    ship_hc18(Path(sys.argv[2]), Path(sys.argv[3]))
