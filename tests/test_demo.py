"""The README's first command: the demo runs end to end, --keep leaves its services up for
the README's shell example, and Ctrl-C, SIGTERM and SIGHUP stop every service it started."""

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


def demo(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / "demo.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def service_ports(line: str) -> list[int]:
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", line)]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def readme_shell_block() -> str:
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S)
                 if "scripts/demo --keep" in b)
    return block


def test_demo_keep_then_the_readme_commands_then_down(tmp_path):
    """The README's shell block exactly as written (from a directory with the clone's
    scripts/), except the one at:// URI it says to copy from the output above."""
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    lines = ["set -euo pipefail", "exec >out.log 2>err.log"]
    for line in readme_shell_block().splitlines():
        if line.startswith("atdata-async show"):
            line = 'atdata-async show "$(grep -o "^published at://.*" out.log | cut -c11-)"'
        lines.append(line)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ATDATA_", "AWS_"))} | {"PYTHONUNBUFFERED": "1"}
    done = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = (tmp_path / "out.log").read_text()
    assert done.returncode == 0, (tmp_path / "err.log").read_text()[-3000:] + done.stderr
    assert re.search(r"Dataset published: at://did:plc:\w+/science\.alt\.dataset\.entry/\w+",
                     out)
    assert "Name: feature-vectors-v1" in out
    assert "read 1000 samples back from the copied shards: identical" in out
    assert '"$type": "science.alt.dataset.storageS3"' in out
    assert '"$type": "science.alt.dataset.schema"' in out  # the schema record is shown too
    assert "feature-vectors-v1                   4 shards" in out  # atdata-async ls
    assert "dry run: nothing was written" in out
    assert re.search(r"^published at://did:plc:\w+/science\.alt\.dataset\.entry/\w+$", out, re.M)
    # show: the copy's keys
    assert re.search(r"s3://public-datasets/releases/feature-vectors-v1/\w{8}-000000\.tar", out)
    ports = service_ports(next(line for line in out.splitlines() if "redis redis://" in line))
    assert len(ports) == 3 and all(refused(p) for p in ports)  # scripts/demo --down
    assert not (tmp_path / ".dev").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_stops_every_service_and_removes_the_temp_dir(signum):
    proc = demo()
    assert proc.stdout is not None
    ports: list[int] = []
    work = None
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if "redis redis://" in line:
            ports = service_ports(line)
        if "work directory" in line:
            work = Path(line.split("work directory", 1)[1].strip())
        if line.startswith("==> 1-2."):
            break
        assert time.monotonic() < deadline
    assert len(ports) == 3 and not any(refused(p) for p in ports)
    assert work is not None and work.is_dir()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "==> stopping the services this demo started" in out
    assert f"interrupted ({signal.Signals(signum).name}); services stopped" in err
    assert all(refused(p) for p in ports)
    assert not work.exists()


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


def test_help_does_not_run_the_demo():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--keep" in out.stdout and "==>" not in out.stdout
