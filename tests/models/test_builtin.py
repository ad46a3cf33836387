"""The models shipped inside the package: present, verified, small, honestly named and good on held-out data."""

import json

import pytest

from napari_mousesegment.cli import main
from napari_mousesegment.store.load import load_model
from napari_mousesegment.store.registry import BUILTIN, SHIPPED_CT, SHIPPED_US, list_models

NAMES = {SHIPPED_CT, *SHIPPED_US.values()}


def test_the_four_synthetic_models_and_the_hc18_one_ship_verified_and_within_20_mb():
    rows = {r.name: r for r in list_models() if r.source == "builtin"}
    assert set(rows) == NAMES | {"unet-head-hc18"}
    assert sum(r.size_bytes for r in rows.values()) <= 20e6
    _, config, meta = load_model("unet-head-hc18")  # the real-data example: its credit and held-out scores
    assert config.organ == "head" and config.frame_size == 256 and "CC BY 4.0" in meta["description"]
    assert all(s["dice"] >= 0.93 for s in meta["test_scores"]["series"].values())
    for name in NAMES:
        _, config, meta = load_model(name)  # sha256 checked
        # mosnet-synthetic was retrained on phantoms drawn from real label maps (2), then with the
        # measured CPU recipe: no reconstruction decoder, two HU windows, the Dice term (3)
        assert meta["version"] == ("3" if name == SHIPPED_CT else "1") and "synthetic" in meta["description"]
        assert meta["test_scores"]["metric"]


def test_shipped_unets_met_the_target_on_held_out_series():
    for organ, name in SHIPPED_US.items():
        scores = json.loads((BUILTIN / name / "config.json").read_text())["test_scores"]
        assert scores["dice"] >= 0.85 and scores["precision"] >= 0.9, (organ, scores)


def test_cli_lists_the_shipped_models(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out and "builtin" in out


@pytest.mark.slow
def test_default_demo_segments_the_samples_with_the_shipped_models(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--seed", "250"]) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert all(s["status"] == "done" for s in report["steps"])
    ct = {(r["sample"], r["organ"]): r["dsc"] for r in report["scores"]}
    # mosnet-synthetic learns real map anatomy as well as the ellipsoid phantoms the samples draw;
    # its native liver (58 HU beside 45 HU muscle) is its weakest big organ (docs/results-mosnet.md)
    bound = {("native", "liver"): 0.7}
    for condition in ("native", "contrast"):
        for organ in ("heart", "lungs", "liver", "kidneys"):
            dsc = ct[(f"ct {condition}", organ)]
            assert dsc > bound.get((condition, organ), 0.8), (condition, organ, dsc)
    us = {r["organ"]: r for r in report["ultrasound_scores"]}
    assert set(us) == {"heart", "liver", "placenta"} and all(r["dice"] > 0.8 for r in us.values())
    assert "held-out scores" in report["training_note"]


def test_a_reshipped_model_gets_a_new_version_only_for_new_weights(tmp_path):
    from experiments.ship_weights import shipped_version

    dest = tmp_path / "m"
    assert shipped_version(dest, "aa") == "1"  # first ship
    dest.mkdir()
    (dest / "config.json").write_text(json.dumps({"version": "2", "sha256": "aa"}))
    assert shipped_version(dest, "aa") == "2" and shipped_version(dest, "bb") == "3"
