"""Pure helpers: CIDs, schema refs, URLs, part plans (no I/O)."""

from __future__ import annotations

import hashlib
import itertools

import libipld
import pytest

from atdata_async import ConfigurationError
from atdata_async._model.cid import cid_for, dag_cbor, entry_cid
from atdata_async._model.parts import MIB, part_size_of_etag, plan_parts
from atdata_async._model.schema import parse_schema_ref, schema_record, schema_ref
from atdata_async._model.urls import expand_braces, parse_s3_url
from tests.samples import FeatureSample, RichSample


@pytest.mark.parametrize("value", [
    {"schema_ref": "atdata://local/schema/X@1.0.0", "data_urls": ["s3://b/k1", "s3://b/k2"]},
    {"a": 1, "bb": [1, 2, {"ccc": "é"}], "z": "x" * 300, "n": -5, "big": 2**40},
])
def test_dag_cbor_matches_libipld(value):
    assert dag_cbor(value) == libipld.encode_dag_cbor(value)


def test_entry_cid_is_cidv1_dag_cbor_sha256():
    cid = entry_cid("atdata://local/schema/FeatureSample@1.0.0", ["s3://b/x.tar"])
    assert cid.startswith("bafyrei")
    decoded = libipld.decode_cid(cid)
    assert decoded["version"] == 1 and decoded["codec"] == 0x71
    body = libipld.encode_dag_cbor({"schema_ref": "atdata://local/schema/FeatureSample@1.0.0",
                                    "data_urls": ["s3://b/x.tar"]})
    assert decoded["hash"]["digest"] == hashlib.sha256(body).digest()
    assert cid_for({"data_urls": ["s3://b/x.tar"],
                    "schema_ref": "atdata://local/schema/FeatureSample@1.0.0"}) == cid


def test_schema_refs_in_all_three_forms():
    assert schema_ref("FeatureSample", "1.0.0") == "atdata://local/schema/FeatureSample@1.0.0"
    assert parse_schema_ref("atdata://local/schema/A@1.2.3") == ("A", "1.2.3")
    assert parse_schema_ref("atdata://local/sampleSchema/A@1.0.0") == ("A", "1.0.0")
    assert parse_schema_ref("local://schemas/my.mod.A@2.0.0") == ("A", "2.0.0")
    for bad in ("A@1.0.0", "atdata://local/schema/A", "http://x/A@1.0.0", ""):
        with pytest.raises(ValueError):
            parse_schema_ref(bad)
    with pytest.raises(ValueError):
        schema_ref("A", "1.0")


def test_schema_record_fields():
    record = schema_record(RichSample, "1.0.0", "d")
    assert record["name"] == "RichSample" and record["description"] == "d"
    fields = {f["name"]: f for f in record["fields"]}
    assert fields["image"]["fieldType"] == {"$type": "local#ndarray", "dtype": "uint8"}
    assert fields["maybe"]["optional"] and fields["legacy_opt"]["optional"]
    assert fields["maybe"]["fieldType"] == {"$type": "local#ndarray", "dtype": "float32"}
    assert fields["tags"]["fieldType"] == {
        "$type": "local#array", "items": {"$type": "local#primitive", "primitive": "str"}}
    assert fields["raw"]["fieldType"]["primitive"] == "bytes"
    assert record["createdAt"].endswith("Z")
    assert [f["name"] for f in schema_record(FeatureSample, "1.0.0", None)["fields"]] == [
        "features", "label"]


def test_brace_expansion():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ConfigurationError):
        expand_braces("x-{a..b}")


def test_s3_urls():
    assert parse_s3_url("s3://bucket/a/b.tar") == ("bucket", "a/b.tar")
    for bad in ("s3://bucket", "s3:///k", "http://b/k", "/tmp/x"):
        with pytest.raises(ConfigurationError):
            parse_s3_url(bad)


def test_part_plans_cover_the_object_and_respect_limits():
    parts = plan_parts(100 * MIB + 1, 16 * MIB)
    assert [p.number for p in parts] == list(range(1, 8))
    assert parts[0].start == 0 and parts[-1].end == 100 * MIB + 1
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
    assert parts[-1].size == 4 * MIB + 1 and parts[0].copy_range == f"bytes=0-{16 * MIB - 1}"
    huge = plan_parts(1024 * 1024 * MIB, 8 * MIB)  # 1 TiB: the part size grows
    assert len(huge) <= 10_000
    assert plan_parts(1, 8 * MIB, 1) == [(1, 0, 1)]


@pytest.mark.parametrize(("size", "parts", "expected"), [
    (1024 * MIB, 64, 16 * MIB),  # our insert's own part size, preferred
    (2048 * MIB, 32, 64 * MIB),  # boto3 with 64 MiB chunks
    (2048 * MIB + 5, 257, 8 * MIB),  # aws s3 cp's 8 MiB, a last part of 5 bytes
    (1000 * MIB, 200, 5 * MIB),  # rclone's 5 MiB: the only whole MiB that fits
    (100 * MIB, 13, 8 * MIB),  # 8 and 9 MiB fit: the rounder one
    (6 * MIB, 1, 6 * MIB),  # one part
    (3 * MIB + 1, 3, None),  # no whole MiB of at least 5 MiB fits
])
def test_the_part_size_a_multipart_etag_implies(size, parts, expected):
    etag = f"{'ab' * 16}-{parts}"
    got = part_size_of_etag(size, f'"{etag}"', 16 * MIB)
    assert got == expected
    if got is not None:
        assert len(plan_parts(size, got)) == parts
    assert part_size_of_etag(size, "ab" * 16, 16 * MIB) is None  # one PUT: no layout
    assert part_size_of_etag(size, None, 16 * MIB) is None
