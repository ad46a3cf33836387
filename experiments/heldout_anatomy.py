"""Unseen anatomy (issue 17): train on phantoms drawn from two real label maps and the ellipsoid
model, test on phantoms drawn from the third map, for MOSnet and a plain U-Net in the same run.

The measurement (12 CPU-minutes each, width 16, 0.28 mm phantoms; the maps are read in place)::

    python experiments/heldout_anatomy.py --atlas ../shared/data/rosenhain --hold-out mouse_c_organs \
        --minutes 12 --out /tmp/heldout_c

A seconds-long check that the script works end to end (small phantoms, tiny models)::

    python experiments/heldout_anatomy.py --atlas ../shared/data/rosenhain --hold-out mouse_c_organs \
        --minutes 0.5 --out /tmp/heldout_tiny --shape 64,40,52 --train 2 --test 1 --width 4 --image-size 64

Data: ``--train`` native phantoms (seeds 0..) and as many contrast ones (seeds 100..), written by
``mousesegment synth ct --atlas ellipsoids --atlas MAPS --hold-out NAME``, so each set cycles
through the ellipsoid model and the maps kept in. The native set lacks stomach and bone labels, as
the database's native scans do. Test: ``--test`` phantoms per condition (seeds 200.. and 300..)
drawn from the held-out map alone, with all 9 organs in their truth, written to OUT/test.

MOSnet trains through the CLI with the contract command (``train mosnet --data A --data B --out M
--width 16 --image-size 128 --max-minutes M --device cpu --seed 0``). The plain U-Net
(``benchmarks/reference_unet.py``: width 16, depth 4, Adam at 1e-3, Dice + BCE on the organs each
slice's dataset annotates, random batches of 8, last weights, threshold 0.5) sees the same slices
with the condition as a second input channel, for the same minutes; no flips, since left and
right differ in a mouse. Both are scored on the test phantoms' own grid: per-organ DSC, mean over
scans. The table is printed and written to OUT/heldout_anatomy.json.

``--variation X`` draws the training phantoms' organs with X times the usual spread (test
phantoms keep the usual one): domain randomization toward anatomy no map in the pool has.

``--mix-organs P`` gives each organ of a training phantom drawn from a map the chance P of
another kept map's shape of that organ (one mouse's heart in another's layout); the test phantoms
keep one map's.

``--voids muscle`` draws every phantom, training and test, as before 2026-12-05: the room a
map's organs leave where the ellipsoid organs were stays solid muscle, not the default sponge of fat
and soft tissue (``synth ct --voids``).

``--train-on-held-out`` draws the training phantoms from the held-out map alone, with the same
seeds as usual (the tests' seeds differ), so the anatomy is no longer unseen: what the same budget
and recipe reach on that map when generalisation is not asked of them, the ceiling the unseen-map
figures are read against.

Variants train in the same run, on the same data, for the same minutes: ``--context-slices K``
makes the main MOSnet 2.5D, ``--mosnet-flags="FLAGS"`` gives it other train flags (a recipe in
place of the contract command's defaults), and ``--also NAME=FLAGS`` adds a MOSnet trained with extra flags, e.g.
``--context-slices 1 --also "mosnet_2d=--context-slices 0"`` (the 2.5D measurement of
docs/results-mosnet.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reference_unet import PlainUNet

from napari_mousesegment.data.atlas import atlas_files, read_atlas
from napari_mousesegment.data.ct_dataset import read_ct_dataset, write_case, write_meta
from napari_mousesegment.data.phantom_ct import CONDITIONS, DEFAULT_SHAPE, VOIDS, ct_phantom
from napari_mousesegment.inference.ct import predict_volume, vote
from napari_mousesegment.io.scan import case_name
from napari_mousesegment.metrics import organ_scores
from napari_mousesegment.models.mosnet import MOSnetConfig
from napari_mousesegment.models.preprocess import (
    fit_square,
    from_slices,
    to_slices,
    unfit_square,
    window,
)
from napari_mousesegment.organs import CT_DATASET_ORGANS, CT_ORGANS
from napari_mousesegment.store.load import load_mosnet
from napari_mousesegment.training.losses import masked_dice_loss
from napari_mousesegment.training.slices import build_slices

BIG = ("heart", "lungs", "liver", "kidneys")
NEVER_NATIVE = tuple(o for o in CT_ORGANS if o not in CT_DATASET_ORGANS["native"])  # stomach, bone
SEEDS = {"native": 0, "contrast": 100}
TEST_SEEDS = {"native": 200, "contrast": 300}


def run(*cmd: str) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def make_data(args: argparse.Namespace) -> dict[str, Path]:
    """The two training sets, through `synth ct` (kept when already written for the same question)."""
    shape = ",".join(map(str, args.shape))
    if args.train_on_held_out:  # the ceiling: the held-out map's own anatomy, other seeds than the tests'
        atlas = ["--atlas", str(held_out_path(args))]
    else:
        atlas = ["--atlas", "ellipsoids", *(a for p in args.atlas for a in ("--atlas", str(p))),
                 "--hold-out", args.hold_out]
    sets = {}
    for condition in CONDITIONS:
        out = args.out / "data" / condition
        if not (out / "dataset.json").is_file():
            run("mousesegment", "synth", "ct", "--out", str(out), "--count", str(args.train), "--seed",
                str(SEEDS[condition]), "--condition", condition, "--shape", shape, *atlas,
                "--variation", str(args.variation), "--voids", args.voids,
                *(("--mix-organs", str(args.mix_organs)) if args.mix_organs else ()))
        check_anatomy(out, args)
        sets[condition] = out
    return sets


def check_anatomy(folder: Path, args: argparse.Namespace) -> None:
    """Refuse a training set written earlier for the other question (unseen map, or its own anatomy)."""
    phantoms = json.loads((folder / "dataset.json").read_text())["phantoms"].values()
    anatomy = {case["anatomy"] for case in phantoms}
    fits = anatomy == {args.hold_out} if args.train_on_held_out else args.hold_out not in anatomy
    if not fits:
        want = "only" if args.train_on_held_out else "no"
        raise SystemExit(f"{folder}: its phantoms come from {', '.join(sorted(anatomy))}; this run wants {want} "
                         f"{args.hold_out} phantoms: choose another --out")
    if any("borrowed" in case for case in phantoms) != bool(args.mix_organs):
        raise SystemExit(f"{folder}: its phantoms were drawn {'without' if args.mix_organs else 'with'} "
                         "--mix-organs; choose another --out")
    voids = {case.get("voids", "muscle") for case in phantoms if case["anatomy"] != "ellipsoids"}
    if voids - {args.voids}:
        raise SystemExit(f"{folder}: its phantoms were drawn with --voids {', '.join(sorted(voids))}, not "
                         f"{args.voids}; choose another --out")


def held_out_path(args: argparse.Namespace) -> Path:
    """The held-out label map's file, among those --atlas points to."""
    for path in atlas_files(args.atlas):
        if case_name(path) == args.hold_out:
            return path
    raise SystemExit(f"--hold-out {args.hold_out}: no such map among --atlas")


def held_out_map(args: argparse.Namespace):
    """The held-out label map, read from where --atlas points."""
    return read_atlas(held_out_path(args))


def make_tests(args: argparse.Namespace) -> dict[str, list]:
    """Test phantoms from the held-out map, all 9 organs in their truth, also written to OUT/test."""
    atlas = held_out_map(args)
    tests = {}
    for condition in CONDITIONS:
        scans = [ct_phantom(TEST_SEEDS[condition] + k, condition, shape=tuple(args.shape), atlas=atlas,
                            voids=args.voids)
                 for k in range(args.test)]
        root = args.out / "test" / condition
        write_meta(root, f"test_{condition}", condition, dict(CT_ORGANS), scans[0].spacing)
        for scan in scans:
            write_case(root, f"phantom_{scan.seed:04d}", scan.image, scan.labels, scan.spacing)
        tests[condition] = scans
    return tests


def train_mosnet(args: argparse.Namespace, sets: dict[str, Path], name: str = "mosnet", *extra: str) -> Path:
    out = args.out / "models" / name
    if not (out / "weights.safetensors").is_file():
        run("mousesegment", "train", "mosnet", "--data", str(sets["native"]), "--data", str(sets["contrast"]),
            "--out", str(out), "--width", str(args.width), "--image-size", str(args.image_size),
            "--max-minutes", str(args.minutes), "--device", "cpu", "--seed", str(args.seed), *extra)
    return out


def train_steps(folder: Path) -> int:
    """Optimisation steps a model folder's run took: the sum of its history.csv's ``steps`` column."""
    with open(folder / "history.csv", newline="") as f:
        return sum(int(float(row.get("steps") or 0)) for row in csv.DictReader(f))


def score_mosnet(folder: Path, tests: dict[str, list]) -> dict[str, dict[str, float]]:
    model, _, _ = load_mosnet(folder)
    return score(tests, lambda s: predict_volume(model, s.image, s.spacing, s.condition).labels)


def masked_dice_bce(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Dice + BCE over the organs each slice's dataset annotates (the others teach nothing)."""
    a = annotated[:, :, None, None].float().expand_as(logits)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * a).sum() / a.sum().clamp(min=1)
    return masked_dice_loss(logits, target, annotated) + bce


def with_condition(images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """The condition code as a second input channel."""
    code = condition.float()[:, None, None, None].expand(-1, 1, *images.shape[-2:])
    return torch.cat([images.float(), code], 1)


def train_plain(args: argparse.Namespace, sets: dict[str, Path], config: MOSnetConfig,
                probe: Callable[[PlainUNet, int], None] | None = None) -> tuple[PlainUNet, int]:
    """The plain U-Net on the same slices, for the same minutes.

    ``probe(model, steps)``, when given, is called every ``args.plain_every`` steps (the model in
    eval mode); the time it takes is added to the budget, so the U-Net still trains for its minutes.
    """
    data = build_slices([read_ct_dataset(sets[c]) for c in CONDITIONS], config)
    images = with_condition(data.images, data.condition)
    masks, annotated = data.organ_masks.float(), data.annotated
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = PlainUNet(2, len(config.organs), width=args.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    end, steps = time.monotonic() + args.minutes * 60, 0
    model.train()
    while time.monotonic() < end:
        idx = torch.from_numpy(rng.choice(len(images), min(8, len(images)), replace=False))
        loss = masked_dice_bce(model(images[idx]), masks[idx], annotated[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if probe is not None and steps % args.plain_every == 0:
            started = time.monotonic()
            probe(model.eval(), steps)
            model.train()
            end += time.monotonic() - started
    return model.eval(), steps


@torch.inference_mode()
def plain_labels(model: PlainUNet, config: MOSnetConfig, image: np.ndarray, condition: str) -> np.ndarray:
    """Labels of a phantom on its own grid (already at the model's voxel size), threshold 0.5."""
    stack = to_slices(image, config.plane)
    out = []
    for start in range(0, len(stack), 16):
        hu = torch.from_numpy(window(np.asarray(stack[start:start + 16]), config.window_level, config.window_width))
        x = fit_square(hu[:, None], config.image_size, "bilinear")
        x = with_condition(x, torch.full((len(x),), CONDITIONS.index(condition)))
        probs = unfit_square(torch.sigmoid(model(x)), *stack.shape[1:])
        out.append(vote(torch.logit(probs, eps=1e-6), torch.zeros(len(config.organs))).to(torch.uint8).numpy())
    return from_slices(np.concatenate(out), config.plane)


def score(tests: dict[str, list], predict) -> dict[str, dict[str, float]]:
    """Mean DSC per organ and condition of ``predict(scan) -> labels`` (numbered as CT_ORGANS)."""
    table = {}
    for condition, scans in tests.items():
        rows = [r for s in scans for r in organ_scores(predict(s), s.labels, CT_ORGANS, CT_ORGANS, s.spacing)]
        table[condition] = {o: float(np.mean([r["dsc"] for r in rows if r["organ"] == o])) for o in CT_ORGANS}
    return table


def summary(table: dict[str, dict[str, float]]) -> dict[str, float]:
    return {"native_big_mean": float(np.mean([table["native"][o] for o in BIG])),
            "contrast_big_mean": float(np.mean([table["contrast"][o] for o in BIG])),
            "native_never_labelled_mean": float(np.mean([table["native"][o] for o in NEVER_NATIVE]))}


def print_table(tables: dict[str, dict]) -> None:
    """Per-organ DSC of each model and condition, then the summary means."""
    names = list(tables)
    head = "".join(f" {c[:6] + ' ' + n[:12]:>20}" for c in CONDITIONS for n in names)
    print(f"\n{'organ':<10}{head}")
    for organ in CT_ORGANS:
        mark = " (never labelled native)" if organ in NEVER_NATIVE else ""
        cells = "".join(f" {tables[n][c][organ]:>20.3f}" for c in CONDITIONS for n in names)
        print(f"{organ:<10}{cells}{mark}")
    for key in summary(tables[names[0]]):
        print(f"{key:<28} " + "  ".join(f"{n} {summary(tables[n])[key]:.3f}" for n in names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atlas", type=Path, action="append", default=None,
                        help="label maps or a folder of them (default ../shared/data/rosenhain)")
    parser.add_argument("--hold-out", required=True, help="the map to test on, never trained on")
    parser.add_argument("--minutes", type=float, default=12.0, help="training minutes of each model (12)")
    parser.add_argument("--out", type=Path, required=True, help="work folder: data, test phantoms, models, table")
    parser.add_argument("--shape", type=lambda t: tuple(int(v) for v in t.split(",")), default=DEFAULT_SHAPE,
                        help="phantom grid Z,Y,X at 0.28 mm (default 200,110,150)")
    parser.add_argument("--train", type=int, default=12, help="training phantoms per condition (12)")
    parser.add_argument("--test", type=int, default=4, help="test phantoms per condition (4)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variation", type=float, default=1.0,
                        help="the training phantoms' shape variation (`synth ct --variation`; default 1); "
                             "test phantoms keep 1")
    parser.add_argument("--mix-organs", type=float, default=0.0, metavar="P",
                        help="the training phantoms' organs each take another map's shape with chance P "
                             "(`synth ct --mix-organs`; default 0); test phantoms keep one map's")
    parser.add_argument("--voids", choices=VOIDS, default="viscera",
                        help="what fills the room the maps' organs leave, in every phantom (`synth ct --voids`; "
                             "default viscera; muscle: phantoms as drawn before 2026-12-05)")
    parser.add_argument("--train-on-held-out", action="store_true",
                        help="draw the training phantoms from the held-out map alone (other seeds than the "
                             "tests'): what the same budget reaches when the anatomy is not unseen")
    parser.add_argument("--context-slices", type=int, default=0,
                        help="train MOSnet on 2.5D input: neighbouring slices each side (default 0: 2D)")
    parser.add_argument("--mosnet-flags", default="", metavar="FLAGS",
                        help="extra train flags for the main MOSnet, given as --mosnet-flags=\"...\" "
                             "(default none: the contract command)")
    parser.add_argument("--ablate-augment", action="store_true",
                        help="also train MOSnet with --no-augment for the same minutes, to measure augmentation")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=FLAGS",
                        help="also train MOSnet with these extra train flags for the same minutes "
                             "(e.g. mosnet_2d='--context-slices 0')")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=MODEL",
                        help="also score an existing MOSnet folder on the same test phantoms (e.g. an earlier run's)")
    parser.add_argument("--plain-every", type=int, default=0, metavar="N",
                        help="also score the plain U-Net on the test phantoms every N steps of its run, "
                             "to see how much its last weights owe to where the run stopped (default 0: no)")
    args = parser.parse_args()
    args.atlas = args.atlas or [ROOT.parent / "shared" / "data" / "rosenhain"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sets = make_data(args)
    tests = make_tests(args)
    mosnet_dir = train_mosnet(args, sets, "mosnet", "--context-slices", str(args.context_slices),
                              *args.mosnet_flags.split())
    tables = {"mosnet": score_mosnet(mosnet_dir, tests)}
    for entry in args.compare:
        name, _, folder = entry.partition("=")
        tables[name] = score_mosnet(Path(folder), tests)
    for entry in args.also:
        name, _, flags = entry.partition("=")
        tables[name] = score_mosnet(train_mosnet(args, sets, name, *flags.split()), tests)
    if args.ablate_augment:
        tables["mosnet_no_augment"] = score_mosnet(train_mosnet(args, sets, "mosnet_no_augment", "--no-augment",
                                                                "--context-slices", str(args.context_slices)),
                                                   tests)
    config = load_mosnet(mosnet_dir)[1]
    plain_config = MOSnetConfig(organs=list(CT_ORGANS), image_size=args.image_size, spacing_mm=config.spacing_mm)
    print(f"plain U-Net: {args.minutes:g} minutes on the same slices", flush=True)
    trajectory = []

    def probe(model: PlainUNet, steps: int) -> None:
        scores = summary(score(tests, lambda s: plain_labels(model, plain_config, s.image, s.condition)))
        trajectory.append({"steps": steps, **scores})
        print(f"plain U-Net after {steps} steps: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)

    plain, steps = train_plain(args, sets, plain_config, probe if args.plain_every else None)
    tables["plain_unet"] = score(tests, lambda s: plain_labels(plain, plain_config, s.image, s.condition))
    print_table(tables)
    result = {"held_out": args.hold_out, "atlas": [str(p) for p in args.atlas], "minutes": args.minutes,
              "shape": list(args.shape), "train_per_condition": args.train, "test_per_condition": args.test,
              "width": args.width, "image_size": args.image_size, "context_slices": args.context_slices,
              "mosnet_flags": args.mosnet_flags, "train_on_held_out": args.train_on_held_out,
              "variation": args.variation, "mix_organs": args.mix_organs, "voids": args.voids,
              "plain_unet_steps": steps, "plain_unet_trajectory": trajectory,
              **{name: {"dsc": table, **summary(table)} for name, table in tables.items()}}
    path = args.out / "heldout_anatomy.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ntable written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
