"""The README's and docs' Python examples run, and their links resolve.

The docs' examples read their service addresses from environment variables; the README's
are the user-guide style (``LocalIndex()``, ``AtmosphereClient()``), so only where they
point is redirected to the test services, as in the seed test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_bucket
from tests.samples import FeatureSample, write_shards

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```python\n(.*?)```", re.S)

pytestmark = pytest.mark.pds


def python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(path):
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", path.read_text(), flags=re.S))
    for target in re.findall(r"\]\(([^)#]+)\)", prose):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


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


@pytest.mark.parametrize("name", ["user-guide.md", "api.md"])
def test_docs_examples_run(name, doc_env, tmp_path):
    blocks = python_blocks(REPO / "docs" / name)
    assert len(blocks) >= 2
    out = run("\n".join(blocks), doc_env, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert doc_env["ATDATA_PASSWORD"] not in out.stdout + out.stderr


def test_readme_examples_run(doc_env, tmp_path, moto_server, pds, pds_account):
    import boto3

    from atdata_async.sync import Dataset
    from atdata_async.sync.local import LocalIndex

    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    s3.create_bucket(Bucket="public-datasets")
    (tmp_path / "public-s3.env").write_text(
        f"AWS_ENDPOINT={moto_server.url}\nAWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=s\n")
    with LocalIndex(doc_env["ATDATA_REDIS_URL"]) as index:
        index.publish_schema(FeatureSample, version="1.0.0")
        paths = write_shards(tmp_path, 2, 5)
        index.add_entry(Dataset[FeatureSample]([str(p) for p in paths]), name="local-only")
    # an S3-backed "my-dataset" for the sync example to publish as it is
    bucket = doc_env["ATDATA_BUCKET"]
    for p in paths:
        s3.upload_file(str(p), bucket, f"my/{p.name}")
    with LocalIndex(doc_env["ATDATA_REDIS_URL"]) as index:
        index.add_entry(Dataset[FeatureSample]([f"s3://{bucket}/my/{p.name}" for p in paths]),
                        name="my-dataset", metadata={"checksums": {}, "split": "x"})

    sync_block, async_block = python_blocks(REPO / "README.md")
    redirect = {
        "LocalIndex()": f"LocalIndex({doc_env['ATDATA_REDIS_URL']!r})",
        "AtmosphereClient()": f"AtmosphereClient({pds.url!r})",
        '"handle.bsky.social", "app-password"':
            f"{pds_account['handle']!r}, {pds_account['password']!r}",
    }
    code = sync_block + async_block + "\nimport anyio\nprint(anyio.run(publish, 'local-only'))\n"
    for old, new in redirect.items():
        assert old in code
        code = code.replace(old, new)
    out = run(code + "\nprint(at_uri)\n", doc_env, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("at://") == 2
