"""The README's and docs' examples run as written, their sample output is real, and their
links resolve.

Each page runs on its own against the storage its text describes: the user guide and
api.md against S3 and the PDS named by environment variables, the README's examples on an
S3-backed entry, cli.md's shell session (```bash blocks and ```text transcripts of
``$ command`` lines) in one bash against fresh services, its output compared line by
line: ``...`` in a line stands for any text, a line that is only ``...`` for any lines.
Blocks after an ``<!-- not run: why -->`` comment are not run (placeholders, installs,
the demo itself, which tests/test_demo.py runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests import services
from tests.conftest import make_bucket
from tests.samples import FeatureSample, write_shards

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- not run[^>]*-->\n)?```(\w+)\n(.*?)```", re.S)

pytestmark = pytest.mark.pds


def blocks(path: Path, *kinds: str) -> list[tuple[str, str]]:
    """(kind, text) of each block of these kinds that is to be run, in page order."""
    return [(kind, text) for skip, kind, text in BLOCK.findall(path.read_text())
            if kind in kinds and not skip]


def python_blocks(path: Path) -> list[str]:
    return [text for _, text in blocks(path, "python")]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", path.read_text(), flags=re.S))
    for target in re.findall(r"\]\(([^)#]+)\)", prose):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_shell_block_is_run_somewhere(path):
    """A shell block is run by a test below (or test_demo.py), or says why it is not."""
    for kind, text in blocks(path, "bash", "sh", "console"):
        assert path.name in ("cli.md", "README.md"), f"{path.name} has an unrun {kind} block"
        if path.name == "README.md":
            assert "scripts/demo --keep" in text, text  # tests/test_demo.py runs it


@pytest.fixture
def doc_env(redis_url, moto_server, pds, pds_account, s3_credentials):
    return {**os.environ, "PYTHONPATH": str(REPO), "ATDATA_REDIS_URL": redis_url,
            "ATDATA_PDS_URL": pds.url, "ATDATA_HANDLE": pds_account["handle"],
            "ATDATA_PASSWORD": pds_account["password"], **s3_credentials,
            "ATDATA_BUCKET": make_bucket(moto_server.url),
            "ATDATA_PUBLIC_BUCKET": make_bucket(moto_server.url)}


def run(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def test_user_guide_runs_as_a_page(doc_env, tmp_path):
    code = "\n".join(python_blocks(REPO / "docs" / "user-guide.md"))
    out = run(code, doc_env, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert doc_env["ATDATA_PASSWORD"] not in out.stdout + out.stderr


def test_api_blocks_each_run_alone(doc_env, tmp_path):
    """api.md's blocks are independent examples: each one runs by itself (the blocking
    one after the async one has made the entries it publishes)."""
    first, second = python_blocks(REPO / "docs" / "api.md")
    for code, says in ((first, "['vectors-0', 'vectors-1', 'vectors-2']\n"),
                       (second, "at://")):
        out = run(code, doc_env, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.startswith(says)
        assert doc_env["ATDATA_PASSWORD"] not in out.stdout + out.stderr


def test_readme_examples_run_on_an_s3_backed_entry(doc_env, tmp_path, moto_server, pds,
                                                   pds_account):
    """The README's sync block promotes an S3-backed entry in place, its async block
    copies it to another bucket with nothing but that bucket's credentials file."""
    from atdata_async.sync import Dataset
    from atdata_async.sync.local import LocalIndex, S3DataStore

    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    if "public-datasets" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="public-datasets")
    creds = {k: doc_env[k] for k in ("AWS_ENDPOINT", "AWS_ACCESS_KEY_ID",
                                     "AWS_SECRET_ACCESS_KEY")}
    (tmp_path / "public-s3.env").write_text("".join(f"{k}={v}\n" for k, v in creds.items()))
    paths = write_shards(tmp_path, 2, 5)
    with S3DataStore(creds, bucket=doc_env["ATDATA_BUCKET"]) as store, \
            LocalIndex(doc_env["ATDATA_REDIS_URL"], data_store=store) as index:
        index.publish_schema(FeatureSample, version="1.0.0")
        entry = index.insert_dataset(Dataset[FeatureSample]([str(p) for p in paths]),
                                     name="my-dataset", prefix="my")
    assert all(u.startswith("s3://") for u in entry.data_urls)

    sync_block, async_block = python_blocks(REPO / "README.md")
    redirect = {
        "LocalIndex()": f"LocalIndex({doc_env['ATDATA_REDIS_URL']!r})",
        "AtmosphereClient()": f"AtmosphereClient({pds.url!r})",
        '"handle.bsky.social", "app-password"':
            f"{pds_account['handle']!r}, {pds_account['password']!r}",
    }
    env = {k: v for k, v in doc_env.items() if not k.startswith("AWS_")}
    # the sync block reads the shards in place with the environment's AWS keys (the
    # endpoint is the one insert recorded); the async block with the public store's
    keys = {k: doc_env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    for code, tail, extra in (
            (sync_block, "\nprint(at_uri)\n", keys),
            (async_block, "\nimport anyio\nprint(anyio.run(publish, 'my-dataset'))\n", {})):
        for old, new in redirect.items():
            code = code.replace(old, new)
        out = run(code + tail, {**env, **extra}, tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.startswith("at://")
    listed = s3.list_objects_v2(Bucket="public-datasets", Prefix="promoted/my-dataset/")
    assert listed["KeyCount"] == 2  # the async block copied both shards


# -- cli.md: a shell session whose output is compared with the page ----------------------


def transcript_pattern(lines: list[str]) -> re.Pattern[str]:
    parts = []
    for line in lines:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def session(page: Path) -> list[tuple[str, list[str]]]:
    """The page's steps: ("bash", [script]) or ("$", [command, expected output lines...])."""
    steps: list[tuple[str, list[str]]] = []
    for kind, text in blocks(page, "bash", "text"):
        if kind == "bash":
            steps.append(("bash", [text]))
            continue
        for line in text.splitlines():
            if line.startswith("$ "):
                steps.append(("$", [line[2:]]))
            else:
                assert steps and steps[-1][0] == "$", f"output before any command: {line}"
                steps[-1][1].append(line)
    return steps


@pytest.fixture
def fresh_services(tmp_path, redis_url, pds, pds_account):
    """The buckets cli.md names, on an S3 server of their own."""
    moto = services.start_moto(in_process=True)
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    for bucket in ("datasets-bucket", "public-datasets"):
        s3.create_bucket(Bucket=bucket)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ATDATA_", "AWS_"))},
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "ATDATA_REDIS_URL": redis_url, "ATDATA_PDS_URL": pds.url,
           "ATDATA_HANDLE": pds_account["handle"], "ATDATA_PASSWORD": pds_account["password"],
           "AWS_ENDPOINT": moto.url, "AWS_ACCESS_KEY_ID": "demo",
           "AWS_SECRET_ACCESS_KEY": "demo"}
    yield env
    moto.stop()


def test_cli_page_is_a_real_session(fresh_services, tmp_path):
    """Every command of cli.md, in order, in one bash; each one's output (stdout and
    stderr, as a terminal shows them) matches the page. A command's ``at://...`` is the
    at:// URI printed last (the page says to copy it)."""
    last_uri = ""
    bash = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=tmp_path,
                            env=fresh_services, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert bash.stdin is not None and bash.stdout is not None
    try:
        for kind, step in session(REPO / "docs" / "cli.md"):
            command = step[0]
            if "at://did:plc:..." in command:
                command = re.sub(r"at://did:plc:\.\.\.\S*", last_uri, command)
            command = command.replace("$?", "$rc")  # the previous command's, not the marker's
            if kind == "bash":
                command = f"( set -e\n{command}\n) >/dev/null 2>&1; echo \"exit $?\""
            marker = "@@done@@"
            bash.stdin.write(f"{command} 2>&1 </dev/null; rc=$?\necho {marker}\n")
            bash.stdin.flush()
            got = []
            for line in bash.stdout:
                if line.rstrip("\n") == marker:
                    break
                got.append(line.rstrip() + "\n")
            text = "".join(got)
            if kind == "bash":
                assert text == "exit 0\n", step[0]
                continue
            uris = re.findall(r"at://did:plc:\w+/science\.alt\.dataset\.entry/\w+", text)
            last_uri = uris[-1] if uris else last_uri
            expected = [x.rstrip() for x in step[1:]]
            assert transcript_pattern(expected).fullmatch(text), (
                f"$ {step[0]}\n--- page:\n" + "\n".join(expected) + "\n--- real:\n" + text)
    finally:
        bash.stdin.close()
        bash.wait(timeout=60)
        bash.stdout.close()
    assert fresh_services["ATDATA_PASSWORD"] not in text
