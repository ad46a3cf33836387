"""What users wait for, measured: a whole-body scan to segment, a 35-frame series to become ROIs,
and corrections to become a better model.

    python benchmarks/bench.py [--quick] [--json FILE] [--device auto|cpu|cuda]

Sections (all in one run, so ratios compare like with like on a noisy machine):

- ct: MOSnet over a phantom the size of a native Rosenhain scan, the project's predictor against a
  naive baseline (benchmarks/baseline.py) with the same weights; conv FLOP/s against the matmul
  FLOP/s measured now; peak memory against the input volume.
- ultrasound: a 35-frame composite through the heart, liver and placenta U-Nets to RoiSet zips.
- train: training samples/s for MOSnet and the U-Nets (one optimisation step, as the trainers take).
- active: one retraining round, from queued corrections to a promoted version.
- scaling: CT inference time and peak memory at 1x, 2x and 4x the slices.
- learning: Dice after 2, 6 and 12 CPU-minutes on real ultrasound (HC18) and on phantom micro-CT
  drawn from held-out anatomy, against the plain U-Net trained in the same run (benchmarks/learning.py).

--quick shrinks every section to a smoke test (CI); its figures are not the documented ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.learning import add_options
from benchmarks.measure import machine
from benchmarks.sections import SECTIONS


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, for CI")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--ct-width", type=int, default=None,
                        help="benchmark a MOSnet of this width (random weights) instead of the shipped model; "
                             "32 is the paper's size")
    add_options(parser)
    args = parser.parse_args(argv)
    from napari_mousesegment.models.preprocess import pick_device

    device = pick_device(args.device)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    results: dict = {"machine": machine(device), "quick": args.quick,
                     "command": "python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"# {results['machine']['cpu']}, {results['machine']['torch_threads']} torch threads, device {device}"
          + (" (quick: smoke-test sizes)" if args.quick else ""))
    torch.manual_seed(0)
    np.random.seed(0)
    home = os.environ.get("MOUSESEGMENT_HOME")
    with tempfile.TemporaryDirectory(prefix="mousesegment-bench-") as scratch:
        os.environ["MOUSESEGMENT_HOME"] = str(Path(scratch) / "home")  # never touch the user's models
        try:
            for name in chosen:
                print(f"\n## {name}")
                section = SECTIONS[name](args, device, Path(scratch) / name)
                results[name] = section
                for key, value in section.items():
                    print(f"  {key:<28} {_format(value)}")
        finally:
            if home is None:
                os.environ.pop("MOUSESEGMENT_HOME", None)
            else:
                os.environ["MOUSESEGMENT_HOME"] = home
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
