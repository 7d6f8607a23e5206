"""The seed's complete workflow against local services this script starts and stops.

redis-server, a moto S3 server and the reference ATProto PDS (with a fresh .test
account) run on 127.0.0.1; everything is stopped on exit, also on Ctrl-C, SIGTERM and
SIGHUP, and the temporary directory is removed. ``--keep`` leaves the services (and the
demo's data) running for trying the CLI, with their environment in ``.dev/env``;
``--up`` starts them without the demo; ``--status`` and ``--down`` look after them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import services  # noqa: E402

ACCESS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}
BUCKETS = ("datasets-bucket", "public-datasets")


class Interrupted:
    """Remembers a Ctrl-C (or SIGTERM, SIGHUP) even when Python swallows its
    KeyboardInterrupt.

    A signal that lands while a finalizer (``__del__``) runs raises there and is only
    printed as "Exception ignored"; the flag makes the next step stop anyway.
    """

    seen: int | None = None
    stopping = False  # while services stop, a signal is noted but does not cut cleanup short

    @classmethod
    def install(cls) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, cls.handle)

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.seen = signum
        if not cls.stopping:
            raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.seen:
            raise KeyboardInterrupt

    @classmethod
    def exit_code(cls) -> int:
        return 128 + (cls.seen or signal.SIGINT)


def step(text: str, *, stoppable: bool = True) -> None:
    if stoppable:
        Interrupted.check()
    print(f"\n==> {text}", flush=True)


def dev_dir() -> Path:
    """Where kept services live: $ATDATA_DEV_DIR, else .dev in the directory the demo was
    started from (scripts/demo passes it on)."""
    return Path(os.environ.get("ATDATA_DEV_DIR") or Path.cwd() / ".dev").resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo", description="The promotion workflow on local services: "
        "redis-server, moto S3 and the reference PDS with a fresh account.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--keep", action="store_true",
                      help="run the demo, then leave the services (and its data) running")
    mode.add_argument("--up", action="store_true", help="start the services only and keep them")
    mode.add_argument("--status", action="store_true", help="are the kept services up?")
    mode.add_argument("--down", action="store_true", help="stop the kept services")
    parser.add_argument("--env-file", type=Path,
                        help="write the environment to source here (default .dev/env)")
    parser.add_argument("--json", action="store_true", help="--status/--up as JSON")
    args = parser.parse_args(argv)
    if args.status:
        return status(args)
    if args.down:
        return down()
    Interrupted.install()
    keep = args.keep or args.up
    started: list[services.Service] = []
    work = dev_dir() if keep else Path(tempfile.mkdtemp(prefix="atdata-demo-"))
    if keep:
        if (work / "state.json").exists() and any_alive(load_state(work)):
            print(f"services are already up (scripts/demo --down stops them): source "
                  f"{work / 'env'}", file=sys.stderr)
            return 1
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    finished = False
    try:
        step("starting redis-server, a moto S3 server and the reference ATProto PDS")
        print("    (the first run installs Node 22 + @atproto/pds into ~/.cache: a few "
              "minutes)", flush=True)
        redis = services.start_redis(work / "redis", detach=keep)
        started.append(redis)
        moto = services.start_moto(in_process=False, detach=keep)
        started.append(moto)
        pds = services.start_pds(work / "pds", detach=keep)
        started.append(pds)
        account = services.create_account(pds.url, f"demo{int(time.time()) % 100000}")
        import boto3

        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", **{
            k.lower(): v for k, v in ACCESS.items()})
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
        print(f"    redis {redis.url}  s3 {moto.url}  pds {pds.url}  "
              f"account {account['handle']}")
        print(f"    work directory {work}", flush=True)
        if keep:
            write_state(work, started, account, args.env_file)
        if not args.up:
            run_workflow(work, redis.url, moto.url, pds.url, account)
        Interrupted.check()
        finished = True
    finally:
        Interrupted.stopping = True
        if not (keep and finished):
            with contextlib.suppress(OSError):  # stdout may be gone (`scripts/demo | head`)
                step("stopping the services this demo started", stoppable=False)
            for service in reversed(started):
                service.stop()
            shutil.rmtree(work, ignore_errors=True)
    env_file = args.env_file or work / "env"
    if args.json:
        print(json.dumps({"env_file": str(env_file), **load_state(work)["env"]}, indent=2))
    else:
        step("the services stay up", stoppable=False)
        print(f"    source {env_file}     # ATDATA_*, AWS_* and PATH for them\n"
              f"    {work / 'public.env'} is a credentials file for --credentials\n"
              "    scripts/demo --status / --down   # check / stop them")
    return 0


def write_state(work: Path, started: list[services.Service], account: dict,
                env_file: Path | None) -> None:
    """The kept services' PIDs (to stop exactly them) and the environment to source."""
    by_name = {s.name: s for s in started}
    env = {
        "ATDATA_REDIS_URL": by_name["redis"].url,
        "ATDATA_PDS_URL": by_name["pds"].url,
        "ATDATA_HANDLE": account["handle"],
        "ATDATA_PASSWORD": account["password"],
        "AWS_ENDPOINT": by_name["moto"].url,
        **ACCESS,
        "ATDATA_BUCKET": BUCKETS[0],
        "ATDATA_PUBLIC_BUCKET": BUCKETS[1],
    }
    state = {"env": env, "pids": {s.name: s.proc.pid for s in started if s.proc},
             "urls": {s.name: s.url for s in started}}
    (work / "state.json").write_text(json.dumps(state, indent=2))
    (work / "public.env").write_text(
        "".join(f"{k}={env[k]}\n" for k in ("AWS_ENDPOINT", *ACCESS)))
    lines = [f"export {k}={v}" for k, v in env.items()]
    lines.append(f'export PATH="{REPO / ".venv" / "bin"}:$PATH"')
    text = "# written by scripts/demo; stop the services with scripts/demo --down\n"
    for target in {work / "env", env_file or work / "env"}:
        target.write_text(text + "\n".join(lines) + "\n")


def load_state(work: Path) -> dict:
    try:
        return json.loads((work / "state.json").read_text())
    except (OSError, ValueError):
        return {"env": {}, "pids": {}, "urls": {}}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def any_alive(state: dict) -> bool:
    return any(alive(pid) for pid in state["pids"].values())


def answers(name: str, url: str) -> bool:
    try:
        if name == "redis":
            import socket

            host, port = url.removeprefix("redis://").split("/")[0].split(":")
            with socket.create_connection((host, int(port)), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        probe = "/xrpc/_health" if name == "pds" else "/moto-api/"
        return urllib.request.urlopen(url + probe, timeout=2).status == 200
    except OSError:
        return False


def status(args: argparse.Namespace) -> int:
    work = dev_dir()
    state = load_state(work)
    rows = {name: {"pid": pid, "url": state["urls"].get(name), "running": alive(pid),
                   "answers": answers(name, state["urls"].get(name, ""))}
            for name, pid in state["pids"].items()}
    up = bool(rows) and all(r["answers"] for r in rows.values())
    if args.json:
        print(json.dumps({"up": up, "services": rows, "env_file": str(work / "env")},
                         indent=2))
    elif not rows:
        print(f"no kept services (state: {work}); start them with scripts/demo --up")
    else:
        for name, r in rows.items():
            print(f"{name:<6} pid {r['pid']:<8} {r['url']:<32} "
                  f"{'up' if r['answers'] else 'not answering'}")
        if up:
            print(f"source {work / 'env'}")
    return 0 if up else 3


def down() -> int:
    """SIGTERM the PIDs recorded at --keep/--up (only those), then remove their folder."""
    work = dev_dir()
    state = load_state(work)
    if not state["pids"]:
        print(f"no kept services (state: {work})")
        return 0
    for name, pid in state["pids"].items():
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def run_workflow(work: Path, redis_url: str, s3_url: str, pds_url: str, account: dict) -> None:
    import numpy as np
    import webdataset as wds
    from numpy.typing import NDArray

    import atdata_async.sync as atdata
    from atdata_async.sync.atmosphere import AtmosphereClient, AtmosphereIndex
    from atdata_async.sync.local import LocalIndex, S3DataStore
    from atdata_async.sync.promote import promote_to_atmosphere
    from tests.samples import FeatureSample  # the class the docs' examples import too

    assert NDArray is not None
    step("1-2. writing a 4-shard WebDataset of 1000 FeatureSamples")
    rng = np.random.default_rng(0)
    samples = [FeatureSample(features=rng.standard_normal(128).astype(np.float32), label=i % 10)
               for i in range(1000)]
    pattern = str(work / "features-{000000..000003}.tar")
    for shard in range(4):
        with wds.writer.TarWriter(str(work / f"features-{shard:06d}.tar")) as sink:
            for i in range(shard * 250, shard * 250 + 250):
                sink.write({**samples[i].as_wds, "__key__": f"{i:06d}"})

    step("3. an index in Redis with an S3 data store")
    creds = {"AWS_ENDPOINT": s3_url, **ACCESS}
    store = S3DataStore(credentials=creds, bucket=BUCKETS[0])
    local_index = LocalIndex(redis_url, data_store=store)

    step("4. publishing the schema and inserting the dataset (shards uploaded byte for byte)")
    print("    schema:", local_index.publish_schema(FeatureSample, version="1.0.0"))
    dataset = atdata.Dataset[FeatureSample](pattern)
    local_entry = local_index.insert_dataset(dataset, name="feature-vectors-v1",
                                             prefix="features")
    for url in local_entry.data_urls:
        print(f"    {url}  sha256 {local_entry.checksums[url][:16]}...")

    step("5. promoting to the atmosphere, copying the shards to a public bucket")
    client = AtmosphereClient(pds_url)
    client.login(account["handle"], account["password"])
    new_store = S3DataStore(credentials=creds, bucket=BUCKETS[1])
    at_uri = promote_to_atmosphere(
        local_entry, local_index, client, data_store=new_store,
        description="Feature vectors for classification", tags=["features", "embeddings"],
        license="MIT",
    )
    print(f"    Dataset published: {at_uri}")

    step("6. reading it back from the PDS: the dataset record and its schema record")
    entry = AtmosphereIndex(client).get_dataset(at_uri)
    print(f"    Name: {entry.name}")
    print(f"    Schema: {entry.schema_ref}")
    print(f"    URLs: {entry.data_urls}")
    record = client.get_record(*at_uri.split("/")[-2:])
    print(json.dumps(record["value"], indent=2))
    schema = client.get_record(*entry.schema_ref.split("/")[-2:])
    print(json.dumps(schema["value"], indent=2))
    back = list(atdata.Dataset[FeatureSample](entry.data_urls, store=new_store))
    assert len(back) == 1000 and np.array_equal(back[42].features, samples[42].features)
    print(f"    read {len(back)} samples back from the copied shards: identical")
    for closable in (client, store, new_store, local_index):
        closable.close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        name = signal.Signals(Interrupted.seen or signal.SIGINT).name
        with contextlib.suppress(OSError):
            print(f"\ninterrupted ({name}); services stopped, temporary files removed",
                  file=sys.stderr)
        sys.exit(Interrupted.exit_code())
