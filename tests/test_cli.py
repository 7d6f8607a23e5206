"""The atdata-async CLI driven end to end against redis-server, moto S3 and the PDS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atdata_async.atmosphere import SCHEMA_COLLECTION
from atdata_async.sync import Dataset
from atdata_async.sync.atmosphere import AtmosphereClient, AtmosphereIndex
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


def s3_env(env: dict) -> dict:
    """``env`` plus the test store's credentials as AWS_* variables."""
    creds = dict(line.split("=", 1) for line in Path(env["CREDS"]).read_text().splitlines())
    return {**env, **creds}


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-m", "atdata_async.cli", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def remote_schemas(env: dict) -> list[dict]:
    """The account's schema records, read here (public listRecords, no login): checking
    that a command wrote nothing costs no CLI process (`schemas --remote` has its own test)."""
    with AtmosphereClient(env["ATDATA_PDS_URL"]) as reader:
        return reader.list_records(SCHEMA_COLLECTION, repo=env["ATDATA_HANDLE"])


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
    assert remote_schemas(cli_env) == []

    # no credentials anywhere for the shards' store: refused before any write, saying how
    refused = cli(cli_env, "promote", "cli-data")
    assert refused.returncode != 0 and "cannot prove the checksums" in refused.stderr
    assert "--source-credentials" in refused.stderr and "--no-verify" in refused.stderr
    assert remote_schemas(cli_env) == []
    # the AWS credentials of the environment, with the endpoint recorded at insert
    aws = {k: v for k, v in s3_env(cli_env).items() if k != "AWS_ENDPOINT"}
    out = cli(aws, "promote", "cli-data", "--tag", "a", "--tag", "b", "--license", "MIT",
              "--description", "cli test")
    assert out.returncode == 0, out.stderr
    uri = out.stdout.strip().removeprefix("published ")
    assert uri.startswith("at://did:") and "science.alt.dataset.entry" in uri
    assert out.stderr == ""  # not a TTY: no progress line

    shown = json.loads(cli(cli_env, "--json", "show", uri).stdout)
    assert (shown["name"], shown["tags"], shown["license"]) == ("cli-data", ["a", "b"], "MIT")
    assert shown["metadata"] == {"split": "test"} and len(shown["checksums"]) == 3
    with AtmosphereClient(cli_env["ATDATA_PDS_URL"]) as reader:
        storage = AtmosphereIndex(reader).get_dataset(uri).storage
    assert storage.endpoint == s3_env(cli_env)["AWS_ENDPOINT"]  # recorded at insert
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
    assert all(u.startswith(f"s3://{dest}/public/copied/") and u.endswith(".tar")
               for u in shown["data_urls"])


def test_errors_are_one_readable_line_with_a_hint(cli_env):
    missing = cli(cli_env, "promote", "nope")
    assert missing.returncode == 3  # not found
    first = missing.stderr.splitlines()[0]
    assert first == "error: no dataset entry named 'nope' in the local index"
    assert missing.stderr.splitlines()[1] == "hint: `atdata-async ls` lists local entries"
    assert "Traceback" not in missing.stderr

    bad_flag = cli(cli_env, "promote", "cli-data", "--no-such-flag")
    assert bad_flag.returncode == 2 and "unrecognized arguments" in bad_flag.stderr

    too_long = cli(cli_env, "promote", "cli-data", "--license", "x" * 300)
    assert too_long.returncode == 1 and too_long.stderr.startswith("error: license:")
    assert "float" not in too_long.stderr

    env = {k: v for k, v in cli_env.items() if k != "ATDATA_PASSWORD"}
    anonymous = cli(env, "promote", "cli-data")
    assert anonymous.returncode == 4
    assert anonymous.stderr.splitlines()[0] == (
        f"error: login failed: NoCredentials: set ATDATA_PASSWORD to log in to "
        f"{cli_env['ATDATA_PDS_URL']}")

    debug = cli(cli_env, "--debug", "promote", "nope")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    # a wrong password and an unreachable redis (their hints too): in the --json test
    for out in (missing, bad_flag, too_long, anonymous):
        assert "None" not in out.stderr and "COMMAND" not in out.stderr


def test_version_and_global_flags_anywhere(cli_env):
    version = cli(cli_env, "--version")
    assert version.returncode == 0 and version.stdout.startswith("atdata-async 0.")
    before = json.loads(cli(cli_env, "--json", "ls").stdout)
    after = cli(cli_env, "ls", "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == before
    late = cli({**cli_env, "ATDATA_REDIS_URL": "redis://127.0.0.1:1/0"},
               "ls", "--redis-url", cli_env["ATDATA_REDIS_URL"])
    assert late.returncode == 0 and late.stdout.startswith("cli-data")


def test_json_errors_have_a_stable_code_and_the_exit_code_tells_the_kind(cli_env):
    cases = [
        (("promote", "nope"), cli_env, "not_found", 3),
        (("promote", "cli-data", "--concurrency", "0"), cli_env, "usage", 2),
        (("ls",), {**cli_env, "ATDATA_REDIS_URL": "redis://127.0.0.1:1/0"}, "storage", 5),
        (("promote", "cli-data"), {**cli_env, "ATDATA_PASSWORD": "not-the-password"},
         "auth", 4),
        (("promote", "cli-data"), {**cli_env, "ATDATA_PDS_URL": "http://127.0.0.1:1"},
         "pds", 7),
    ]
    bodies = {}
    for argv, env, code, exit_code in cases:
        out = cli(env, *argv, "--json")
        assert out.returncode == exit_code, (argv, out.stderr)
        body = bodies[code] = json.loads(out.stderr)
        assert body["error"] == code and body["exit_code"] == exit_code
        assert body["message"] and "None" not in body["message"]
        assert out.stdout == "" and "not-the-password" not in out.stderr
    assert bodies["auth"]["hint"].startswith("check ATDATA_HANDLE")
    assert bodies["storage"]["hint"].startswith("check --redis-url")
    unreachable = bodies["pds"]
    assert unreachable["message"].startswith(
        "com.atproto.server.createSession failed: ConnectError: cannot reach "
        "http://127.0.0.1:1")
    assert unreachable["hint"] == "check --pds-url / ATDATA_PDS_URL: is a PDS answering there?"


def test_arguments_are_checked_at_the_edge(cli_env):
    for argv, says in [
        (("promote", "cli-data", "--concurrency", "-3"), "must be at least 1, got -3"),
        (("promote", "cli-data", "--concurrency", "0"), "must be at least 1, got 0"),
        (("promote", "cli-data", "--part-size", "1MiB"), "S3 takes parts of 5MiB to 5GiB"),
        (("promote", "cli-data", "--part-size", "6GiB"), "S3 takes parts of 5MiB to 5GiB"),
        (("promote", "cli-data", "--name", ""), "--name: must not be empty"),
        (("insert", "x.tar", "--name", "", "--schema", "m:C"), "--name: must not be empty"),
        (("insert", "x.tar", "--name", "n"), "one of the arguments --schema --schema-ref"),
        (("promote", "cli-data", "--copy-to", "http://x/y", "--credentials", "c.env"),
         "--copy-to must be s3://BUCKET[/PREFIX]"),
    ]:
        out = cli(cli_env, *argv)
        assert out.returncode == 2, (argv, out.stderr)
        assert says in out.stderr, (argv, out.stderr)
        assert "float" not in out.stderr and "total_tokens" not in out.stderr


def test_a_closed_pipe_ends_quietly(cli_env):
    script = f"{sys.executable} -m atdata_async.cli --json ls | true; echo ${{PIPESTATUS[0]}}"
    out = subprocess.run(["bash", "-c", script], env=cli_env, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "0" and out.stderr == ""


def test_insert_and_schemas_publish_from_the_shell(cli_env, tmp_path, moto_server, raw_s3):
    module = tmp_path / "my_samples.py"
    module.write_text("import atdata_async\nfrom numpy.typing import NDArray\n\n\n"
                      "@atdata_async.packable\nclass Vec:\n    values: NDArray\n"
                      "    label: int\n")
    published = cli_env_run(cli_env, tmp_path, "schemas", "publish", "my_samples:Vec",
                            "--version", "2.1.0")
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == "stored schema atdata://local/schema/Vec@2.1.0"
    paths = write_shards(tmp_path, 2, 5, stem="vec")
    dest = make_bucket(moto_server.url)
    pattern = str(tmp_path / "vec-{000000..000001}.tar")
    dry = cli_env_run(cli_env, tmp_path, "insert", pattern, "--name", "vecs",
                      "--schema-ref", "atdata://local/schema/Vec@2.1.0",
                      "--to", f"s3://{dest}/v", "--credentials", cli_env["CREDS"], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"checked: bucket {dest} exists" in dry.stdout
    assert raw_s3.list_objects_v2(Bucket=dest)["KeyCount"] == 0  # nothing written
    missing_bucket = cli_env_run(cli_env, tmp_path, "insert", pattern, "--name", "vecs",
                                 "--schema", "my_samples:Vec", "--to", "s3://no-such-bucket",
                                 "--credentials", cli_env["CREDS"], "--dry-run")
    assert missing_bucket.returncode == 3
    assert "bucket 'no-such-bucket' does not exist" in missing_bucket.stderr
    out = cli_env_run(cli_env, tmp_path, "--json", "insert", pattern, "--name", "vecs",
                      "--schema-ref", "atdata://local/schema/Vec@2.1.0",
                      "--to", f"s3://{dest}/v", "--credentials", cli_env["CREDS"],
                      "--meta", "split=train", "--meta", "version=3")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["shards"] == 2 and row["schema"] == "atdata://local/schema/Vec@2.1.0"
    assert all(u.startswith(f"s3://{dest}/v/data--") for u in row["data_urls"])
    with LocalIndex(cli_env["ATDATA_REDIS_URL"]) as index:
        entry = index.get_entry_by_name("vecs")
    assert entry.metadata["split"] == "train" and entry.metadata["version"] == 3
    assert len(entry.checksums) == 2
    in_place = cli_env_run(cli_env, tmp_path, "insert", *map(str, paths), "--name", "here",
                           "--schema", "my_samples:Vec")
    assert in_place.returncode == 0, in_place.stderr
    assert in_place.stdout.startswith("inserted here: 2 shards")
    nothing = cli_env_run(cli_env, tmp_path, "insert", "nope-*.tar", "--name", "n",
                          "--schema", "my_samples:Vec")
    assert nothing.returncode == 3 and "nope-*.tar: no file matches" in nothing.stderr


def cli_env_run(env: dict, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-m", "atdata_async.cli", *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_copy_of_s3_shards_needs_no_source_flag(cli_env, moto_server):
    """The README's line: --copy-to with only --credentials, for an S3-backed entry."""
    dest = make_bucket(moto_server.url)
    env = {k: v for k, v in cli_env.items() if not k.startswith("AWS_")}
    out = cli(env, "promote", "cli-data", "--name", "copied-plain",
              "--copy-to", f"s3://{dest}/releases", "--credentials", cli_env["CREDS"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("published at://")


def test_dry_run_checks_the_destination_and_the_pds(cli_env, moto_server):
    dest = make_bucket(moto_server.url)
    ok = cli(cli_env, "promote", "cli-data", "--dry-run", "--copy-to", f"s3://{dest}/x",
             "--credentials", cli_env["CREDS"])
    assert ok.returncode == 0, ok.stderr
    assert f"checked: PDS {cli_env['ATDATA_PDS_URL']} answers; logged in as" in ok.stdout
    assert f"checked: destination bucket {dest} exists" in ok.stdout
    assert "checked: all 3 source shard(s) readable" in ok.stdout
    no_bucket = cli(cli_env, "promote", "cli-data", "--dry-run", "--copy-to",
                    "s3://missing-bucket/x", "--credentials", cli_env["CREDS"])
    assert no_bucket.returncode == 3 and "'missing-bucket' does not exist" in no_bucket.stderr
    dead = cli_env["CREDS"] + ".dead"
    with open(dead, "w") as f:
        f.write("AWS_ENDPOINT=http://127.0.0.1:1\nAWS_ACCESS_KEY_ID=a\n"
                "AWS_SECRET_ACCESS_KEY=b\n")
    dead_endpoint = cli(cli_env, "promote", "cli-data", "--dry-run", "--copy-to",
                        f"s3://{dest}/x", "--credentials", dead)
    assert dead_endpoint.returncode == 5, dead_endpoint.stderr
    assert "cannot reach http://127.0.0.1:1" in dead_endpoint.stderr


def test_sigterm_is_handled_like_ctrl_c(cli_env, tmp_path):
    """SIGTERM mid-copy (the destination never answers): exit 143, nothing published."""
    import signal
    import socket
    import time

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    stuck = tmp_path / "stuck.env"
    stuck.write_text(f"AWS_ENDPOINT=http://127.0.0.1:{hang.getsockname()[1]}\n"
                     "AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n")
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "atdata_async.cli", "promote", "cli-data",
         "--copy-to", "s3://stuck/x", "--credentials", str(stuck),
         "--source-credentials", cli_env["CREDS"]],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hang.settimeout(60)
        conn, _ = hang.accept()  # the copy has started
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        hang.close()
    conn.close()
    assert proc.returncode == 143, err
    assert "published" not in out
    assert err.strip().splitlines()[-1] == "error: interrupted (SIGTERM); nothing was published"
    assert remote_schemas(cli_env) == []  # no stray schema record either


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
    assert "run the command again" in hint_for(batch(StorageError("connection reset")))
    assert "S3 endpoint, bucket and credentials" in hint_for(StorageError("refused"))


def test_a_url_that_is_not_a_pds_is_named_not_pasted(cli_env, http_server):
    """A web server's HTML 404 page is not the message; the hint says what to check."""
    out = cli({**cli_env, "ATDATA_PDS_URL": http_server.url}, "promote", "cli-data")
    assert out.returncode == 7, out.stderr
    first = out.stderr.splitlines()[0]
    assert first == ("error: com.atproto.server.createSession failed: 501: 127.0.0.1 answered "
                     "with a web page (text/html), not XRPC: is this URL a PDS?")
    assert "<" not in out.stderr
    assert out.stderr.splitlines()[1] == (
        "hint: check --pds-url / ATDATA_PDS_URL: it should be the PDS's base URL")


def test_a_failed_copy_says_what_was_left(cli_env, tmp_path):
    """The destination bucket does not exist: no record, and the message says so."""
    out = cli(cli_env, "promote", "cli-data", "--copy-to", "s3://no-such-dest/x",
              "--credentials", cli_env["CREDS"])
    assert out.returncode in (3, 5), out.stderr
    assert "published" not in out.stdout
    assert "no dataset record was written" in out.stderr
    assert "no partial upload was left" not in out.stderr and "/_" not in out.stderr
    assert "hint: check the bucket" in out.stderr


def test_dev_status_without_kept_services(cli_env, tmp_path):
    out = cli({**cli_env, "ATDATA_DEV_DIR": str(tmp_path / "none")}, "dev", "status")
    assert out.returncode == 3
    assert out.stdout.startswith(f"no kept services (state: {tmp_path / 'none'})")


def imported_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running ``code``."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"],
                         capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_promote_and_ls_paths_import_no_sample_decoding(tmp_path):
    """Speed (#10): numpy and webdataset are for decoding samples; a promotion reads refs,
    records and URLs only, and never runs httpx's own CLI (whose import pulls click and
    pygments in). `ls` needs Redis only, not the S3 client either."""
    decoding = {"numpy", "webdataset"}
    s3 = {"aioboto3", "aiobotocore", "botocore", "boto3", "aiohttp"}
    promote_path = ("import atdata_async.cli as cli\n"
                    "cli.skip_httpx_cli()  # as main() does before it runs a command\n"
                    "import atdata_async._pipeline.promote, atdata_async._pipeline.batch\n"
                    "import atdata_async.sync.local, atdata_async.sync.promote  # scripts\n"
                    "args = cli.build_parser().parse_args(['promote', 'x', '--dry-run'])\n"
                    "cli.check_promote_args(args)\n"
                    "from atdata_async._model.schema import parse_schema_ref\n"
                    "parse_schema_ref('atdata://local/schema/A@1.0.0')")
    promoting = imported_after(promote_path)
    assert not promoting & decoding
    assert "httpx" in promoting and not promoting & {"click", "pygments", "rich"}  # its CLI
    ls_path = ("import atdata_async.cli, atdata_async._backends.redis_index as r\n"
               "r.LocalIndex('redis://127.0.0.1:1/0')")
    assert not imported_after(ls_path) & (decoding | s3)


def forged_jwt(exp: float) -> str:
    """An unsigned token that says only when it expires: what the client reads to decide
    on a refresh (the PDS would refuse it, so it must never be sent)."""
    import base64

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(exp)})}.c2ln"


def test_a_saved_session_spares_the_login_and_is_refreshed_only_when_it_must_be(
        redis_url, pds_account, pds_proxy, tmp_path):
    """Speed (#10): after `login`, commands make no createSession (the password in the
    environment notwithstanding); a lapsing access token is refreshed once and saved; a
    session that can no longer be refreshed is replaced by a password login, or refused
    without one."""
    import time

    config = tmp_path / "config"
    env = {**os.environ, "ATDATA_REDIS_URL": redis_url, "ATDATA_PDS_URL": pds_proxy.url,
           "ATDATA_HANDLE": pds_account["handle"], "ATDATA_PASSWORD": pds_account["password"],
           "ATDATA_CONFIG_DIR": str(config)}
    saved = config / "sessions.json"

    def session() -> dict:
        return json.loads(saved.read_text())[pds_proxy.url]

    def edit(**fields: str) -> None:
        saved.write_text(json.dumps({pds_proxy.url: {**session(), **fields}}))

    def remote(env: dict) -> subprocess.CompletedProcess:
        pds_proxy.seen.clear()
        return cli(env, "--json", "schemas", "--remote")

    def calls(name: str = "") -> int:
        return pds_proxy.count(path=f"/xrpc/com.atproto.server.{name}")

    assert cli(env, "login").returncode == 0 and calls("createSession") == 1
    out = remote(env)
    assert out.returncode == 0, out.stderr
    assert calls() == 0 and pds_proxy.count(path="listRecords") == 1  # no login, no check
    edit(accessJwt=forged_jwt(time.time() - 5))
    out = remote(env)
    assert out.returncode == 0, out.stderr
    assert calls() == calls("refreshSession") == 1
    assert session()["accessJwt"] != forged_jwt(time.time() - 5)  # the new tokens, saved
    no_password = {k: v for k, v in env.items() if k != "ATDATA_PASSWORD"}
    edit(accessJwt=forged_jwt(time.time() - 5), refreshJwt=forged_jwt(time.time() - 5))
    out = remote(no_password)
    assert out.returncode == 4 and "atdata-async login" in out.stderr and calls() == 0
    out = remote({**env, "ATDATA_HANDLE": ""})  # the saved session names the account
    assert out.returncode == 0, out.stderr
    assert calls() == calls("createSession") == 1
    assert session()["refreshJwt"] != forged_jwt(time.time() - 5)
    assert pds_account["password"] not in saved.read_text()


def test_the_program_collects_no_garbage_at_start_up_and_shutdown(redis_url, pds, pds_account):
    """Speed (#10): the program runs its start-up with the GC off and freezes what it
    loaded (later collections, and Python's shutdown, would walk every object botocore,
    aiohttp and redis made); the command's work runs with the GC on (bounded memory); a
    caller passing argv keeps its GC as it was."""
    code = ("import atexit, gc, sys\n"
            "from atdata_async import cli\n"
            "atexit.register(lambda: print('exit:', gc.isenabled(), gc.get_freeze_count() > 0))\n"
            "real = cli.collect_from_here\n"
            "def spy():\n    print('work begins:', gc.isenabled())\n    real()\n"
            "cli.collect_from_here = spy\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print('in-process call:', gc.isenabled(), gc.get_freeze_count() > 0)\n"
            "sys.argv = ['atdata-async', 'promote', 'no-such-entry', '--dry-run']\n"
            "sys.exit(cli.main())")
    env = {**os.environ, "ATDATA_REDIS_URL": redis_url, "ATDATA_PDS_URL": pds.url,
           "ATDATA_HANDLE": pds_account["handle"], "ATDATA_PASSWORD": pds_account["password"]}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 3, out.stderr  # not found: the command ran to its lookup
    lines = out.stdout.splitlines()
    assert lines[0].startswith("atdata-async ") and lines[1:] == [
        "in-process call: True False", "work begins: False", "exit: True True"]
