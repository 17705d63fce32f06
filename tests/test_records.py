"""benchmarks/records.py: rows written by processes side by side all survive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

WRITER = """
import sys
sys.path.insert(0, {bench!r})
import records
from pathlib import Path
for i in range({n}):
    records.put(Path({path!r}), f"{{sys.argv[1]}} {{i}}", {{"writer": sys.argv[1], "i": i, "pad": "x" * 2000}})
"""


def test_rows_of_writers_side_by_side_all_survive(tmp_path):
    path = tmp_path / "results" / "rows.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"earlier": {"kept": True}}))
    code = WRITER.format(bench=str(BENCH), n=25, path=str(path))
    procs = [subprocess.Popen([sys.executable, "-c", code, f"w{k}"]) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    rows = json.loads(path.read_text())
    assert rows["earlier"] == {"kept": True}
    assert {f"w{k} {i}" for k in range(4) for i in range(25)} <= set(rows)
    assert len(rows) == 101
    assert all(rows[f"w{k} {i}"]["i"] == i for k in range(4) for i in range(25))
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind
