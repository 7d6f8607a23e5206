"""The README's first command: the demo runs end to end, and Ctrl-C stops its services."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.pds


def demo() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / "demo.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def service_ports(line: str) -> list[int]:
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", line)]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_demo_publishes_and_reads_back():
    proc = demo()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert re.search(r"Dataset published: at://did:plc:\w+/science\.alt\.dataset\.entry/\w+", out)
    assert "Name: feature-vectors-v1" in out
    assert "read 1000 samples back from the copied shards: identical" in out
    assert '"$type": "science.alt.dataset.storageS3"' in out
    ports = service_ports(next(line for line in out.splitlines() if "redis redis://" in line))
    assert len(ports) == 3 and all(refused(p) for p in ports)


def test_ctrl_c_stops_every_service_the_demo_started():
    proc = demo()
    assert proc.stdout is not None
    ports: list[int] = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if "redis redis://" in line:
            ports = service_ports(line)
        if line.startswith("==> 1-2."):
            break
        assert time.monotonic() < deadline
    assert len(ports) == 3 and not any(refused(p) for p in ports)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "==> stopping the services this demo started" in out
    assert all(refused(p) for p in ports)


def test_a_closed_output_pipe_still_stops_every_service():
    proc = demo()
    assert proc.stdout is not None and proc.stderr is not None
    ports: list[int] = []
    for line in proc.stdout:
        if "redis redis://" in line:
            ports = service_ports(line)
            break
    proc.stdout.close()  # like `scripts/demo | head`: the demo's next print fails
    with proc.stderr:
        err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode != 0 and "BrokenPipeError" in err
    assert len(ports) == 3 and all(refused(p) for p in ports)
