"""More animals or more slices of each, at the same minutes (issue 17, unseen anatomy).

A 12-minute run on a slow CPU sees each training slice about once, so the question is whether
those steps are better spent on more phantoms (more anatomy, fewer slices of each) than on every
slice of a few. MOSnet trains, with the same flags and minutes, on two data folders drawn
without the same held-out map: all slices of 12 + 12 phantoms, and every ``--stride``-th slice of
36 + 36 (the first 12 of each the same phantoms), about as many slices in all. Both are scored on
the held-out map's test phantoms of ``experiments/heldout_anatomy.py``::

    M="--shape 200,110,150 --atlas ellipsoids --atlas ../shared/data/rosenhain --hold-out mouse_b_organs"
    mousesegment synth ct --out /tmp/hom/data/native --count 36 --seed 0 --condition native $M
    mousesegment synth ct --out /tmp/hom/data/contrast --count 36 --seed 100 --condition contrast $M
    python experiments/more_animals.py --few /tmp/hof/data --many /tmp/hom/data --out /tmp/hom --seeds 0 1

(``/tmp/hof/data``: the same commands with ``--count 12``, as ``heldout_anatomy.py --train 12`` writes.)
Runs alternate few/many, seed by seed, so a machine that slows down mid-way slows both.
A plain U-Net (``heldout_anatomy.py``'s) trains on the fewer phantoms for the same minutes,
after them, unless ``--no-plain``. The table is printed and written to OUT/more_animals.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import heldout_anatomy as heldout  # noqa: E402

from napari_mousesegment.data.phantom_ct import CONDITIONS, VOIDS  # noqa: E402
from napari_mousesegment.models.mosnet import MOSnetConfig  # noqa: E402
from napari_mousesegment.organs import CT_ORGANS  # noqa: E402

RECIPE = "--batch-size 4 --sampling organs --plane axial+coronal+sagittal --exclusion-weight 1 --variant bm_cm"


def train(data: Path, out: Path, minutes: float, seed: int, extra: list[str]) -> Path:
    """MOSnet through the CLI (the contract command plus RECIPE), its log beside the model folder."""
    if not (out / "weights.safetensors").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.with_suffix(".log"), "w") as log:
            subprocess.run(["mousesegment", "train", "mosnet", "--data", str(data / "native"), "--data",
                            str(data / "contrast"), "--out", str(out), "--width", "16", "--image-size", "128",
                            "--max-minutes", str(minutes), "--device", "cpu", "--seed", str(seed),
                            *RECIPE.split(), *extra], check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--few", type=Path, required=True, help="data folder of the fewer phantoms (all slices)")
    parser.add_argument("--many", type=Path, required=True, help="data folder of the more phantoms")
    parser.add_argument("--stride", type=int, default=3, help="--slice-stride for the more phantoms (3)")
    parser.add_argument("--out", type=Path, required=True, help="work folder: models, test phantoms, table")
    parser.add_argument("--hold-out", default="mouse_b_organs", help="the map the test phantoms are drawn from")
    parser.add_argument("--atlas", type=Path, default=heldout.ROOT.parent / "shared" / "data" / "rosenhain")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test", type=int, default=4, help="test phantoms per condition (4)")
    parser.add_argument("--voids", choices=VOIDS, default="viscera",
                        help="what fills the voids of the test phantoms (`synth ct --voids`; muscle: as drawn "
                             "before 2026-12-05; --few and --many should match it)")
    parser.add_argument("--no-plain", action="store_true",
                        help="skip the plain U-Net (trained on the fewer phantoms for the same minutes, seed 0)")
    args = parser.parse_args()
    runs = {}
    for seed in args.seeds:
        runs[f"few_s{seed}"] = train(args.few, args.out / "models" / f"few_s{seed}", args.minutes, seed, [])
        runs[f"many_s{seed}"] = train(args.many, args.out / "models" / f"many_s{seed}", args.minutes, seed,
                                      ["--slice-stride", str(args.stride)])
    tests = heldout.make_tests(argparse.Namespace(atlas=[args.atlas], hold_out=args.hold_out, voids=args.voids,
                                                  shape=heldout.DEFAULT_SHAPE, test=args.test, out=args.out))
    tables = {name: heldout.score_mosnet(folder, tests) for name, folder in runs.items()}
    counts = {name: heldout.train_steps(folder) for name, folder in runs.items()}
    if not args.no_plain:
        config = MOSnetConfig(organs=list(CT_ORGANS), image_size=128)
        plain, counts["plain_unet"] = heldout.train_plain(
            argparse.Namespace(minutes=args.minutes, seed=0, width=16),
            {c: args.few / c for c in CONDITIONS}, config)
        tables["plain_unet"] = heldout.score(tests, lambda s: heldout.plain_labels(plain, config, s.image, s.condition))
    heldout.print_table(tables)
    result = {name: {"steps": counts[name], "dsc": table, **heldout.summary(table)} for name, table in tables.items()}
    for name, row in result.items():
        print(f"{name}: {row['steps']} steps")
    path = args.out / "more_animals.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ntable written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
