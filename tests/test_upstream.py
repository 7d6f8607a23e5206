"""The released atdata (0.7.0b1, in its own Python 3.12 venv: scripts/upstream/) and we read
each other: an index and shards written by atdata are promoted by us; atdata's own reader
parses our dataset and schema records, rebuilds the sample type and decodes the samples
from our shards (kept in place and copied), and reads an entry our insert wrote.

Against the session's real redis-server, moto S3 and PDS. The venv is built by
scripts/bootstrap (so by .ci/run); without a Python 3.12 it fails loudly, never skips."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from atdata_async import Dataset
from atdata_async._model.lexval import LEXICON_DIR
from atdata_async.atmosphere import AtmosphereIndex
from atdata_async.local import LocalIndex, S3DataStore
from atdata_async.promote import promote_to_atmosphere
from tests import services
from tests.conftest import make_bucket, make_credentials
from tests.samples import FeatureSample, write_shards

pytestmark = [pytest.mark.anyio, pytest.mark.pds]
HERE = Path(__file__).resolve().parent / "upstream"


@pytest.fixture(scope="session")
def upstream_python() -> str:
    """The upstream venv's python (built once, cached outside the clone)."""
    out = subprocess.run(["bash", str(services.REPO / "scripts/upstream/install.sh")],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, f"the upstream atdata venv cannot be built:\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def run_upstream(python: str, script: str, cfg: dict) -> dict:
    out = subprocess.run([python, str(HERE / script)], input=json.dumps(cfg),
                         capture_output=True, text=True, timeout=240, cwd=HERE)
    assert out.returncode == 0, f"{script} failed:\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])  # webdataset prints above it


def test_the_lexicons_we_ship_are_the_wheels_own(upstream_python):
    # find_spec locates the installed package without importing it (atdata's import
    # alone takes 1-3 s: s3fs, webdataset, ...)
    probe = subprocess.run([upstream_python, "-c", "import importlib.util; print(importlib."
                            "util.find_spec('atdata').submodule_search_locations[0])"],
                           capture_output=True, text=True, check=True)
    wheel = Path(probe.stdout.strip()) / "lexicons" / "science" / "alt" / "dataset"
    ours = LEXICON_DIR / "science" / "alt" / "dataset"
    names = sorted(p.name for p in wheel.glob("*.json"))
    assert names == sorted(p.name for p in ours.glob("*.json")) and names
    for name in names:
        assert (wheel / name).read_bytes() == (ours / name).read_bytes(), name


async def test_an_index_written_by_atdata_is_promoted_by_us_and_read_back_by_both(
        upstream_python, redis_url, moto_server, pds_account, pds, client, tmp_path):
    creds = make_credentials(moto_server.url)
    bucket = make_bucket(moto_server.url)
    written = run_upstream(upstream_python, "atdata_write.py", {
        "dir": str(tmp_path), "shards": 2, "per_shard": 5, "credentials": creds,
        "bucket": bucket, "redis_url": redis_url, "name": "from-atdata"})
    async with S3DataStore(creds, bucket=bucket) as store, \
            LocalIndex(redis_url, data_store=store) as index:
        entry = await index.get_entry_by_name("from-atdata")
        assert entry.cid == written["cid"] and entry.data_urls == written["data_urls"]
        local_schema = await index.get_schema(entry.schema_ref)
        assert local_schema["name"] == "UpstreamSample"
        uri = await promote_to_atmosphere(entry, index, client, tags=["upstream"])
        published = await AtmosphereIndex(client).get_dataset(uri)
        assert published.data_urls == entry.data_urls and len(published.checksums) == 1
        assert published.metadata == {"split": "train", "ratio": 0.25}
        assert published.storage.endpoint == moto_server.url
    got = run_upstream(upstream_python, "atdata_read.py", {
        "pds_url": pds.url, "handle": pds_account["handle"],
        "password": pds_account["password"], "uris": [uri],
        "access_key": creds["AWS_ACCESS_KEY_ID"], "secret_key": creds["AWS_SECRET_ACCESS_KEY"]})
    read = got[uri]
    assert read["type_name"] == "UpstreamSample"
    assert read["fields"] == ["features", "label", "note"]
    assert read["count"] == 10 and sorted(read["labels"]) == list(range(10))
    assert read["features_dtype"] == "float32" and read["features_shape"] == [4]
    assert read["metadata"] == {"split": "train", "ratio": 0.25}
    assert read["checksums"][0]["algorithm"] == "sha256"


async def test_atdata_reads_what_we_publish_kept_in_place_and_copied(
        upstream_python, redis_url, moto_server, pds_account, pds, client, tmp_path):
    creds = make_credentials(moto_server.url)
    bucket = make_bucket(moto_server.url)
    async with S3DataStore(creds, bucket=bucket) as store, \
            LocalIndex(redis_url, data_store=store) as index:
        await index.publish_schema(FeatureSample, version="1.0.0")
        paths = write_shards(tmp_path, 3, 4)
        entry = await index.insert_dataset(Dataset[FeatureSample]([str(p) for p in paths]),
                                           name="ours", metadata={"split": "test"})
        kept = await promote_to_atmosphere(entry, index, client)
        # a copy to another bucket (same endpoint and account: server-side copies)
        public = make_bucket(moto_server.url)
        async with S3DataStore(creds, bucket=public) as dest:
            copied = await promote_to_atmosphere(entry, index, client, data_store=dest,
                                                 name="ours-public")
        expected = [s async for s in Dataset[FeatureSample](entry.data_urls, store=store)]
    got = run_upstream(upstream_python, "atdata_read.py", {
        "pds_url": pds.url, "handle": pds_account["handle"],
        "password": pds_account["password"], "uris": [kept, copied],
        "access_key": creds["AWS_ACCESS_KEY_ID"], "secret_key": creds["AWS_SECRET_ACCESS_KEY"],
        "redis_url": redis_url, "local_name": "ours"})
    labels = [int(s.label) for s in expected]
    for uri, name in ((kept, "ours"), (copied, "ours-public")):
        read = got[uri]
        assert read["name"] == name and read["schema_type"] == "jsonSchema"
        assert read["type_name"] == "FeatureSample" and "features" in read["fields"]
        assert read["count"] == len(expected) and read["labels"] == labels
        first = np.asarray(expected[0].features)
        assert read["features_dtype"] == str(first.dtype)
        assert read["features_shape"] == list(first.shape)
        assert np.allclose(read["features_first"], first)
        assert read["metadata"] == {"split": "test"}
        assert read["endpoint"] == moto_server.url
        assert all(c["algorithm"] == "sha256" and len(c["digest"]) == 64
                   for c in read["checksums"])
    assert got[copied]["data_urls"][0].startswith(f"s3://{public}/promoted/ours-public/")
    # atdata reads the local entry our insert wrote (endpoint and region recorded in it)
    assert got["local"]["cid"] == entry.cid and got["local"]["data_urls"] == entry.data_urls
    assert got["local"]["schema_name"] == "FeatureSample"
