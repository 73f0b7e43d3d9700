"""scripts/bad_day.py, issue 14's scripted bad day: its representative subset (``--quick``) passes.

The whole script runs about 60 commands (3-7 minutes on 2 cores), too long for the test suite; ``--quick``
runs one case or more of each section through the same code: fixtures, subprocesses of the real ``resnets``
command, a shell pipe into ``head -1``, ``--nproc 2``, the hash check and the table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bad_day.py"


def test_bad_day_quick_passes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--keep", str(tmp_path / "day")],
                          capture_output=True, text=True, timeout=600)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert len(rows) >= 14 and not [r for r in rows if "| FAIL" in r], proc.stdout
    assert {r.split(" | ")[1] for r in rows} == {"1", "2", "3", "4", "5", "6"}  # every section has a case
    assert rows[-1].startswith(f"| {len(rows)} | 1 | every pre-existing file byte-identical") and \
        rows[-1].endswith("| PASS |")
