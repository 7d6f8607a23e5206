"""Shared benchmark plumbing: the local services, synthetic shards, child-process runs,
the results table."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def creds(endpoint: str) -> dict[str, str]:
    """Credentials for a moto endpoint (moto accepts any; these never leave the machine)."""
    return {"AWS_ENDPOINT": endpoint, "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def boto(endpoint: str) -> Any:
    """A plain boto3 client, to set up and inspect buckets around the measured code."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench-secret")


def new_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    boto(endpoint).create_bucket(Bucket=name)
    return name


@dataclass
class Services:
    """What ``local_services`` started; ``account`` is a fresh account on ``pds``."""

    redis: Any = None
    motos: list[Any] = field(default_factory=list)
    pds: Any = None
    account: dict | None = None

    @property
    def session(self) -> dict[str, str]:
        """The account's session, as ``AtmosphereClient.login(session=...)`` takes it."""
        assert self.account is not None
        return {k: self.account[k] for k in ("did", "handle", "accessJwt", "refreshJwt")}


@contextlib.contextmanager
def local_services(work: Path, *, redis: bool = True, motos: int = 0, pds: bool = False,
                   account: bool = True) -> Iterator[Services]:
    """redis-server, ``motos`` moto_server processes and the reference PDS (with a fresh
    account unless ``account=False``), each a process of its own on 127.0.0.1 under
    ``work``; every one started is stopped by its PID, last first, however the block ends
    (one started before a later one failed to start included)."""
    from tests import services

    with contextlib.ExitStack() as stack:
        def started(service: Any) -> Any:
            stack.callback(service.stop)
            return service

        out = Services()
        if redis:
            out.redis = started(services.start_redis(work / "redis"))
        out.motos = [started(services.start_moto(in_process=False)) for _ in range(motos)]
        if pds:
            out.pds = started(services.start_pds(work / "pds"))
            if account:
                out.account = services.create_account(out.pds.url,
                                                      f"bench{uuid.uuid4().hex[:6]}")
        yield out


def write_tar_shards(directory: Path, shards: int, shard_mib: float) -> list[Path]:
    """Tar shards of random msgpack-named members (~shard_mib each), reused across runs."""
    directory.mkdir(parents=True, exist_ok=True)
    member = min(MIB, int(shard_mib * MIB))
    members = max(1, int(shard_mib * MIB) // member)
    paths = []
    for s in range(shards):
        path = directory / f"shard-{s:06d}.tar"
        if not path.exists():
            with tarfile.open(path, "w") as tar:
                for m in range(members):
                    info = tarfile.TarInfo(f"{s * members + m:09d}.msgpack")
                    info.size = member
                    tar.addfile(info, io.BytesIO(os.urandom(member)))
        paths.append(path)
    return paths


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from
    the parent across fork+exec, so a child would report its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], dict]) -> dict:
    """Run fn, return its dict plus wall seconds, peak RSS and RSS before fn (MiB)."""
    before = peak_rss_mib()
    start = time.perf_counter()
    extra = fn() or {}
    wall = time.perf_counter() - start
    return {"wall": wall, "peak_rss_mib": peak_rss_mib(), "start_rss_mib": before, **extra}


def run_child(script: str, args: list[str]) -> dict:
    """Run one variant in a fresh interpreter so its peak RSS is its own."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"variant {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(title: str, rows: list[dict], total_bytes: int, baseline: str) -> None:
    base = next(r for r in rows if r["name"] == baseline)
    print(f"\n{title}")
    print(f"{'variant':<34} {'wall s':>8} {'MiB/s':>8} {'peak RSS MiB':>13} {'growth':>7} "
          f"{'speed vs baseline':>18}")
    for r in rows:
        mibs = total_bytes / MIB / r["wall"]
        growth = r["peak_rss_mib"] - r["start_rss_mib"]
        print(f"{r['name']:<34} {r['wall']:>8.2f} {mibs:>8.1f} {r['peak_rss_mib']:>13.0f} "
              f"{growth:>7.0f} {base['wall'] / r['wall']:>17.2f}x")


def kill_when_journaled(argv: list[str], redis_url: str, pattern: str, settled: int,
                        what: str) -> float:
    """Run ``argv`` as a child and SIGKILL it once ``settled`` shards are journaled as done
    under journals matching ``pattern``; the seconds it ran (a crash at a chosen point)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    start = time.perf_counter()
    try:
        while True:
            keys = [k for k in r.scan_iter(match=pattern, count=100)
                    if not k.endswith(b":lease")]
            if sum(1 for k in keys for f in r.hkeys(k) if f.startswith(b"s:")) >= settled:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the {what} ended before the kill: {proc.communicate()}")
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        r.close()
    return time.perf_counter() - start


def throttle_store(delay: float, methods: tuple[str, ...]) -> None:
    """Slow each named S3DataStore method by ``delay`` seconds a call, so that a kill
    lands mid-run on a machine too fast to catch it (the children of the resume benches)."""
    import anyio

    from atdata_async._backends.s3_store import S3DataStore

    def slowed(method: Any) -> Any:
        async def run(self: Any, *a: Any, **kw: Any) -> Any:
            await anyio.sleep(delay)
            return await method(self, *a, **kw)
        return run

    for name in methods if delay else ():
        setattr(S3DataStore, name, slowed(getattr(S3DataStore, name)))
