"""Start-up and shared resources: what makes a fresh process fast (issue #10)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atdata_async.local import S3DataStore

HEAVY = ("aioboto3", "botocore", "redis", "httpx", "numpy", "anyio", "msgspec", "webdataset")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["promote", "--help"]])
def test_cli_help_and_version_import_no_heavy_dependency(argv):
    code = (f"import sys, runpy; sys.argv = ['atdata-async', *{argv!r}]\n"
            "try:\n    runpy.run_module('atdata_async.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "import json; print(json.dumps(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    if argv == ["--version"]:
        assert out.stdout.startswith("atdata-async ")


def test_the_package_loads_its_heavy_names_on_first_use():
    code = ("import sys, atdata_async as a; before = 'numpy' in sys.modules;"
            "a.packable; print(before, 'numpy' in sys.modules, 'Dataset' in dir(a))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "True", "True"]


@pytest.mark.anyio
async def test_stores_of_one_endpoint_and_account_share_one_client(s3_credentials, bucket,
                                                                   raw_s3):
    a = S3DataStore(s3_credentials, bucket=bucket)
    b = S3DataStore(s3_credentials, bucket=bucket)
    other = S3DataStore({**s3_credentials, "AWS_ACCESS_KEY_ID": "someone-else"}, bucket=bucket)
    assert await a.client() is await b.client()
    assert await other.client() is not await a.client()
    await a.put_bytes("shared/x", b"x")
    await b.put_bytes("shared/y", b"yy")
    await b.put_bytes("shared/z", b"zz")
    assert (a.request_count, b.request_count) == (1, 2)  # each counts its own
    await a.aclose()
    assert await b.get_bytes(f"s3://{bucket}/shared/y") == b"yy"  # b's client is still open
    client = await b.client()
    await b.aclose()
    await other.aclose()
    again = S3DataStore(s3_credentials, bucket=bucket)
    assert await again.client() is not client  # the last user closed it; a new one opens
    assert await again.get_bytes(f"s3://{bucket}/shared/x") == b"x"
    await again.aclose()


@pytest.mark.anyio
async def test_a_body_with_a_known_sha256_is_read_once(s3_credentials, bucket, raw_s3,
                                                       monkeypatch):
    """Signed with the digest we pass, not hashed again by botocore (which would read the
    whole body once more before sending it)."""
    import hashlib

    from atdata_async._backends import s3_store as _store

    reads = []
    original = _store._BufferReader.readinto

    def counting(self, buffer):
        n = original(self, buffer)
        reads.append(n)
        return n

    monkeypatch.setattr(_store._BufferReader, "readinto", counting)
    data = bytes(range(256)) * 4096  # 1 MiB
    async with S3DataStore(s3_credentials, bucket=bucket) as store:
        await store.put_bytes("once/k", data, hashlib.sha256(data).hexdigest())
        assert sum(reads) == len(data)
        reads.clear()
        await store.put_bytes("once/k2", data)  # no digest: botocore hashes, then sends
        assert sum(reads) == 2 * len(data)
    assert raw_s3.get_object(Bucket=bucket, Key="once/k")["Body"].read() == data


@pytest.mark.pds
def test_login_once_then_commands_use_the_saved_session(redis_url, pds, pds_account, tmp_path):
    import os
    import stat

    config = tmp_path / "config"
    env = {**os.environ, "ATDATA_REDIS_URL": redis_url, "ATDATA_PDS_URL": pds.url,
           "ATDATA_HANDLE": pds_account["handle"], "ATDATA_CONFIG_DIR": str(config),
           "ATDATA_PASSWORD": pds_account["password"]}

    def cli(*args, env=env):
        return subprocess.run([sys.executable, "-W", "error", "-m", "atdata_async.cli", *args],
                              env=env, capture_output=True, text=True, timeout=120)

    out = cli("--json", "login")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["did"] == pds_account["did"]
    saved = config / "sessions.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) == 0o700
    text = saved.read_text()
    assert pds_account["password"] not in text and "accessJwt" in text
    assert pds_account["password"] not in out.stdout + out.stderr
    # No password from here on: the saved session is enough (and its tokens are never shown)
    without = {k: v for k, v in env.items() if k != "ATDATA_PASSWORD"}
    remote = cli("--json", "schemas", "--remote", env=without)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(text)[pds.url]["accessJwt"] not in remote.stdout + remote.stderr
    # Another handle on the same PDS does not get this account's session
    other = cli("schemas", "--remote", env={**without, "ATDATA_HANDLE": "someone.test"})
    assert other.returncode == 4, other.stderr
    assert cli("logout", env=without).returncode == 0
    assert cli("schemas", "--remote", env=without).returncode == 4  # must log in again


@pytest.mark.anyio
async def test_a_shard_with_a_recorded_sha256_streams_across_endpoints(
        moto_server, second_moto_server, monkeypatch):
    """GET -> PUT straight through: no buffer of the shard's size, nothing hashed here,
    the PUT checked by the recorded digest (or the recorded ETag's md5, unsigned); the
    source must still be that version."""
    import hashlib

    from atdata_async import SourceChangedError
    from atdata_async._backends import s3_store as _store
    from tests.conftest import make_bucket, make_credentials

    src_bucket, dst_bucket = make_bucket(moto_server.url), make_bucket(second_moto_server.url)
    data = bytes(range(256)) * 12_000  # ~3 MiB
    digest = hashlib.sha256(data).hexdigest()
    hashed = []
    monkeypatch.setattr(_store, "_hash_into", lambda *a: hashed.append(a))
    async with S3DataStore(make_credentials(moto_server.url), bucket=src_bucket) as source, \
            S3DataStore(make_credentials(second_moto_server.url), bucket=dst_bucket) as dest:
        etag = await source.put_bytes("in/x.tar", data, digest)
        url = source.url("in/x.tar")
        done = await dest.copy_from(source, url, "out/x.tar", len(data), known_sha256=digest,
                                    source_etag=etag)
        assert (done.size, done.sha256, done.verified) == (len(data), digest, True)
        assert await dest.get_bytes(done.url) == data
        assert (source.request_count, dest.request_count) == (2, 2)  # PUT+GET, PUT+GET back
        assert not hashed
        await source.put_bytes("in/x.tar", b"another version")
        with pytest.raises(SourceChangedError):
            await dest.copy_from(source, url, "out/y.tar", len(data), known_sha256=digest,
                                 source_etag=etag)


def test_the_pace_halves_on_throttling_and_climbs_back_while_it_pays():
    from atdata_async._model.pace import Pace, is_throttle

    assert is_throttle(503, None) and is_throttle(400, "SlowDown")
    assert not is_throttle(500, "InternalError")
    pace = Pace(8, window=1.0, cooldown=2.0)
    assert pace.limit == 8
    assert pace.throttled(10.0) == 4
    assert pace.throttled(10.5) == 4  # one burst is one signal
    assert pace.transferred(100, 11.0) == 4  # inside the cooldown: no climb
    now, rate = 13.0, 100
    assert pace.transferred(0, now) == 5  # past the cooldown: one step per window
    for _ in range(2):  # throughput grows with each step: keep climbing
        now += 1.0
        rate *= 2
        pace.transferred(rate, now)
    assert pace.limit == 7
    now += 1.0
    pace.transferred(rate // 4, now)  # the last step made it slower: undo it and hold
    assert pace.limit == 6
    now += 1.0
    pace.transferred(rate, now)
    assert pace.limit == 6
    for _ in range(20):
        now += 1.0
        pace.transferred(10 * rate, now)
    assert pace.limit == 8  # never above the configured concurrency


@pytest.mark.anyio
async def test_slowdown_answers_lower_the_stores_concurrency(moto_server, bucket):
    from tests.conftest import make_credentials
    from tests.faultproxy import Fault, FaultProxy

    with FaultProxy(moto_server.url) as proxy:
        proxy.add(Fault("status", method="PUT", status=503, times=2))
        async with S3DataStore(make_credentials(proxy.url), bucket=bucket,
                               max_concurrency=8) as store:
            assert store.buffers().total_tokens == 8
            await store.put_bytes("slow/k", b"x")  # retried by botocore, then fine
            # halved (once per cooldown; on a slow machine the retry may come after the
            # cooldown and count as a second signal, or climb one step back)
            assert store.pace.throttles == 2 and store.buffers().total_tokens <= 5


def test_max_memory_bounds_the_buffers_in_flight():
    store = S3DataStore({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, bucket="b",
                        part_size=16 << 20, multipart_threshold=32 << 20, max_concurrency=8,
                        max_memory=100 << 20)
    assert store.memory_tokens() == 3 and store.buffers().total_tokens == 3


def test_streamed_copies_count_their_chunk_buffers_in_max_memory_and_back_off():
    """A streamed copy holds STREAM_BUFFER, not a part: max_memory lets 16 streams run
    (at most half of it), the buffers keep the rest once the store streams, and a
    SlowDown halves the streams as it halves the buffers."""
    from atdata_async._backends.s3_store import STREAM_BUFFER

    creds = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    store = S3DataStore(creds, bucket="b", part_size=16 << 20, multipart_threshold=32 << 20,
                        max_concurrency=8, max_memory=100 << 20)
    assert store.buffers().total_tokens == 3
    assert store.stream_slots().total_tokens == 16  # 16 x 2 MiB, not 16 x 32 MiB
    assert store.buffers().total_tokens == (100 << 20) - 16 * STREAM_BUFFER >> 25 == 2
    tight = S3DataStore(creds, bucket="b", max_concurrency=8, max_memory=40 << 20)
    assert tight.stream_slots().total_tokens == (20 << 20) // STREAM_BUFFER == 10
    assert tight.buffers().total_tokens == 1
    free = S3DataStore(creds, bucket="b", max_concurrency=8, max_streamed_copies=12)
    assert free.stream_slots().total_tokens == 12 and free.buffers().total_tokens == 8
    free._throttled()
    assert free.stream_slots().total_tokens == 6 and free.buffers().total_tokens == 4
