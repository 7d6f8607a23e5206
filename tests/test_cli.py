"""The atdata-async CLI driven end to end against redis-server, moto S3 and the PDS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from atdata_async.sync import Dataset
from atdata_async.sync.local import LocalIndex, S3DataStore
from tests.conftest import make_bucket
from tests.samples import FeatureSample, write_shards

pytestmark = pytest.mark.pds


@pytest.fixture
def cli_env(redis_url, s3_credentials, bucket, pds, pds_account, tmp_path):
    with S3DataStore(s3_credentials, bucket=bucket) as store, \
            LocalIndex(redis_url, data_store=store) as index:
        index.publish_schema(FeatureSample, version="1.0.0")
        paths = write_shards(tmp_path, 3, 10)
        index.insert_dataset(Dataset[FeatureSample]([str(p) for p in paths]),
                             name="cli-data", metadata={"split": "test"})
    creds = tmp_path / "s3.env"
    creds.write_text("".join(f"{k}={v}\n" for k, v in s3_credentials.items()))
    return {
        **os.environ, "ATDATA_REDIS_URL": redis_url, "ATDATA_PDS_URL": pds.url,
        "ATDATA_HANDLE": pds_account["handle"], "ATDATA_PASSWORD": pds_account["password"],
        "CREDS": str(creds), "PYTHONPATH": os.getcwd(),
    }


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-m", "atdata_async.cli", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def test_ls_and_schemas(cli_env):
    out = cli(cli_env, "ls")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cli-data") and "3 shards" in out.stdout
    rows = json.loads(cli(cli_env, "--json", "ls").stdout)
    assert rows[0]["name"] == "cli-data" and rows[0]["shards"] == 3 and rows[0]["bytes"] > 0
    assert "FeatureSample@1.0.0" in cli(cli_env, "schemas").stdout
    remote = cli(cli_env, "--json", "schemas", "--remote")
    assert remote.returncode == 0 and json.loads(remote.stdout) == []


def test_dry_run_writes_nothing_then_promote_and_show(cli_env):
    dry = cli(cli_env, "--json", "promote", "cli-data", "--dry-run", "--tag", "a")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["schema"]["action"] == "publish" and len(plan["shards"]) == 3
    assert plan["record"]["tags"] == ["a"] and plan["copies"] is False
    assert json.loads(cli(cli_env, "--json", "schemas", "--remote").stdout) == []

    out = cli(cli_env, "promote", "cli-data", "--tag", "a", "--tag", "b", "--license", "MIT",
              "--description", "cli test")
    assert out.returncode == 0, out.stderr
    uri = out.stdout.strip().removeprefix("published ")
    assert uri.startswith("at://did:") and "science.alt.dataset.entry" in uri
    assert out.stderr == ""  # not a TTY: no progress line

    shown = json.loads(cli(cli_env, "--json", "show", uri).stdout)
    assert (shown["name"], shown["tags"], shown["license"]) == ("cli-data", ["a", "b"], "MIT")
    assert shown["metadata"] == {"split": "test"} and len(shown["checksums"]) == 3
    stranger = {k: v for k, v in cli_env.items() if k not in ("ATDATA_HANDLE", "ATDATA_PASSWORD")}
    human = cli(stranger, "show", uri).stdout  # reading a published dataset needs no login
    assert "tags:        a, b" in human and "sha256:" in human
    again = json.loads(cli(cli_env, "--json", "promote", "cli-data", "--dry-run").stdout)
    assert again["schema"]["action"] == "reuse"
    for text in (out.stdout, out.stderr, human, dry.stdout):
        assert cli_env["ATDATA_PASSWORD"] not in text


def test_promote_with_copy(cli_env, moto_server):
    dest = make_bucket(moto_server.url)
    out = cli(cli_env, "--json", "promote", "cli-data", "--name", "copied",
              "--copy-to", f"s3://{dest}/public", "--credentials", cli_env["CREDS"],
              "--source-credentials", cli_env["CREDS"])
    assert out.returncode == 0, out.stderr
    shown = json.loads(cli(cli_env, "--json", "show", json.loads(out.stdout)["uri"]).stdout)
    assert all(u.startswith(f"s3://{dest}/public/copied/data--") for u in shown["data_urls"])


def test_errors_are_one_readable_line_with_a_hint(cli_env):
    missing = cli(cli_env, "promote", "nope")
    assert missing.returncode == 1
    first = missing.stderr.splitlines()[0]
    assert first == "error: no dataset entry named 'nope' in the local index"
    assert missing.stderr.splitlines()[1].startswith("hint:")
    assert "Traceback" not in missing.stderr

    bad_flag = cli(cli_env, "promote", "cli-data", "--no-such-flag")
    assert bad_flag.returncode == 2 and "unrecognized arguments" in bad_flag.stderr

    too_long = cli(cli_env, "promote", "cli-data", "--license", "x" * 300)
    assert too_long.returncode == 1 and too_long.stderr.startswith("error: license:")

    env = {k: v for k, v in cli_env.items() if k != "ATDATA_PASSWORD"}
    anonymous = cli(env, "promote", "cli-data")
    assert anonymous.returncode == 1 and "ATDATA_PASSWORD" in anonymous.stderr

    wrong = cli({**cli_env, "ATDATA_PASSWORD": "not-the-password"}, "promote", "cli-data")
    assert wrong.returncode == 1 and "not-the-password" not in wrong.stderr
    assert "hint: check ATDATA_HANDLE" in wrong.stderr

    no_redis = cli({**cli_env, "ATDATA_REDIS_URL": "redis://127.0.0.1:1/0"}, "ls")
    assert no_redis.returncode == 1 and "hint: check --redis-url" in no_redis.stderr

    debug = cli(cli_env, "--debug", "promote", "nope")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_progress_is_drawn_on_a_terminal(cli_env, moto_server):
    import pty

    dest = make_bucket(moto_server.url)
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-W", "error", "-m", "atdata_async.cli", "promote", "cli-data",
             "--name", "with-progress", "--copy-to", f"s3://{dest}",
             "--credentials", cli_env["CREDS"], "--source-credentials", cli_env["CREDS"]],
            env=cli_env, stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120)
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0
    assert proc.stdout.startswith("published at://")
    text = drawn.decode()
    assert "\r  shards 3/3" in text and "MiB/s" in text and "ETA" in text


def test_hints_name_the_real_cause_of_a_failed_batch():
    from atdata_async import ShardTransferError, SourceChangedError, StorageError
    from atdata_async.cli import hint_for
    from atdata_async.local import ObjectNotFoundError

    def batch(cause: Exception) -> ShardTransferError:
        return ShardTransferError({"s3://b/k.tar": cause}, 3)

    assert "re-insert" in hint_for(batch(SourceChangedError("changed")))
    assert "check the bucket" in hint_for(batch(ObjectNotFoundError("no bucket")))
    assert "rerun" in hint_for(batch(StorageError("connection reset")))
    assert "S3 endpoint, bucket and credentials" in hint_for(StorageError("refused"))
