"""The radosgw benchmark's smoke run on moto: tiny sizes, every code path, no timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.pds


def test_bench_s3_servers_runs_on_moto(tmp_path):
    out_json = tmp_path / "rows.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_s3_servers.py"), "--server", "moto",
         "--cases", "2x1,1x11", "--copy-threshold-mib", "6", "--copy-part-mib", "5",
         "--variants", "s5cmd,bare,ours", "--json-out", str(out_json)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out_json.read_text())
    seen = {(r["case"], r["scenario"], r["variant"]) for r in rows}
    for case in ("2x1", "1x11"):
        for scenario in ("same", "cross"):
            for variant in ("bare aioboto3", "ours, warm", "ours, CLI process"):
                assert (case, scenario, variant) in seen
        assert (case, "same", "s5cmd") in seen
    ours = [r for r in rows if r["variant"] == "ours, warm"]
    assert all(r["call_wall"] > 0 and r["our_requests"] > 0 for r in ours)
    # the 11 MiB shard above the 6 MiB threshold is copied in parts (create, 3 x
    # UploadPartCopy, complete) on the same endpoint
    big_same = next(r for r in ours if r["case"] == "1x11" and r["scenario"] == "same")
    assert big_same["our_requests"] >= 5
    assert "ours, CLI process" in out.stdout
