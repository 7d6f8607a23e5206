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


def test_bench_s3_servers_same_endpoint_with_several_server_copy_limits(tmp_path):
    """--scenarios same --server-copies 4,8: the warm call at each limit in the same
    rounds (the CLI at the first), and their ratios against s5cmd in the summary."""
    out_json = tmp_path / "rows.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_s3_servers.py"), "--server", "moto",
         "--cases", "3x1", "--scenarios", "same", "--variants", "s5cmd,ours",
         "--server-copies", "4,8", "--json-out", str(out_json)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out_json.read_text())}
    assert {r["scenario"] for r in rows.values()} == {"same"}
    assert rows["ours, warm"]["server_copies"] == 4
    assert rows["ours, warm, 8 copies"]["server_copies"] == 8
    assert rows["ours, CLI process"]["server_copies"] == 4
    assert rows["ours, warm, 8 copies"]["our_requests"] >= 3  # one CopyObject per shard
    assert "call (8 copies) / s5cmd" in out.stdout
