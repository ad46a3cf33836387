"""benchmarks/bench.py --quick: a smoke test of every section, with no timing assertions."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_benchmark_reports_every_section(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True and results["machine"]["torch_threads"] >= 1
    ct = results["ct"]
    for key in ("seconds_per_scan", "naive_seconds_per_scan", "speedup_vs_naive", "flops_fraction",
                "achieved_gflops", "matmul_gflops"):
        assert _positive(ct[key]), key
    assert ct["peak_rss_mb"] is None or ct["peak_rss_mb"] > ct["extra_rss_mb"] >= 0
    assert ct["labels_agree_with_naive"] > 0.999  # the optimised predictor gives the baseline's answer
    assert ct["speedup_vs_naive"] == pytest.approx(ct["naive_seconds_per_scan"] / ct["seconds_per_scan"])
    assert results["ultrasound"]["roisets"] == 3 and results["ultrasound"]["frames"] == 35
    assert _positive(results["ultrasound"]["seconds"])
    train = results["train"]
    assert {"mosnet_w8_samples_per_s", "unet_heart_samples_per_s", "unet_liver_samples_per_s",
            "unet_placenta_samples_per_s"} <= set(train) and all(_positive(v) for v in train.values())
    active = results["active"]
    assert int(active["version"]) >= 1 and isinstance(active["promoted"], bool) and _positive(active["seconds"])
    scaling = results["scaling"]
    assert [scaling[f"x{f}_slices"] for f in (1, 2, 4)] == [scaling["x1_slices"] * f for f in (1, 2, 4)]
    assert all(_positive(scaling[f"x{f}_seconds"]) for f in (1, 2, 4))
    big = results["bigscan"]
    assert big["size_ratio_full_vs_quarter"] == pytest.approx(4, rel=0.01)
    assert all(_positive(big[f"{n}_{k}"]) for n in ("quarter", "full") for k in ("seconds", "peak_rss_mb", "gb"))
    assert big["full_labelled_fraction"] > 0  # the streamed labels.tif holds organs
    assert big["nifti_same_labels_mid_slice"] and big["nifti_wrote_labels_nii_gz"]  # the NIfTI path agrees
    learning = results["learning"]  # quick: 3 s of each model on synthetic series, scored on a third
    assert learning["budgets_min"] == "0.05" and learning["ct_skipped"] == "--quick"
    for who in ("ours", "plain"):
        assert 0 <= learning[f"us_0.05min_{who}_dice"] <= 1
        assert _positive(learning[f"us_0.05min_{who}_samples_per_s"])
        assert _positive(learning[f"us_0.05min_{who}_matmul_fraction"])
    for section in ("ct", "ultrasound", "train", "active", "scaling", "bigscan", "learning"):
        assert f"## {section}" in run.stdout


def test_benchmark_refuses_an_unknown_section():
    run = subprocess.run([sys.executable, "benchmarks/bench.py", "--sections", "ct,gpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and "unknown section" in run.stderr
