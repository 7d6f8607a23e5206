"""A throwaway one-node Ceph cluster with radosgw gateways on 127.0.0.1, for benchmarks.

One monitor, one BlueStore OSD on a sparse file, cephx off, pools of size 1, and N
radosgw processes (one cluster: two gateways are two endpoints over the same data). The
Debian packages are installed with apt-get when missing. Every process is started by
us and stopped by its PID; the cluster lives in a temporary directory.

    with RadosCluster(workdir, gateways=2) as cluster:
        cluster.endpoints  # ["http://127.0.0.1:PORT", ...]
        cluster.access_key, cluster.secret_key
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "ceph", "monmaptool", "radosgw-admin")


def ensure_installed() -> None:
    """apt-get install the Ceph packages when any binary is missing (root only)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RadosCluster:
    """Start on enter, stop on exit (each process by its PID)."""

    def __init__(self, workdir: Path, gateways: int = 2, osd_gib: int = 20) -> None:
        self.dir = Path(workdir)
        self.gateways = gateways
        self.osd_gib = osd_gib
        self.procs: list[subprocess.Popen] = []
        self.endpoints: list[str] = []
        self.access_key = "bench" + uuid.uuid4().hex[:8]
        self.secret_key = uuid.uuid4().hex
        self.conf = self.dir / "ceph.conf"

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> RadosCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ensure_installed()
        self.dir.mkdir(parents=True, exist_ok=True)
        mon_port = free_port()
        fsid = str(uuid.uuid4())
        d = self.dir
        for sub in ("mon", "osd", "run", "log"):
            (d / sub).mkdir(exist_ok=True)
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
ms bind ipv4 = true
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
mon max pg per osd = 1000
osd pool default pg autoscale mode = off
mon warn on pool no redundancy = false
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
mon data = {d}/mon/$name
osd data = {d}/osd/$name
osd objectstore = bluestore
bluestore block path = {d}/osd/$name.block
bluestore block create = true
bluestore block size = {self.osd_gib << 30}
bluestore fsck on mount = false
osd memory target = 1073741824
bluestore cache autotune = false
bluestore cache size = 268435456
osd op num shards = 1
osd op num threads per shard = 2
osd crush chooseleaf type = 0
# With cephx off the OSD's own crush update at start is refused ("wrong fsid"): we
# place it in the crush map ourselves.
osd class update on start = false
osd crush update on start = false
keyring = {d}/keyring
[client]
rgw frontends = beast
rgw dns name = 127.0.0.1
rgw enable usage log = false
rgw thread pool size = 64
# Deleted objects' tails (shards over 4 MiB) wait 2 h for radosgw's garbage collector by
# default: benchmark rounds that seed, copy and delete GiBs filled a 64 GiB OSD in an hour.
rgw gc obj min wait = 0
rgw gc processor period = 15
rgw gc processor max time = 15
""")
        (d / "keyring").write_text("")
        conf = ["-c", str(self.conf)]
        self._run(["monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", "a",
                   f"[v1:127.0.0.1:{mon_port}]", str(d / "monmap")])
        self._run(["ceph-mon", *conf, "--mkfs", "-i", "a", "--monmap", str(d / "monmap")])
        self._spawn(["ceph-mon", *conf, "-f", "-i", "a"])
        self._wait(lambda: self._ceph("mon", "stat", timeout=5).returncode == 0, 60, "ceph-mon")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._ceph("osd", "new", osd_uuid).stdout.strip()
        osd_dir = d / "osd" / f"osd.{osd_id}"
        osd_dir.mkdir(exist_ok=True)
        self._run(["ceph-osd", *conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid])
        self._ceph("osd", "crush", "add-bucket", "localhost", "host")
        self._ceph("osd", "crush", "move", "localhost", "root=default")
        self._ceph("osd", "crush", "add", f"osd.{osd_id}", "1.0", "host=localhost")
        self._spawn(["ceph-osd", *conf, "-f", "-i", osd_id])
        self._wait(lambda: '"num_up_osds":1' in self._ceph(
            "osd", "stat", "-f", "json", timeout=5).stdout.replace(" ", ""), 90, "ceph-osd")
        for i in range(self.gateways):
            port = free_port()
            self._spawn(["radosgw", *conf, "-f", "-n", f"client.rgw{i}",
                         "--rgw-frontends", f"beast endpoint=127.0.0.1:{port}"])
            self.endpoints.append(f"http://127.0.0.1:{port}")
        for endpoint in self.endpoints:
            self._wait(lambda e=endpoint: urllib.request.urlopen(e, timeout=2).status == 200,
                       120, f"radosgw {endpoint}")
        self._run(["radosgw-admin", *conf, "user", "create", "--uid", "bench",
                   "--display-name", "bench", "--access-key", self.access_key,
                   "--secret", self.secret_key])

    def stop(self) -> None:
        """Stop what we started, newest first, each by its PID."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    # -- helpers -----------------------------------------------------------------------

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {out.stderr[-2000:]}")
        return out

    def _ceph(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = ["ceph", "-c", str(self.conf), "--connect-timeout", "5", *args]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 1, "", "timeout")
        return out

    def _spawn(self, cmd: list[str]) -> None:
        with open(self.dir / "log" / f"{Path(cmd[0]).name}-{len(self.procs)}.out", "wb") as log:
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL))

    def _wait(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) while "
                                       f"waiting for {what}; see {self.dir / 'log'}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {self.dir / 'log'}")


class AttachedCluster:
    """A cluster another process started (``--info``): counters and PIDs, never stopped."""

    def __init__(self, info: dict) -> None:
        self.dir = Path(info["dir"])
        self.endpoints = info["endpoints"]
        self._pids = info["pids"]

    def pids(self) -> list[int]:
        return list(self._pids)


def main() -> None:
    """Start a cluster for repeated benchmark runs (``bench_s3_servers.py --attach``):
    its endpoints, keys and PIDs go to ``--info``; it runs until SIGTERM/SIGINT or
    ``--seconds``, then every process is stopped by its PID."""
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--info", default=None, help="write the cluster's details here")
    parser.add_argument("--seconds", type=float, default=0)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--osd-gib", type=int, default=64)
    a = parser.parse_args()
    stop = {"now": False}

    def leave(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    with tempfile.TemporaryDirectory(prefix="rados-") as tmp, \
            RadosCluster(Path(tmp), gateways=a.gateways, osd_gib=a.osd_gib) as cluster:
        info = {"endpoints": cluster.endpoints, "access_key": cluster.access_key,
                "secret_key": cluster.secret_key, "pids": cluster.pids(),
                "dir": str(cluster.dir), "pid": os.getpid()}
        if a.info:
            path = Path(a.info)
            path.write_text(json.dumps(info))
            path.chmod(0o600)
        print(json.dumps({k: v for k, v in info.items() if k != "secret_key"}), flush=True)
        deadline = time.monotonic() + a.seconds if a.seconds else float("inf")
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.2)


if __name__ == "__main__":
    main()
