"""AtmosphereClient retry and error policy with httpx.MockTransport (no network)."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from atdata_async import AuthError, RateLimitedError, XrpcError
from atdata_async._model.ids import is_tid, next_tid, parse_at_uri, record_key_from, tid_from
from atdata_async._model.lexicon import (
    DatasetRecord,
    DatasetSize,
    S3Shard,
    StorageS3,
    dataset_from_json,
    decode_metadata,
    encode_metadata,
    to_json,
    validate_dataset,
)
from atdata_async.atmosphere import AtmosphereClient

pytestmark = pytest.mark.anyio


def fake_jwt(exp: float) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": int(exp)}).encode()).decode()
    return f"h.{payload.rstrip('=')}.s"


SESSION = {"did": "did:plc:abc", "handle": "a.test", "accessJwt": fake_jwt(time.time() + 3600),
           "refreshJwt": fake_jwt(time.time() + 86400)}


def client_with(handler) -> AtmosphereClient:
    client = AtmosphereClient("http://pds.invalid", transport=httpx.MockTransport(handler),
                              backoff_base=0.001, max_rate_limit_wait=2)
    return client


async def test_5xx_and_resets_are_retried_for_safe_calls():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("reset")
        if len(calls) in (2, 3):
            return httpx.Response(502 if len(calls) == 2 else 503, json={"error": "Upstream"})
        return httpx.Response(200, json={"uri": "at://x/y/z", "cid": "c", "value": {}})

    async with client_with(handler) as client:
        await client.login(session=SESSION)
        got = await client.get_record("c.o.l", "k")
    assert got["uri"] == "at://x/y/z" and len(calls) == 4


async def test_non_idempotent_calls_are_not_repeated_blindly():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(502, json={"error": "BadGateway", "message": "down"})

    async with client_with(handler) as client:
        await client.login(session=SESSION)
        with pytest.raises(XrpcError) as info:
            await client.create_record("c.o.l", {"a": 1})
    assert len(calls) == 1
    err = info.value
    assert (err.status, err.error, err.message, err.method) == (
        502, "BadGateway", "down", "com.atproto.repo.createRecord")


async def test_expired_token_is_refreshed_and_the_call_retried_once():
    seen, changes = [], []

    def handler(request):
        auth = request.headers.get("authorization", "")
        seen.append((request.url.path, auth[-8:]))
        if request.url.path.endswith("refreshSession"):
            return httpx.Response(200, json={**SESSION, "accessJwt": fake_jwt(time.time() + 7200),
                                             "refreshJwt": "new-refresh"})
        if auth == f"Bearer {SESSION['accessJwt']}":
            return httpx.Response(400, json={"error": "ExpiredToken", "message": "expired"})
        return httpx.Response(200, json={"did": "did:plc:abc"})

    async with client_with(handler) as client:
        client.on_session_change = changes.append
        await client.login(session=SESSION)
        await client.describe_repo()
    assert [p.rsplit(".", 1)[-1] for p, _ in seen] == ["describeRepo", "refreshSession",
                                                        "describeRepo"]
    assert changes[-1]["refreshJwt"] == "new-refresh"


async def test_token_near_expiry_is_refreshed_before_the_call():
    paths = []

    def handler(request):
        paths.append(request.url.path.rsplit(".", 1)[-1])
        if paths[-1] == "refreshSession":
            return httpx.Response(200, json={**SESSION, "accessJwt": fake_jwt(time.time() + 7200)})
        return httpx.Response(200, json={})

    async with client_with(handler) as client:
        await client.login(session={**SESSION, "accessJwt": fake_jwt(time.time() + 5)})
        await client.describe_repo()
    assert paths == ["refreshSession", "describeRepo"]


async def test_429_waits_for_reset_or_raises_with_reset_time():
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, json={"error": "RateLimitExceeded"},
                                  headers={"ratelimit-reset": str(int(time.time()) + 1)})
        return httpx.Response(200, json={})

    async with client_with(handler) as client:
        await client.login(session=SESSION)
        await client.describe_repo()
    assert len(calls) == 2

    far = int(time.time()) + 3600

    def always_limited(request):
        return httpx.Response(429, json={"error": "RateLimitExceeded", "message": "slow down"},
                              headers={"ratelimit-reset": str(far)})

    async with client_with(always_limited) as client:
        await client.login(session=SESSION)
        with pytest.raises(RateLimitedError) as info:
            await client.describe_repo()
    assert info.value.reset_at == far and info.value.status == 429


async def test_login_follows_the_pds_named_in_the_did_document():
    hosts = []

    def handler(request):
        hosts.append(request.url.host)
        if request.url.path.endswith("createSession"):
            doc = {"service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                                "serviceEndpoint": "https://home-pds.invalid"}]}
            return httpx.Response(200, json={**SESSION, "didDoc": doc})
        return httpx.Response(200, json={})

    async with client_with(handler) as client:
        session = await client.login("a.test", "app-pass")
        await client.describe_repo()
    assert hosts == ["pds.invalid", "home-pds.invalid"]
    assert session["pdsUrl"] == "https://home-pds.invalid"


async def test_not_logged_in_is_a_clear_auth_error():
    client = AtmosphereClient("http://pds.invalid")
    with pytest.raises(AuthError, match="not logged in"):
        await client.create_record("c.o.l", {})
    assert "not logged in" in repr(client)


def test_session_repr_hides_tokens():
    client = AtmosphereClient("http://pds.invalid")
    from atdata_async._backends.xrpc import Session

    client._set_session(Session.from_dict(SESSION))
    assert SESSION["accessJwt"] not in repr(client.session)
    assert SESSION["refreshJwt"] not in repr(client.session) and "a.test" in repr(client)


def test_tids_and_at_uris():
    a, b = next_tid(), next_tid()
    assert is_tid(a) and is_tid(b) and a < b and len(a) == 13
    assert tid_from(0, 0) == "2222222222222"
    uri = parse_at_uri("at://did:plc:abc/science.alt.dataset.entry/3kabc")
    assert (uri.repo, uri.collection, uri.rkey) == ("did:plc:abc", "science.alt.dataset.entry",
                                                    "3kabc")
    for bad in ("at://did:plc:abc", "https://x/y/z", "at://a/b/c/d"):
        with pytest.raises(ValueError):
            parse_at_uri(bad)
    with pytest.raises(ValueError, match=r"not science\.alt\.dataset\.entry"):
        parse_at_uri("at://did:plc:a/science.alt.dataset.schema/x", "science.alt.dataset.entry")
    assert record_key_from("my.mod.Sample@1.0.0+b") == "my.mod.Sample_1.0.0_b"


def _record(**kw) -> DatasetRecord:
    base = dict(name="n", schema_ref="at://did:plc:a/science.alt.dataset.schema/s",
                storage=StorageS3(bucket="b", shards=[S3Shard("k")]),
                created_at="2026-01-01T00:00:00.000Z")
    return DatasetRecord(**{**base, **kw})


@pytest.mark.parametrize(("kw", "field"), [
    ({"name": "x" * 201}, "name"),
    ({"description": "d" * 5001}, "description"),
    ({"license": "l" * 201}, "license"),
    ({"tags": [f"t{i}" for i in range(31)]}, "tags"),
    ({"tags": ["t" * 151]}, "tags"),
    ({"schema_ref": "not-a-uri"}, "schemaRef"),
    ({"metadata": {"split": "train"}}, "metadata"),  # the object form is never written
    ({"metadata": encode_metadata({"blob": "x" * 200_000})}, "metadata"),
    ({"size": DatasetSize(samples=0.5)}, "size.samples"),
])
def test_lexicon_limits_name_the_field(kw, field):
    with pytest.raises(ValueError) as info:
        validate_dataset(_record(**kw))
    assert info.value.field == field


def test_records_read_atdata_forms():
    legacy = {"$type": "science.alt.dataset.entry", "name": "old",
              "schemaRef": "at://did:plc:a/science.alt.dataset.schema/s",
              "storage": {"$type": "science.alt.dataset.storageExternal", "urls": ["s3://b/k"]},
              "createdAt": "2025-01-01T00:00:00Z",
              "metadata": {"$bytes": base64.b64encode(b"\x81\xa1k\xa1v").decode()}}
    rec = dataset_from_json(legacy)
    assert rec.storage.urls == ["s3://b/k"] and decode_metadata(rec.metadata) == {"k": "v"}
    written = to_json(_record(tags=["a"]))
    assert written["$type"] == "science.alt.dataset.entry" and written["schemaRef"]
    assert written["storage"]["$type"] == "science.alt.dataset.storageS3"
    assert written["storage"]["shards"][0]["checksum"] == {"algorithm": "none", "digest": ""}
    assert "description" not in written
