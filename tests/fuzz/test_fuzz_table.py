"""``benchmarks/fuzz.py --table``: the Markdown table of docs/reliability.md from a counts file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict

from ..conftest import ROOT
from . import harness


def test_counts_add_up_and_print_as_a_table(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "COUNTS", defaultdict(Counter))  # this session's real counts stay apart
    harness.COUNTS["cli queue status"].update({"ok": 2, "wrong": 1})
    target = tmp_path / "counts.json"
    harness.write_counts(target)
    harness.write_counts(target)  # a second session adds to the first
    expected = {**dict.fromkeys(harness.OUTCOMES, 0), "ok": 4, "wrong": 2}
    assert json.loads(target.read_text()) == {"cli queue status": expected}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--table", str(target)],
                          capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].endswith("| hang | wrong but accepted |")
    assert "| cli queue status | 6 | 4 | 0 | 0 | 0 | 0 | 2 |" in lines
    assert lines[-1] == "| **all** | **6** | **4** | **0** | **0** | **0** | **0** | **2** |"
