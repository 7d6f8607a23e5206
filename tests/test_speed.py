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

    from atdata_async import _store

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
