"""AtmosphereClient and AtmosphereIndex against the real reference PDS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest

from atdata_async import AuthError, RateLimitedError, ValidationError
from atdata_async._model.lexicon import (
    encode_metadata,
    schema_record_from_local,
    to_json,
    validate_dataset,
)
from atdata_async.atmosphere import (
    DATASET_COLLECTION,
    SCHEMA_COLLECTION,
    AtmosphereClient,
    AtmosphereIndex,
    Checksum,
    DatasetRecord,
    DatasetSize,
    HttpShard,
    StorageHttp,
    next_tid,
)
from tests import services

pytestmark = [pytest.mark.anyio, pytest.mark.pds]
COLL = "com.example.atdatatest.thing"


async def test_login_with_password_and_app_password(pds, pds_account):
    async with AtmosphereClient(pds.url) as client:
        await client.login(pds_account["handle"], pds_account["password"])
        assert client.did == pds_account["did"] and client.handle == pds_account["handle"]
        # this PDS sends no didDoc with the session: requests stay on the login URL
        assert client.service_url == pds.url
        app_password = services.create_app_password(pds.url, client.session.access_jwt, "t")
    async with AtmosphereClient(pds.url) as app_client:
        await app_client.login(pds_account["did"], app_password)
        assert app_client.did == pds_account["did"]
        assert (await app_client.describe_repo())["handle"] == pds_account["handle"]
    async with AtmosphereClient(pds.url) as bad:
        with pytest.raises(AuthError) as info:
            await bad.login(pds_account["handle"], "wrong-password")
    assert info.value.status == 401 and info.value.error == "AuthenticationRequired"
    assert "wrong-password" not in str(info.value)


async def test_record_calls_pagination_and_apply_writes(client):
    created = await client.create_record(COLL, {"n": 0, "text": "hello"})
    rkey = created["uri"].rsplit("/", 1)[1]
    got = await client.get_record(COLL, rkey)
    assert got["value"]["text"] == "hello" and got["cid"] == created["cid"]
    put = await client.put_record(COLL, rkey, {"n": 0, "text": "changed"},
                                  swap_record=created["cid"])
    assert (await client.get_record(COLL, rkey))["value"]["text"] == "changed"
    with pytest.raises(Exception) as stale:
        await client.put_record(COLL, rkey, {"n": 0, "text": "x"}, swap_record=created["cid"])
    assert getattr(stale.value, "error", None) == "InvalidSwap"
    writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": COLL,
               "rkey": next_tid(), "value": {"n": i + 1}} for i in range(230)]
    results = await client.apply_writes(writes)
    assert len(results) == 230
    values = [r["value"]["n"] async for r in client.list_records(COLL)]
    assert sorted(values) == list(range(231))  # 3 pages: the cursor was followed
    await client.delete_record(COLL, rkey)
    with pytest.raises(KeyError):
        await client.get_record(COLL, rkey)
    assert put["uri"].endswith(rkey)


async def test_float_is_refused_before_sending(client):
    before = client.request_count
    with pytest.raises(ValidationError) as info:
        await client.create_record(COLL, {"ok": 1, "nested": [{"ratio": 0.25}]})
    assert info.value.field == "record.nested[0].ratio" and client.request_count == before


def mint_expired(token: str, secret: str) -> str:
    """The same access token with exp in the past, signed with the PDS's JWT secret."""
    header, payload, _ = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(iat=int(time.time()) - 7300, exp=int(time.time()) - 100)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    sig = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


@pytest.mark.parametrize("proactive", [False, True])
async def test_expired_access_token_is_refreshed_transparently(pds, pds_account, proactive):
    changes = []
    async with AtmosphereClient(pds.url, on_session_change=changes.append) as client:
        if not proactive:  # a margin of -inf (below what the constructor accepts) turns
            client.refresh_margin = float("-inf")  # it off: the server must say ExpiredToken
        session = await client.login(pds_account["handle"], pds_account["password"])
        expired = mint_expired(session["accessJwt"], pds.extra["jwt_secret"])
        await client.login(session={**session, "accessJwt": expired})
        before = client.request_count
        created = await client.create_record(COLL, {"after": "refresh"})
        assert created["uri"].startswith("at://")
        # reactive: failed call + refresh + retry; proactive: refresh + call
        assert client.request_count - before == (2 if proactive else 3)
    assert changes[-1]["refreshJwt"] != session["refreshJwt"]  # refresh tokens rotate
    # what the server itself answers for that token
    answer = httpx.post(f"{pds.url}/xrpc/com.atproto.repo.createRecord",
                        headers={"authorization": f"Bearer {expired}"},
                        json={"repo": session["did"], "collection": COLL, "record": {}})
    assert (answer.status_code, answer.json()["error"]) == (400, "ExpiredToken")


LOCAL_SCHEMA = {"name": "S", "version": "1.0.0", "fields": [
    {"name": "x", "fieldType": {"$type": "local#primitive", "primitive": "int"},
     "optional": False}]}


async def test_dataset_record_reads_back_with_every_field(client):
    schema = await client.create_record(SCHEMA_COLLECTION, to_json(
        schema_record_from_local(LOCAL_SCHEMA, "2026-01-01T00:00:00.000Z")))
    record = validate_dataset(DatasetRecord(
        name="ds", schema_ref=schema["uri"], created_at="2026-01-01T00:00:00.000Z",
        storage=StorageHttp([HttpShard("https://example.org/a.tar",
                                       Checksum("sha256", "ab" * 32))]),
        description="desc", tags=["x", "y"], license="MIT",
        size=DatasetSize(samples=10, bytes=1234, shards=1),
        metadata=encode_metadata({"split": "train", "n": 3, "ratio": 0.5})))
    created = await client.create_record(DATASET_COLLECTION, to_json(record), rkey=next_tid())
    entry = await AtmosphereIndex(client).get_dataset(created["uri"])
    assert (entry.name, entry.schema_ref, entry.data_urls) == ("ds", schema["uri"],
                                                               ["https://example.org/a.tar"])
    assert (entry.description, entry.tags, entry.license) == ("desc", ["x", "y"], "MIT")
    assert entry.metadata == {"split": "train", "n": 3, "ratio": 0.5}  # floats ride in msgpack
    assert entry.checksums == {"https://example.org/a.tar": "ab" * 32}
    assert entry.size == {"samples": 10, "bytes": 1234, "shards": 1}
    index = AtmosphereIndex(client)
    assert [d.uri for d in await index.list_datasets()] == [created["uri"]]
    assert (await index.get_schema(schema["uri"]))["name"] == "S"
    with pytest.raises(ValueError):
        await index.get_dataset(schema["uri"])  # a schema is not a dataset
    with pytest.raises(KeyError):
        await index.get_dataset(created["uri"].rsplit("/", 1)[0] + "/3zzzzzzzzzzzz")


@pytest.mark.writes_invalid_records(reason="atdata 0.7 writes metadata as an object")
async def test_metadata_reads_back_in_atdata_object_form(client):
    """atdata 0.7 writes metadata as a JSON object (the lexicon says bytes): still read."""
    schema = await client.create_record(SCHEMA_COLLECTION, to_json(
        schema_record_from_local(LOCAL_SCHEMA, "2026-01-01T00:00:00.000Z")))
    record = to_json(DatasetRecord(
        name="old", schema_ref=schema["uri"], created_at="2026-01-01T00:00:00.000Z",
        storage=StorageHttp([HttpShard("https://example.org/a.tar")])))
    record["metadata"] = {"split": "train", "sourceUri": "https://example.org",
                          "custom": {"n": 3}}
    created = await client.create_record(DATASET_COLLECTION, record, rkey=next_tid())
    entry = await AtmosphereIndex(client).get_dataset(created["uri"])
    assert entry.metadata == {"split": "train", "source_uri": "https://example.org", "n": 3}


def test_sync_facade_login_leaves_the_client_logged_in(pds, pds_account):
    from atdata_async.sync.atmosphere import AtmosphereClient as SyncClient
    from atdata_async.sync.atmosphere import AtmosphereIndex as SyncIndex

    client = SyncClient(pds.url)
    client.login(pds_account["handle"], pds_account["password"])
    assert client.did == pds_account["did"]
    created = client.create_record(COLL, {"sync": 1})
    value = client.get_record(COLL, created["uri"].rsplit("/", 1)[1])["value"]
    assert value["sync"] == 1
    assert SyncIndex(client).list_datasets() == []
    client.close()


async def test_31st_login_is_rate_limited(limited_pds):
    account = services.create_account(limited_pds.url, "limited")
    async with AtmosphereClient(limited_pds.url, max_rate_limit_wait=0) as client:
        for _ in range(30):
            await client.login(account["handle"], account["password"])
        with pytest.raises(RateLimitedError) as info:
            await client.login(account["handle"], account["password"])
    assert info.value.status == 429 and info.value.reset_at > time.time()


async def test_blob_upload_handle_resolution_and_describe(client, pds_account):
    blob = await client.upload_blob(b"\x00shard bytes\x01", "application/x-tar")
    assert blob["$type"] == "blob" and blob["size"] == 13
    assert blob["mimeType"] == "application/x-tar"
    assert await client.resolve_handle(pds_account["handle"]) == pds_account["did"]
    described = await client.describe_repo()
    assert described["did"] == pds_account["did"] and described["handle"] == pds_account["handle"]
