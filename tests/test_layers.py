"""The house's rules, checked by a machine: import-linter's contracts (pyproject.toml) and the top level."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_mousesegment"


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "5 kept, 0 broken" in done.stdout  # every contract was read and checked


def test_the_top_level_holds_at_most_six_modules_and_every_folder_is_a_package():
    assert len(list(PACKAGE.glob("*.py"))) <= 6
    folders = [p for p in PACKAGE.iterdir() if p.is_dir() and p.name not in ("__pycache__",)]
    assert {p.name for p in folders} == {"plugin", "cli", "server", "jobs", "active", "remote", "training",
                                         "inference", "store", "models", "data", "io"}
    assert all((p / "__init__.py").is_file() for p in folders)
