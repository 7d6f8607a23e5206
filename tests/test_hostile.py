"""Hostile input (issue #12): the validation edge, proven checksums, malformed index
entries, foreign errors translated, and secrets kept out of errors, reprs and logs.

Property-based (Hypothesis, derandomized and bounded for CI): random and adversarial
values for every public parameter of a promotion and for every record field, each
case ending in one of two outcomes: a published record that our reader (and, for all
of them in one batch, the reference @atproto/lexicon validator) accepts, or an error of
our tree raised before any remote write. Most cases write to a counting fake PDS; a
sample runs against the real servers. The number of cases run is printed at the end.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading
import uuid

import anyio
import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import atdata_async
from atdata_async import (
    AtdataError,
    CorruptShardError,
    Dataset,
    EntryError,
    EntryNotFoundError,
    FieldTypeError,
    MalformedEntryError,
    RedactingFilter,
    ShardTransferError,
    SourceChangedError,
    ValidationError,
)
from atdata_async._backends.atmosphere_index import entry_from_record
from atdata_async._model.lexicon import DATASET_COLLECTION, dataset_from_json, to_json
from atdata_async._model.redact import mask_key_id, redact, remember_secret
from atdata_async._model.validate import check_metadata
from atdata_async._pipeline.promote import _storage, plan_promotion
from atdata_async.atmosphere import AtmosphereClient, AtmosphereIndex
from atdata_async.local import LocalDatasetEntry, LocalIndex, S3Credentials, S3DataStore
from atdata_async.promote import promote_to_atmosphere
from tests.conftest import TEST_PART, make_bucket, make_credentials
from tests.samples import FeatureSample, write_shards

CASES: collections.Counter[str] = collections.Counter()
PUBLISHED: list[dict] = []  # record JSON the fake PDS received, judged in one batch
REF = "atdata://local/schema/FeatureSample@1.0.0"
EXAMPLES = int(os.environ.get("ATDATA_HYPOTHESIS_EXAMPLES", "120"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
WRITES = {"com.atproto.repo.createRecord", "com.atproto.repo.putRecord",
          "com.atproto.repo.applyWrites", "com.atproto.repo.uploadBlob",
          "com.atproto.repo.deleteRecord"}

# -- strategies: adversarial values --------------------------------------------------------

surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1,
                     max_size=3)
controls = st.text(st.sampled_from("\x00\x1b\r\n\t\x7f\x85\u2028"), min_size=1, max_size=3)
hostile_text = st.one_of(
    st.text(max_size=30), st.just(""), st.just("   "), st.just("x" * 250),
    st.just("é" * 120),  # 240 bytes of UTF-8 in 120 characters
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=5), surrogates | controls,
              st.text(max_size=5)),
    st.text(st.characters(categories=["So", "Mn", "Lo"]), max_size=12),  # emoji, combiners
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**80, 2**80),
                    st.floats(allow_nan=True), hostile_text, st.binary(max_size=6))
any_value = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4)),
    max_leaves=12)
tags_values = st.one_of(any_value, st.lists(hostile_text, max_size=4),
                        st.lists(st.text(min_size=1, max_size=8), min_size=29, max_size=32))
urls = st.one_of(
    st.just("http://127.0.0.1:1/a.tar"), st.just("https://h.example/a.tar"),
    st.just("http://user:pw@127.0.0.1:1/a.tar"), st.just("http://[::1/a.tar"),
    st.just("http://h:99999/a.tar"), st.just("s3://bucket/k.tar"), st.just("ftp://h/x"),
    st.just("file:///etc/passwd"), st.just(""), hostile_text)
deep = st.integers(30, 400).map(lambda n: _nest(n))
metadata_values = st.one_of(
    st.none(), any_value, deep, st.dictionaries(st.text(max_size=8), any_value, max_size=4),
    st.builds(lambda n: {"num_samples": n}, st.one_of(st.integers(-5, 2**70), st.booleans(),
                                                       hostile_text)),
    st.builds(lambda c: {"checksums": c}, any_value),
    st.builds(lambda s: {"shard_sizes": {"http://127.0.0.1:1/a.tar": s}}, any_value))


legal_text = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1,
                     max_size=40).filter(lambda t: t.strip() != "")
legal_tags = st.lists(st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1,
                              max_size=20), max_size=5)
legal_metadata = st.one_of(st.none(), st.dictionaries(
    st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=8),
    st.one_of(st.integers(-2**53 + 1, 2**53 - 1), legal_text, st.booleans(),
              st.lists(st.integers(0, 9), max_size=3)), max_size=4))


def mixed(valid: dict, hostile: dict) -> st.SearchStrategy[dict]:
    """Every parameter valid except at most two drawn from their hostile strategies: the
    cases cover both outcomes (published, refused) rather than nearly always refusing."""

    @st.composite
    def build(draw: st.DrawFn) -> dict:
        broken = draw(st.sets(st.sampled_from(sorted(hostile)), max_size=2))
        return {k: draw(hostile[k] if k in broken else valid[k]) for k in valid}

    return build()


def _nest(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    return value


def _refused(exc: BaseException, where: str) -> None:
    """A refusal must be ours, and a ValueError/TypeError/KeyError twin."""
    assert isinstance(exc, AtdataError), f"{where}: raw {type(exc).__name__}: {exc!r:.300}"
    assert isinstance(exc, ValueError | TypeError | KeyError), type(exc)
    if isinstance(exc, ValidationError):
        assert exc.field and exc.field in str(exc)
    CASES[f"{where}: refused"] += 1


# -- 1. the pure planner: every parameter, every entry field ------------------------------


PLAN_VALID = {"name": st.none() | legal_text, "description": st.none() | legal_text,
              "tags": st.none() | legal_tags, "license": st.none() | legal_text,
              "copy_prefix": st.just("promoted"),
              "data_urls": st.just(["https://h.example/a.tar", "http://127.0.0.1:1/b.tar"]),
              "metadata": legal_metadata, "entry_name": legal_text}
PLAN_HOSTILE = {"name": hostile_text | any_value, "description": hostile_text | any_value,
                "tags": tags_values, "license": hostile_text | any_value,
                "copy_prefix": hostile_text | st.just("a/../b") | any_value,
                "data_urls": st.lists(urls, min_size=1, max_size=3) | any_value,
                "metadata": metadata_values, "entry_name": hostile_text | any_value}


@PROPERTY
@given(args=mixed(PLAN_VALID, PLAN_HOSTILE))
def test_plan_promotion_publishes_readable_records_or_refuses_naming_the_field(args):
    name, description, tags, license = (args["name"], args["description"], args["tags"],
                                        args["license"])
    copy_prefix, data_urls, metadata, entry_name = (
        args["copy_prefix"], args["data_urls"], args["metadata"], args["entry_name"])
    try:
        entry = LocalDatasetEntry(entry_name, REF, data_urls, metadata)
        plan = plan_promotion(entry, copy_to=None, name=name, description=description,
                              tags=tags, license=license, copy_prefix=copy_prefix)
    except Exception as exc:
        _refused(exc, "plan_promotion")
        return
    record = msgspec.structs.replace(
        plan.record, schema_ref="at://did:plc:abc/science.alt.dataset.schema/s1",
        storage=_storage(plan.shards, None, None))
    body = to_json(record)
    back = entry_from_record("at://did:plc:abc/science.alt.dataset.entry/r1",
                             dataset_from_json(json.loads(json.dumps(body))), None)
    assert back.name == record.name and back.tags == (list(tags) if tags else [])
    assert back.description == description and back.license == license
    PUBLISHED.append(body)
    CASES["plan_promotion: record accepted"] += 1


@PROPERTY
@given(value=st.one_of(any_value, deep, st.just({"a": {"b": [1, 2**70]}})),
       for_record=st.booleans())
def test_metadata_is_json_able_bounded_or_refused_by_path(value, for_record):
    try:
        check_metadata("metadata", value, for_record=for_record)
    except Exception as exc:
        _refused(exc, "metadata")
        return
    json.dumps(value, default=lambda b: base64.b64encode(b).decode())  # JSON-able
    msgspec.msgpack.encode(value)
    CASES["metadata: accepted"] += 1


STORE_KNOBS = ["part_size", "multipart_threshold", "min_part_size", "copy_part_size"]


@PROPERTY
@given(args=mixed(
    {**{k: st.integers(5 * 2**20, 64 * 2**20) for k in STORE_KNOBS},
     "max_concurrency": st.integers(1, 16), "max_attempts": st.integers(1, 10),
     "bucket": st.just("b"), "credentials": st.just("ok")},
    {**{k: any_value | st.integers(-1, 6 * 2**30) for k in STORE_KNOBS},
     "max_concurrency": any_value | st.integers(-3, 0), "max_attempts": any_value,
     "bucket": hostile_text | any_value,
     "credentials": any_value | st.just({"AWS_ACCESS_KEY_ID": 5}) | st.just(
         {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "s",
          "AWS_ENDPOINT": "http://u:pw@127.0.0.1:9/"})}))
def test_store_knobs_within_s3_limits_or_refused(args):
    kw = dict(args)
    credentials = kw.pop("credentials")
    if credentials == "ok":
        credentials = make_credentials("http://127.0.0.1:9")
    try:
        store = S3DataStore(credentials, **kw)
    except Exception as exc:
        _refused(exc, "S3DataStore")
        return
    assert store.max_concurrency >= 1 and 1 <= store.part_size <= 5 * 2**30
    CASES["S3DataStore: accepted"] += 1


CLIENT_NUMBERS = ["max_rate_limit_wait", "max_retries", "backoff_base", "refresh_margin",
                  "timeout"]


@PROPERTY
@given(args=mixed(
    {"base_url": st.just("https://pds.example"), **{n: st.integers(1, 9)
                                                    for n in CLIENT_NUMBERS}},
    {"base_url": urls | any_value, **{n: st.floats(allow_nan=True) | st.integers(-5, -1)
                                      | any_value for n in CLIENT_NUMBERS}}))
def test_client_parameters_checked(args):
    base_url = args.pop("base_url")
    numbers = [args[n] for n in CLIENT_NUMBERS]
    names = ["max_rate_limit_wait", "max_retries", "backoff_base", "refresh_margin", "timeout"]
    try:
        AtmosphereClient(base_url, **dict(zip(names, numbers, strict=True)))
    except Exception as exc:
        _refused(exc, "AtmosphereClient")
        return
    CASES["AtmosphereClient: accepted"] += 1


# -- 2. the readers: every record field random or missing ---------------------------------

VALID_RECORD = {
    "$type": DATASET_COLLECTION, "name": "n", "createdAt": "2025-01-01T00:00:00.000Z",
    "schemaRef": "at://did:plc:abc/science.alt.dataset.schema/s1",
    "storage": {"$type": "science.alt.dataset.storageHttp",
                "shards": [{"url": "https://h.example/a.tar",
                            "checksum": {"algorithm": "sha256", "digest": "0" * 64}}]},
    "tags": ["a"], "license": "MIT", "description": "d", "size": {"samples": 3},
}
FIELDS = ["name", "createdAt", "schemaRef", "storage", "tags", "license", "description",
          "size", "metadata", "$type"]


@PROPERTY
@given(changes=st.dictionaries(st.sampled_from(FIELDS), st.one_of(
    any_value, st.just({"$type": "science.alt.dataset.storageExternal", "urls": [1]}),
    st.just({"$type": "science.alt.dataset.storageS3", "bucket": 5, "shards": "x"}),
    st.just({"$bytes": "!!"}), st.just({"$bytes": base64.b64encode(b"\xc1").decode()})),
    max_size=3), drop=st.sets(st.sampled_from(FIELDS), max_size=2))
def test_record_reader_reads_or_refuses_every_field(changes, drop):
    value = {**VALID_RECORD, **changes}
    for key in drop:
        value.pop(key, None)
    try:
        entry = entry_from_record("at://did:plc:abc/science.alt.dataset.entry/r",
                                  dataset_from_json(value), None)
    except Exception as exc:
        _refused(exc, "record reader")
        return
    assert isinstance(entry.data_urls, list) and isinstance(entry.tags, list)
    CASES["record reader: read"] += 1


# -- 3. the whole promotion against a counting fake PDS ------------------------------------


def _wrong_claims(exc: BaseException) -> list[str]:
    """The shards a promotion refused because their claimed sha256 is not theirs."""
    failures = exc.failures if isinstance(exc, ShardTransferError) else {}
    return [url for url, e in failures.items()
            if isinstance(e, SourceChangedError) and "the entry claims" in str(e)]


class FakePds:
    """A PDS that answers like one and counts every call; writes are recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.records: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        method = request.url.path.rsplit("/", 1)[-1]
        self.calls.append(method)
        if method == "com.atproto.repo.listRecords":
            return httpx.Response(200, json={"records": []})
        if method in ("com.atproto.repo.createRecord", "com.atproto.repo.putRecord"):
            body = json.loads(request.content)
            self.records.append(body)
            rkey = body.get("rkey") or uuid.uuid4().hex[:13]
            return httpx.Response(200, json={
                "uri": f"at://{body['repo']}/{body['collection']}/{rkey}",
                "cid": "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxvgbkhc3cooffnxw4a"})
        if method == "com.atproto.repo.getRecord":
            return httpx.Response(400, json={"error": "RecordNotFound", "message": "none"})
        return httpx.Response(400, json={"error": "InvalidRequest", "message": method})

    @property
    def writes(self) -> int:
        return sum(1 for c in self.calls if c in WRITES)


FAKE_SESSION = {"did": "did:plc:fakefakefakefakefakefake", "handle": "fake.test",
                "accessJwt": "fake-access-token", "refreshJwt": "fake-refresh-token"}


@pytest.fixture(scope="module")
def web_shards(http_server):
    """Two real shards on the session's HTTP server, and their sha256."""
    directory = http_server.extra["root"] / f"hostile-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    paths = write_shards(directory, 2, 5, dim=4)
    served = [f"{http_server.url}/{directory.name}/{p.name}" for p in paths]
    return served, {u: hashlib.sha256(p.read_bytes()).hexdigest()
                    for u, p in zip(served, paths, strict=True)}


async def _fake_promotion(entry_args: dict, kwargs: dict) -> tuple[FakePds, object]:
    import fakeredis

    pds = FakePds()
    async with LocalIndex(fakeredis.aioredis.FakeRedis()) as index, AtmosphereClient(
            "http://127.0.0.1:9", transport=httpx.MockTransport(pds)) as client:
        await index.publish_schema(FeatureSample, version="1.0.0")
        await client.login(session=FAKE_SESSION)
        try:
            entry = LocalDatasetEntry(**entry_args)
            outcome: object = await promote_to_atmosphere(entry, index, client, **kwargs)
        except Exception as exc:
            outcome = exc
    return pds, outcome


PROMOTE_VALID = {"name": st.none() | legal_text, "description": st.none() | legal_text,
                 "tags": st.none() | legal_tags, "license": st.none() | legal_text,
                 "max_concurrency": st.integers(1, 4), "compute_checksums": st.booleans(),
                 "verify": st.booleans(), "copy_prefix": st.just("promoted"),
                 "progress": st.none() | st.just(lambda p: None), "data_store": st.none()}
PROMOTE_HOSTILE = {"name": hostile_text | any_value, "description": hostile_text | any_value,
                   "tags": tags_values, "license": hostile_text | any_value,
                   "max_concurrency": st.integers(-2, 0) | any_value,
                   "compute_checksums": any_value, "verify": any_value,
                   "copy_prefix": hostile_text | any_value, "progress": any_value,
                   "data_store": any_value}


@settings(PROPERTY, max_examples=max(20, EXAMPLES // 2))
@given(kwargs=mixed(PROMOTE_VALID, PROMOTE_HOSTILE),
       metadata=st.one_of(legal_metadata, metadata_values),
       claim=st.sampled_from(["none", "right", "wrong", "garbage"]),
       name=st.one_of(legal_text, hostile_text))
def test_promotion_publishes_a_readable_record_or_refuses_before_any_write(
        web_shards, kwargs, metadata, claim, name):
    served, digests = web_shards
    meta = dict(metadata) if isinstance(metadata, dict) else metadata
    if claim != "none" and (meta is None or isinstance(meta, dict)):
        meta = dict(meta or {})
        meta["checksums"] = {u: {"right": d, "wrong": "0" * 64, "garbage": "zz"}[claim]
                             for u, d in digests.items()}
    pds, outcome = anyio.run(_fake_promotion, {"name": name, "schema_ref": REF,
                                               "data_urls": served, "metadata": meta}, kwargs)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, AtdataError), f"raw {type(outcome).__name__}: {outcome!r}"
        if _wrong_claims(outcome):
            assert claim == "wrong" and set(_wrong_claims(outcome)) <= set(served)
        # refused before any remote write: nothing reached the PDS but reads
        assert pds.writes == 0, (outcome, pds.calls)
        CASES["promotion (fake PDS): refused before any write"] += 1
        return
    assert claim != "wrong" or kwargs.get("verify") is False
    (record,) = [r["record"] for r in pds.records if r["collection"] == DATASET_COLLECTION]
    back = entry_from_record(str(outcome), dataset_from_json(record), None)
    for url, digest in back.checksums.items():  # every published checksum is true
        assert digests[url] == digest
    assert back.data_urls == served
    PUBLISHED.append(record)
    CASES["promotion (fake PDS): published, read back"] += 1


@pytest.mark.parametrize(("kw", "field"), [
    ({"tags": "images"}, "tags"), ({"max_concurrency": 0}, "max_concurrency"),
    ({"license": ["MIT"]}, "license"), ({"entries": "abc"}, "entries"),
    ({"max_rate_limit_wait": float("nan")}, "max_rate_limit_wait"),
    ({"progress": 5}, "progress")])
def test_promote_many_refuses_before_any_write(kw, field):
    from atdata_async.promote import promote_many

    async def run() -> tuple[FakePds, BaseException | None]:
        import fakeredis

        pds = FakePds()
        async with LocalIndex(fakeredis.aioredis.FakeRedis()) as index, AtmosphereClient(
                "http://127.0.0.1:9", transport=httpx.MockTransport(pds)) as client:
            await client.login(session=FAKE_SESSION)
            entries = kw.pop("entries", [LocalDatasetEntry("e", REF, ["https://h.example/a"])])
            try:
                await promote_many(entries, index, client, **kw)
            except Exception as exc:
                return pds, exc
        return pds, None

    pds, exc = anyio.run(run)
    assert isinstance(exc, ValidationError) and exc.field == field
    assert pds.writes == 0 and pds.calls == []
    CASES["promote_many: refused before any write"] += 1


def test_published_records_pass_the_reference_validator():
    """Every record the properties above published, judged by @atproto/lexicon at once."""
    from tests.lexicon_check import validate_records

    assert PUBLISHED, "the properties published nothing"
    results = validate_records([{"collection": DATASET_COLLECTION, "value": r}
                                for r in PUBLISHED])
    bad = [r for r in results if not r["valid"]]
    assert not bad, bad[:3]
    CASES["reference validator: records accepted"] += len(results)


# -- 4. a sample against the real servers --------------------------------------------------


def store_for(credentials, bucket) -> S3DataStore:
    return S3DataStore(credentials, bucket=bucket, part_size=TEST_PART,
                       multipart_threshold=2 * TEST_PART, min_part_size=TEST_PART)


@pytest.fixture
async def real(pds, pds_account, redis_url, s3_credentials, bucket, tmp_path):
    store = store_for(s3_credentials, bucket)
    async with store, LocalIndex(redis_url, data_store=store) as index, \
            AtmosphereClient(pds.url) as client:
        await client.login(pds_account["handle"], pds_account["password"])
        await index.publish_schema(FeatureSample, version="1.0.0")
        paths = write_shards(tmp_path, 2, 5, dim=4)
        entry = await index.insert_dataset(Dataset[FeatureSample]([str(p) for p in paths]),
                                           name="real")
        yield index, client, entry, store


async def _records(client) -> int:
    n = 0
    for collection in (DATASET_COLLECTION, "science.alt.dataset.schema"):
        n += len([r async for r in client.list_records(collection)])
    return n


BAD_REAL = [
    ({"tags": "images"}, FieldTypeError, "tags"),
    ({"description": {"a": 1}}, FieldTypeError, "description"),
    ({"license": ["MIT"]}, FieldTypeError, "license"),
    ({"name": "bad\udc80name"}, ValidationError, "name"),
    ({"name": "esc\x1b[31mred"}, ValidationError, "name"),
    ({"max_concurrency": 0}, ValidationError, "max_concurrency"),
    ({"max_concurrency": -3}, ValidationError, "max_concurrency"),
    ({"max_concurrency": True}, FieldTypeError, "max_concurrency"),
    ({"verify": "no"}, FieldTypeError, "verify"),
    ({"copy_prefix": None}, FieldTypeError, "copy_prefix"),
]


@pytest.mark.pds
@pytest.mark.anyio
async def test_real_servers_refuse_before_any_write(real):
    index, client, entry, _ = real
    before, sent = await _records(client), client.request_count
    for kw, kind, field in BAD_REAL:
        with anyio.fail_after(30):  # max_concurrency=0 used to hang forever
            with pytest.raises(kind) as info:
                await promote_to_atmosphere(entry, index, client, **kw)
        assert info.value.field == field, kw
        CASES["real servers: refused before any write"] += 1
    assert client.request_count == sent and await _records(client) == before


@pytest.mark.pds
@pytest.mark.anyio
async def test_real_servers_refuse_bad_entries_before_any_write(real):
    index, client, entry, _store = real
    before, sent = await _records(client), client.request_count
    bad_entries = [
        (LocalDatasetEntry("huge", REF, entry.data_urls, {**entry.metadata,
                                                          "num_samples": 2**70}),
         "entry.metadata.num_samples"),
        (LocalDatasetEntry("creds", REF, ["http://user:pw@127.0.0.1:1/a.tar"]),
         "entry.data_urls[0]"),
        (LocalDatasetEntry("deep", REF, entry.data_urls, _nest(100)), None),
    ]
    for bad, field in bad_entries:
        with pytest.raises(ValueError) as info:
            await promote_to_atmosphere(bad, index, client)
        assert isinstance(info.value, AtdataError)
        if field:
            assert info.value.field == field
        assert "pw@" not in str(info.value)
        CASES["real servers: refused before any write"] += 1
    assert client.request_count == sent and await _records(client) == before


@pytest.mark.pds
@pytest.mark.anyio
async def test_real_servers_publish_unusual_but_legal_values(real):
    index, client, entry, store = real
    kw = {"name": "数据集 🌊 naïve", "description": "line one\nline two\ttabbed",
          "tags": ("ünïcode", "🏷️", "x" * 150), "license": "CC-BY-4.0"}
    uri = await promote_to_atmosphere(entry, index, client, **kw)
    got = await AtmosphereIndex(client).get_dataset(uri)
    assert (got.name, got.description, got.tags, got.license) == (
        kw["name"], kw["description"], list(kw["tags"]), kw["license"])
    assert got.checksums == {f"s3://{store.bucket}/{u.split('/', 3)[3]}": d
                             for u, d in entry.checksums.items()}
    CASES["real servers: published, read back"] += 1


# -- 5. claims are proven before they are published ---------------------------------------


@pytest.mark.pds
@pytest.mark.anyio
async def test_claimed_checksums_are_proven_by_hashing(real, web_shards):
    index, client, entry, _store = real
    true = entry.checksums
    # The same objects, but claims without the ETags our insert recorded.
    for claim, expect_ok in (({u: "0" * 64 for u in true}, False), (true, True)):
        claimed = LocalDatasetEntry(f"claimed-{expect_ok}", REF, entry.data_urls,
                                    {"checksums": claim})
        before = await _records(client)
        if not expect_ok:
            with pytest.raises(ShardTransferError) as info:
                await promote_to_atmosphere(claimed, index, client)
            assert _wrong_claims(info.value)
            assert await _records(client) == before  # no schema record, no dataset
            continue
        got = await AtmosphereIndex(client).get_dataset(
            await promote_to_atmosphere(claimed, index, client))
        assert sorted(got.checksums.values()) == sorted(true.values())
    # verify=False: a wrong claim is never published; what is published was computed
    wrong = LocalDatasetEntry("unverified", REF, entry.data_urls,
                              {"checksums": {u: "0" * 64 for u in true}})
    got = await AtmosphereIndex(client).get_dataset(
        await promote_to_atmosphere(wrong, index, client, verify=False))
    assert sorted(got.checksums.values()) == sorted(true.values())
    got = await AtmosphereIndex(client).get_dataset(await promote_to_atmosphere(
        wrong, index, client, verify=False, compute_checksums=False, name="unverified-2"))
    assert got.checksums == {}
    # http shards: a wrong claim is found by streaming the shard
    served, _ = web_shards
    http_wrong = LocalDatasetEntry("web", REF, served, {"checksums": {u: "1" * 64
                                                                      for u in served}})
    with pytest.raises(ShardTransferError) as info:
        await promote_to_atmosphere(http_wrong, index, client)
    assert set(_wrong_claims(info.value)) <= set(served) and _wrong_claims(info.value)
    # nobody can read the shard (no data store): refused before any write
    async with LocalIndex(index.redis) as bare:
        sent = client.request_count
        with pytest.raises(EntryError, match="verify=False"):
            await promote_to_atmosphere(LocalDatasetEntry(
                "blind", REF, entry.data_urls, {"checksums": true}), bare, client)
        assert client.request_count == sent
    CASES["claims: proven or refused"] += 6


# -- 6. malformed index entries ------------------------------------------------------------


@pytest.mark.anyio
async def test_malformed_index_entries_are_named_and_never_break_the_others(
        redis_url, tmp_path):
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(redis_url)
    async with LocalIndex(redis_url) as index:
        await index.publish_schema(FeatureSample, version="1.0.0")
        paths = write_shards(tmp_path, 1, 3, dim=4)
        good = await index.add_entry(Dataset[FeatureSample]([str(p) for p in paths]),
                                     name="good")
        await raw.hset("LocalDatasetEntry:handwritten", mapping={"name": "hand", "cid": "x"})
        await raw.hset("LocalDatasetEntry:truncated", mapping={
            "name": "trunc", "schema_ref": REF, "cid": "y", "data_urls": b"\x93\xa1"})
        await raw.hset("LocalDatasetEntry:badutf8", mapping={
            "name": b"\xff\xfe", "schema_ref": REF, "cid": "z", "data_urls": b"\x90"})
        await raw.hset("LocalDatasetEntry:meta", mapping={
            "name": "meta", "schema_ref": REF, "cid": "m", "data_urls": b"\x90",
            "metadata": b"\x05"})
        await raw.set("LocalDatasetEntry:astring", "not a hash")
        await raw.set("LocalSchema:Broken@1.0.0", "{not json")

        assert [e.name for e in await index.list_entries()] == ["good"]
        bad = {e.key for e in await index.malformed_entries()}
        assert bad == {f"LocalDatasetEntry:{k}" for k in
                       ("handwritten", "truncated", "badutf8", "meta", "astring")}
        assert (await index.get_entry_by_name("good")).cid == good.cid
        with pytest.raises(EntryNotFoundError):
            await index.get_entry_by_name("unknown")
        with pytest.raises(MalformedEntryError, match=r"LocalDatasetEntry:handwritten.*schema_ref"):
            await index.get_entry_by_name("hand")
        for cid in ("handwritten", "truncated", "astring"):
            with pytest.raises(MalformedEntryError, match=f"LocalDatasetEntry:{cid}"):
                await index.get_entry(cid)
        with pytest.raises(MalformedEntryError, match=r"LocalSchema:Broken@1\.0\.0"):
            await index.get_schema("atdata://local/schema/Broken@1.0.0")
        assert [s["name"] for s in await index.list_schemas()] == ["FeatureSample"]
    await raw.aclose()
    out = subprocess.run([sys.executable, "-m", "atdata_async.cli", "--redis-url", redis_url,
                          "ls"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("good"), out.stderr
    CASES["malformed entries: named, others unharmed"] += 6


@pytest.mark.anyio
async def test_corrupt_shards_name_the_shard(tmp_path):
    path = tmp_path / "not-a-tar.tar"
    path.write_bytes(b"garbage" * 200)
    with pytest.raises(CorruptShardError, match=r"not-a-tar\.tar"):
        _ = [s async for s in Dataset[FeatureSample](str(path))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("000001.msgpack")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"\xc1\xc1\xc1"))
    path.write_bytes(buf.getvalue())
    with pytest.raises(CorruptShardError, match=r"000001\.msgpack"):
        _ = [s async for s in Dataset[FeatureSample](str(path))]
    CASES["corrupt shards: named"] += 2


# -- 7. secrets ----------------------------------------------------------------------------

PASSWORD = "hunter2-app-password-xyz"


@pytest.mark.anyio
@pytest.mark.parametrize("shape", ["json", "text", "html", "escaped"])
async def test_auth_errors_never_echo_the_password(shape):
    def echo(request: httpx.Request) -> httpx.Response:
        body = request.content.decode()
        if shape == "json":
            return httpx.Response(401, json={"error": "AuthenticationRequired",
                                             "message": f"bad request: {body}"})
        if shape == "escaped":
            return httpx.Response(400, json={"error": "InvalidRequest",
                                             "message": json.dumps(body)})
        if shape == "html":
            return httpx.Response(500, text=f"<html>{body}</html>",
                                  headers={"content-type": "text/html"})
        return httpx.Response(400, text=f"you sent {body}")

    async with AtmosphereClient("http://127.0.0.1:9", transport=httpx.MockTransport(echo),
                                max_retries=0) as client:
        with pytest.raises(AtdataError) as info:
            await client.login("someone.test", PASSWORD + shape)
    text = f"{info.value} {info.value!r} {vars(info.value)}"
    assert PASSWORD not in text
    CASES["secrets: auth error without the password"] += 1


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        payload = json.dumps({"error": "InvalidRequest", "message": body.decode()}).encode()
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_cli_against_an_echoing_pds_keeps_the_password_out(redis_url):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "ATDATA_PASSWORD": PASSWORD, "ATDATA_HANDLE": "who.test"}
        out = subprocess.run(
            [sys.executable, "-m", "atdata_async.cli", "--redis-url", redis_url, "--pds-url",
             f"http://127.0.0.1:{server.server_port}", "schemas", "--remote"],
            capture_output=True, text=True, timeout=60, env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert out.returncode != 0 and "error" in out.stderr.lower()
    assert PASSWORD not in out.stdout + out.stderr
    CASES["secrets: CLI error without the password"] += 1


def test_reprs_mask_access_key_ids_and_refuse_endpoint_passwords():
    creds = S3Credentials.load({"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                                "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"})
    assert "AKIAIOSFODNN7EXAMPLE" not in repr(creds) and "wJalr" not in repr(creds)
    assert mask_key_id("AKIAIOSFODNN7EXAMPLE") in repr(creds)
    store = S3DataStore({"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                         "AWS_SECRET_ACCESS_KEY": "x" * 20}, bucket="b")
    assert "AKIAIOSFODNN7EXAMPLE" not in repr(store) + repr(store.credentials)
    with pytest.raises(atdata_async.ConfigurationError) as info:
        S3Credentials.load({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                            "AWS_ENDPOINT": "http://user:s3cr3tpw@127.0.0.1:9000"})
    assert "s3cr3tpw" not in str(info.value)
    CASES["secrets: reprs"] += 3


@pytest.mark.anyio
async def test_botocore_debug_lines_are_masked_by_the_filter(moto_server, caplog):
    key_id = "AKIA" + "HOSTILETESTKEY12"
    secret = "hostile-secret-access-key-0123456789"
    raw_lines: list[str] = []
    clean_lines: list[str] = []

    class Collect(logging.Handler):
        def __init__(self, sink: list[str]) -> None:
            super().__init__()
            self.sink = sink

        def emit(self, record: logging.LogRecord) -> None:
            self.sink.append(self.format(record))

    raw, clean = Collect(raw_lines), Collect(clean_lines)
    clean.addFilter(RedactingFilter())
    botocore_log = logging.getLogger("botocore")
    old_level = botocore_log.level
    botocore_log.setLevel(logging.DEBUG)
    # the raw handler runs first: it sees the lines as botocore wrote them
    botocore_log.addHandler(raw)
    botocore_log.addHandler(clean)
    try:
        bucket = make_bucket(moto_server.url)
        creds = {"AWS_ENDPOINT": moto_server.url, "AWS_ACCESS_KEY_ID": key_id,
                 "AWS_SECRET_ACCESS_KEY": secret}
        async with S3DataStore(creds, bucket=bucket) as store:
            await store.put_bytes("k", b"data")
            await store.size_of(store.url("k"))
        logging.getLogger("botocore.endpoint").debug(
            "Sending http request: <AWSPreparedRequest url=http://admin:pw-in-url@h:9/b/k>")
    finally:
        botocore_log.removeHandler(raw)
        botocore_log.removeHandler(clean)
        botocore_log.setLevel(old_level)
    leaked_before = sum(key_id in line for line in raw_lines)
    assert leaked_before > 0, "botocore logged no access key id: the test proves nothing"
    assert not [line for line in clean_lines if key_id in line or secret in line
                or "pw-in-url" in line]
    CASES["secrets: botocore DEBUG lines masked"] += leaked_before


def test_library_logs_and_redaction_of_remembered_secrets(caplog, private_secrets):
    remember_secret("a-remembered-token-value")
    with caplog.at_level(logging.INFO, logger="atdata_async"):
        logging.getLogger("atdata_async.s3").warning(
            "copy via http://u:pw-secret@h/x with a-remembered-token-value and "
            "Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.c2ln")
    text = caplog.text
    assert "pw-secret" not in text and "a-remembered-token-value" not in text
    assert "eyJhbGciOi" not in text
    assert redact('{"password": "p\\"w"}') == '{"password": "***"}'
    CASES["secrets: library logs masked"] += 1


@pytest.fixture
def private_secrets(monkeypatch):
    """The process-wide secret registry, restored afterwards: random "secrets" such as
    ``promoted`` must not mask words in the rest of the session's messages."""
    from atdata_async._model import redact as _redact

    monkeypatch.setattr(_redact, "_known", dict(_redact._known))
    monkeypatch.setattr(_redact, "_known_pattern", _redact._known_pattern)


@settings(PROPERTY, max_examples=max(20, EXAMPLES // 3))
@given(secret=st.text(min_size=6, max_size=30).filter(lambda s: s.strip() == s and s),
       before=st.text(max_size=20), after=st.text(max_size=20))
def test_remembered_secrets_never_survive_redaction(private_secrets, secret, before, after):
    remember_secret(secret)
    for text in (before + secret + after, json.dumps({"password": secret})):
        assert secret not in redact(text)
    CASES["secrets: redaction property"] += 1


# -- the report ----------------------------------------------------------------------------


def test_zz_report_cases(capsys):
    """Print how many hostile cases ran (the issue asks for the number)."""
    with capsys.disabled():
        total = sum(CASES.values())
        print(f"\nhostile cases run: {total}")
        for what, n in sorted(CASES.items()):
            print(f"  {n:6d}  {what}")
    assert total > 0

