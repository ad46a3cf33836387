"""The docs build, and the README's set-up commands are the ones CI runs."""

import re
import subprocess
import sys

from .conftest import ROOT


def _setup_commands():
    return re.findall(r"^python3 -m venv .*$", (ROOT / "README.md").read_text(), flags=re.M)


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert commands[0].endswith("mousesegment demo --out mousesegment-demo --overwrite")
    assert commands[1].endswith("python -m pytest")
    for command in commands:  # never a bare torch install that would pull CUDA wheels
        assert "pip install torch==2.13.0" in command and 'python -c "import torch"' in command


def test_ci_runs_the_readme_test_command_literally():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _setup_commands()[1] in lines


def test_mkdocs_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f",
                           str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "index.html").exists()
