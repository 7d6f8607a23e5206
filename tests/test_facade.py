"""The sync facade: same signatures as the async core, and the seed's steps 1-4."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import atdata_async
import atdata_async.atmosphere
import atdata_async.local
import atdata_async.promote
import atdata_async.sync
import atdata_async.sync.atmosphere
import atdata_async.sync.local
import atdata_async.sync.promote
from atdata_async.sync._portal import Facade

PAIRS = [
    (atdata_async.sync.local, atdata_async.local),
    (atdata_async.sync.atmosphere, atdata_async.atmosphere),
    (atdata_async.sync, atdata_async),
    (atdata_async.sync.promote, atdata_async.promote),
]


def facade_pairs():
    for sync_mod, async_mod in PAIRS:
        for name in sync_mod.__all__:
            sync_obj, async_obj = getattr(sync_mod, name), getattr(async_mod, name)
            if isinstance(sync_obj, type) and issubclass(sync_obj, Facade):
                yield f"{sync_mod.__name__}.{name}", sync_obj, async_obj


@pytest.mark.parametrize(("name", "facade", "core"), list(facade_pairs()))
def test_facade_signatures_match_the_async_core(name, facade, core):
    assert inspect.signature(facade) == inspect.signature(core), name
    public = [m for m, v in vars(core).items() if not m.startswith("_")
              and (inspect.iscoroutinefunction(v) or inspect.isasyncgenfunction(v))]
    assert public, name
    for method in public:
        sync_method = getattr(facade, method)
        assert not inspect.iscoroutinefunction(sync_method), f"{name}.{method}"
        # same parameters; return annotations differ (a list or iterator, not an awaitable)
        assert (inspect.signature(sync_method).parameters
                == inspect.signature(getattr(core, method)).parameters), method


@pytest.mark.parametrize("name", ["promote_to_atmosphere", "preview_promotion",
                                  "cleanup_promotions", "promote_many"])
def test_promote_facade_has_the_async_signature(name):
    sync_fn = getattr(atdata_async.sync.promote, name)
    async_fn = getattr(atdata_async.promote, name)
    assert inspect.iscoroutinefunction(async_fn) and not inspect.iscoroutinefunction(sync_fn)
    assert inspect.signature(sync_fn) == inspect.signature(async_fn)


def test_non_facade_names_are_the_same_objects():
    for sync_mod, async_mod in PAIRS:
        for name in sync_mod.__all__:
            obj = getattr(sync_mod, name)
            if not (isinstance(obj, type) and issubclass(obj, Facade)) and name not in (
                    "promote_to_atmosphere", "preview_promotion", "cleanup_promotions",
                    "promote_many"):
                assert obj is getattr(async_mod, name), name


SEED_STEPS_1_TO_4 = """
import numpy as np
from numpy.typing import NDArray
import atdata_async.sync as atdata
from atdata_async.sync.local import LocalIndex, S3DataStore
import webdataset as wds

# 1. Define sample type
@atdata.packable
class FeatureSample:
    features: NDArray
    label: int

# 2. Create local dataset
samples = [
    FeatureSample(
        features=np.random.randn(128).astype(np.float32),
        label=i % 10,
    )
    for i in range(1000)
]
with wds.writer.TarWriter("features.tar") as sink:
    for i, s in enumerate(samples):
        sink.write({**s.as_wds, "__key__": f"{i:06d}"})

# 3. Set up index with S3 data store
store = S3DataStore(
    credentials={
        "AWS_ENDPOINT": "http://localhost:9000",
        "AWS_ACCESS_KEY_ID": "minioadmin",
        "AWS_SECRET_ACCESS_KEY": "minioadmin",
    },
    bucket="datasets-bucket",
)
local_index = LocalIndex(data_store=store)

# 4. Publish schema and insert dataset
local_index.publish_schema(FeatureSample, version="1.0.0")
dataset = atdata.Dataset[FeatureSample]("features.tar")
local_entry = local_index.insert_dataset(dataset, name="feature-vectors-v1", prefix="features")
"""


def seed_with_test_endpoints(endpoint: str, redis_url: str, bucket: str) -> str:
    """The seed's text; only where it points (endpoint, Redis, bucket) is redirected."""
    return (SEED_STEPS_1_TO_4.replace("http://localhost:9000", endpoint)
            .replace("LocalIndex(data_store=store)",
                     f"LocalIndex({redis_url!r}, data_store=store)")
            .replace('"datasets-bucket"', repr(bucket)))


def test_seed_steps_1_to_4_run_through_the_sync_facade(moto_server, redis_url, bucket, raw_s3,
                                                       tmp_path):
    script = seed_with_test_endpoints(moto_server.url, redis_url, bucket) + textwrap.dedent("""
        entry = local_index.get_entry_by_name("feature-vectors-v1")
        assert entry == local_entry
        back = list(atdata.Dataset[FeatureSample](entry.data_urls, store=store))
        assert len(back) == 1000 and back[3].label == 3
        np.testing.assert_array_equal(back[7].features, samples[7].features)
        print(entry.data_urls[0], entry.checksums[entry.data_urls[0]])
    """)
    out = subprocess.run([sys.executable, "-W", "error", "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    assert "ResourceWarning" not in out.stderr and "Unclosed" not in out.stderr, out.stderr
    url, digest = out.stdout.split()
    key = url.removeprefix(f"s3://{bucket}/")
    assert key.startswith("features/data--")
    body = raw_s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == (tmp_path / "features.tar").read_bytes()
    assert digest == hashlib.sha256(body).hexdigest()


def test_facade_objects_pass_through_as_cores_and_hide_secrets(s3_credentials, bucket):
    store = atdata_async.sync.local.S3DataStore(s3_credentials, bucket=bucket)
    index = atdata_async.sync.local.LocalIndex("redis://127.0.0.1:1/0", data_store=store)
    assert isinstance(index._core.data_store, atdata_async.local.S3DataStore)
    assert "testing-secret" not in repr(store) and "testing-secret" not in repr(index)
    assert store.bucket == bucket
    store.put_bytes("hello", b"world")
    assert store.get_bytes(f"s3://{bucket}/hello") == b"world"
    store.close()


def test_a_store_dropped_without_close_is_closed_at_exit(s3_credentials, bucket):
    """Its S3 client lives on in s3_store's shared clients after the facade object is
    gone; the portal's exit must still close it (else "Unclosed client session")."""
    script = textwrap.dedent(f"""
        import atexit, gc, json
        import aiohttp

        def count() -> None:  # registered first: runs after the portal's own exit
            alive = [s for s in gc.get_objects() if isinstance(s, aiohttp.ClientSession)]
            print(json.dumps([len(alive), sum(not s.closed for s in alive)]))

        atexit.register(count)
        from atdata_async.sync.local import S3DataStore

        store = S3DataStore({dict(s3_credentials)!r}, bucket={bucket!r})
        store.put_bytes("dropped", b"x")
        del store
        gc.collect()
    """)
    out = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    _alive, unclosed = json.loads(out.stdout.strip().splitlines()[-1])
    assert unclosed == 0  # was 1: the dropped store's client, never closed
    assert "Unclosed" not in out.stderr, out.stderr


def test_ctrl_c_in_a_facade_call_cancels_the_task_and_waits_for_its_cleanup():
    import signal
    import threading

    import anyio

    from atdata_async.sync import _portal as _portal

    events: list[str] = []
    started = threading.Event()

    async def long_job() -> None:
        try:
            events.append("started")
            started.set()
            await anyio.sleep(30)
            events.append("finished")  # never: the call is interrupted
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.3)  # a shielded cleanup, like a multipart abort
            events.append("cleaned up")

    main = threading.main_thread().ident
    assert main == threading.get_ident()

    def ctrl_c_once_started() -> None:
        if started.wait(30):
            time.sleep(0.2)  # let the caller reach its wait for the result
            signal.pthread_kill(main, signal.SIGINT)

    # Python raises KeyboardInterrupt only where SIGINT has its default handler; a run
    # started in the background of a non-interactive shell inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=ctrl_c_once_started)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _portal.call(long_job)
    finally:
        presser.join()
        signal.signal(signal.SIGINT, previous)
    assert events == ["started", "cleaned up"]


def test_sync_datasets_stream_shards_and_can_stop_early(s3_credentials, bucket, raw_s3,
                                                        tmp_path):
    from atdata_async._backends.streams import READ_AHEAD
    from atdata_async.sync.local import S3DataStore
    from tests.conftest import TEST_PART
    from tests.samples import FeatureSample, write_shards

    paths = write_shards(tmp_path, 2, 1500)
    for path in paths:
        raw_s3.upload_file(str(path), bucket, f"sync/{path.name}")
    store = S3DataStore(s3_credentials, bucket=bucket, part_size=TEST_PART)
    ds = atdata_async.sync.Dataset[FeatureSample]([f"s3://{bucket}/sync/{p.name}"
                                                   for p in paths], store=store)
    try:
        before = store._core.request_count
        for n, _ in enumerate(ds, start=1):
            if n == 10:
                break
        # a HEAD, then ranges for one read-ahead: not the 3.8 MB shard, nor the second one
        assert store._core.request_count - before == 1 + READ_AHEAD // TEST_PART
        keys = [key for key, _ in ds.items()]
        assert keys == [f"{i:06d}" for i in range(3000)]
    finally:
        store.close()
