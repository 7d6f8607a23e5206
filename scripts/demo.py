"""The seed's complete workflow against local services this script starts and stops.

redis-server, a moto S3 server and the reference ATProto PDS (with a fresh .test
account) run on 127.0.0.1; everything is stopped on exit, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import numpy as np  # noqa: E402
import webdataset as wds  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

import atdata_async.sync as atdata  # noqa: E402
from atdata_async.sync.atmosphere import AtmosphereClient, AtmosphereIndex  # noqa: E402
from atdata_async.sync.local import LocalIndex, S3DataStore  # noqa: E402
from atdata_async.sync.promote import promote_to_atmosphere  # noqa: E402
from tests import services  # noqa: E402


class Interrupted:
    """Remembers a Ctrl-C even when Python swallows its KeyboardInterrupt.

    A signal that lands while a finalizer (``__del__``) runs raises there and is only
    printed as "Exception ignored"; the flag makes the next step stop anyway.
    """

    seen = False
    stopping = False  # while services stop, a Ctrl-C is noted but does not cut cleanup short

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.seen = True
        if not cls.stopping:
            raise KeyboardInterrupt

    @classmethod
    def check(cls) -> None:
        if cls.seen:
            raise KeyboardInterrupt


def step(text: str, *, stoppable: bool = True) -> None:
    if stoppable:
        Interrupted.check()
    print(f"\n==> {text}", flush=True)


@atdata.packable
class FeatureSample:
    features: NDArray
    label: int


def main() -> int:
    started: list[services.Service] = []
    with tempfile.TemporaryDirectory(prefix="atdata-demo-") as tmp:
        work = Path(tmp)
        try:
            step("starting redis-server, a moto S3 server and the reference ATProto PDS")
            print("    (the first run installs Node 22 + @atproto/pds into ~/.cache: a few "
                  "minutes)", flush=True)
            redis = services.start_redis(work / "redis")
            started.append(redis)
            moto = services.start_moto(in_process=False)
            started.append(moto)
            pds = services.start_pds(work / "pds")
            started.append(pds)
            account = services.create_account(pds.url, f"demo{int(time.time()) % 100000}")
            s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                              aws_access_key_id="demo", aws_secret_access_key="demo")
            for bucket in ("datasets-bucket", "public-datasets"):
                s3.create_bucket(Bucket=bucket)
            print(f"    redis {redis.url}  s3 {moto.url}  pds {pds.url}  "
                  f"account {account['handle']}")
            run_workflow(work, redis.url, moto.url, pds.url, account)
            Interrupted.check()
        finally:
            Interrupted.stopping = True
            with contextlib.suppress(OSError):  # stdout may be gone (`scripts/demo | head`)
                step("stopping the services this demo started", stoppable=False)
            for service in reversed(started):
                service.stop()
    return 130 if Interrupted.seen else 0


def run_workflow(work: Path, redis_url: str, s3_url: str, pds_url: str, account: dict) -> None:
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
    creds = {"AWS_ENDPOINT": s3_url, "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}
    store = S3DataStore(credentials=creds, bucket="datasets-bucket")
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
    new_store = S3DataStore(credentials=creds, bucket="public-datasets")
    at_uri = promote_to_atmosphere(
        local_entry, local_index, client, data_store=new_store,
        description="Feature vectors for classification", tags=["features", "embeddings"],
        license="MIT",
    )
    print(f"    Dataset published: {at_uri}")

    step("6. reading it back from the PDS")
    entry = AtmosphereIndex(client).get_dataset(at_uri)
    print(f"    Name: {entry.name}")
    print(f"    Schema: {entry.schema_ref}")
    print(f"    URLs: {entry.data_urls}")
    record = client.get_record(*at_uri.split("/")[-2:])
    print(json.dumps(record["value"], indent=2))
    back = list(atdata.Dataset[FeatureSample](entry.data_urls, store=new_store))
    assert len(back) == 1000 and np.array_equal(back[42].features, samples[42].features)
    print(f"    read {len(back)} samples back from the copied shards: identical")
    for closable in (client, store, new_store, local_index):
        closable.close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, Interrupted.handle)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; services stopped", file=sys.stderr)
        sys.exit(130)
