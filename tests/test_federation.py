"""Reading records across the network: handles and DIDs resolved to the author's PDS.

Two real PDS servers share one real PLC directory (tests/services.py); a dataset
published on the second is read through a client of the first, with no login there.
The resolver's corner cases run against httpx.MockTransport.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import uuid

import anyio
import httpx
import pytest

from atdata_async import (
    AtdataError,
    Dataset,
    IdentityError,
    IdentityNotFoundError,
    XrpcError,
)
from atdata_async._backends.identity import IdentityResolver
from atdata_async.atmosphere import DATASET_COLLECTION, AtmosphereClient, AtmosphereIndex
from atdata_async.local import LocalIndex
from atdata_async.promote import promote_to_atmosphere
from tests import services
from tests.samples import FeatureSample, write_shards

pytestmark = pytest.mark.anyio

DID = "did:plc:abcdefghijklmnopqrstuvwx"


def did_doc(did: str = DID, handle: str | None = "alice.example.com",
            pds: str | None = "https://pds.example.com") -> dict:
    doc: dict = {"id": did, "alsoKnownAs": [f"at://{handle}"] if handle else []}
    if pds:
        doc["service"] = [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                           "serviceEndpoint": pds}]
    return doc


class Net:
    """A MockTransport answering from a dict {url: (status, body)}; logs every request."""

    def __init__(self, routes: dict[str, tuple[int, object]]) -> None:
        self.routes = routes
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.seen.append(url)
        status, body = self.routes.get(url, (404, {"error": "NotFound"}))
        if isinstance(body, bytes | str):
            return httpx.Response(status, content=body)
        return httpx.Response(status, json=body)


def resolver(net: Net, **kw) -> tuple[IdentityResolver, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(net))
    return IdentityResolver(plc_url="https://plc.test", http=lambda: http, **kw), http


async def test_did_plc_resolves_to_its_pds_and_is_cached_until_the_ttl():
    now = [1000.0]
    net = Net({f"https://plc.test/{DID}": (200, did_doc())})
    r, http = resolver(net, ttl=60, clock=lambda: now[0])
    async with http:
        identity = await r.resolve(DID)
        assert (identity.did, identity.handle, identity.pds_url) == (
            DID, "alice.example.com", "https://pds.example.com")
        assert await r.pds_for(DID) == "https://pds.example.com"
        assert r.request_count == 1 and r.cache_hits == 1  # the second read: no request
        now[0] += 61
        await r.pds_for(DID)
        assert r.request_count == 2 and len(net.seen) == 2


async def test_a_handle_goes_to_the_pds_first_then_to_its_well_known():
    asked = []

    async def ask_pds(handle: str) -> str:
        asked.append(handle)
        raise XrpcError("com.atproto.identity.resolveHandle", 400, "InvalidRequest",
                        "Unable to resolve handle")

    net = Net({"https://alice.example.com/.well-known/atproto-did": (200, DID + "\n"),
               f"https://plc.test/{DID}": (200, did_doc())})
    r, http = resolver(net, ask_pds=ask_pds)
    async with http:
        identity = await r.resolve("Alice.Example.com")
        assert identity.did == DID and identity.pds_url == "https://pds.example.com"
        assert asked == ["alice.example.com"] and r.request_count == 3
        await r.resolve("alice.example.com")
        assert r.request_count == 3  # handle and document both cached


async def test_a_handle_the_did_document_does_not_claim_is_refused():
    async def ask_pds(handle: str) -> str:
        return DID

    net = Net({f"https://plc.test/{DID}": (200, did_doc(handle="mallory.example.com"))})
    r, http = resolver(net, ask_pds=ask_pds)
    async with http:
        with pytest.raises(IdentityError, match="does not claim the handle"):
            await r.resolve("alice.example.com")


async def test_did_web_reads_its_well_known_did_json():
    did = "did:web:data.example.org"
    net = Net({"https://data.example.org/.well-known/did.json":
               (200, did_doc(did, handle=None, pds="https://pds.example.org/"))})
    r, http = resolver(net)
    async with http:
        assert await r.pds_for(did) == "https://pds.example.org"
    port_did = "did:web:localhost%3A8080"
    net = Net({"http://localhost:8080/.well-known/did.json":
               (200, did_doc(port_did, handle=None, pds="http://localhost:2583"))})
    r, http = resolver(net, allow_http=True)
    async with http:
        assert await r.pds_for(port_did) == "http://localhost:2583"


@pytest.mark.parametrize(("answer", "error", "match"), [
    ((404, {"message": "DID not registered"}), IdentityNotFoundError, "no such identity"),
    ((500, "oops"), IdentityError, "HTTP 500"),
    ((200, b"<html>not json"), IdentityError, "JSON DID document"),
    ((200, did_doc("did:plc:someoneelse")), IdentityError, "another id"),
    ((200, did_doc(pds=None)), IdentityError, "no #atproto_pds"),
    ((200, did_doc(pds="http://10.0.0.1:2583")), IdentityError, "not an https URL"),
    ((200, did_doc(pds="https://user:pw@pds.example.com")), IdentityError, "not an https"),
    ((200, did_doc(pds="file:///etc/passwd")), IdentityError, "not an https URL"),
    ((200, b"x" * 100_000), IdentityError, "more than"),
])
async def test_unusable_answers_are_identity_errors(answer, error, match):
    net = Net({f"https://plc.test/{DID}": answer})
    r, http = resolver(net)
    async with http:
        with pytest.raises(error, match=match) as info:
            await r.pds_for(DID)
    assert isinstance(info.value, AtdataError)
    if error is IdentityNotFoundError:
        assert isinstance(info.value, KeyError)


async def test_unreachable_directory_and_bad_names():
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(down))
    r = IdentityResolver(plc_url="https://plc.test", http=lambda: http)
    async with http:
        with pytest.raises(IdentityError, match=r"cannot reach https://plc\.test"):
            await r.pds_for(DID)
        with pytest.raises(IdentityError, match="neither a DID nor a handle"):
            await r.pds_for("not a handle!")
        with pytest.raises(IdentityError, match="only did:plc and did:web"):
            await r.pds_for("did:key:z6Mkabc")
        with pytest.raises(IdentityNotFoundError, match="cannot resolve handle"):
            await r.pds_for("nobody.example.com")


async def test_concurrent_reads_of_one_did_send_one_request():
    net = Net({f"https://plc.test/{DID}": (200, did_doc())})
    r, http = resolver(net)
    async with http, anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(r.pds_for, DID)
    assert r.request_count == 1


def test_the_plc_directory_is_configurable(monkeypatch):
    monkeypatch.delenv("ATDATA_PLC_URL", raising=False)
    assert IdentityResolver().plc_url == "https://plc.directory"
    monkeypatch.setenv("ATDATA_PLC_URL", "http://localhost:9/")
    assert IdentityResolver().plc_url == "http://localhost:9"
    assert AtmosphereClient("https://pds.test", plc_url="https://plc.test").identity.plc_url \
        == "https://plc.test"


async def test_tokens_never_go_to_another_pds():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("authorization")))
        return httpx.Response(200, json={"uri": "at://x/y/z", "value": {}})

    async with AtmosphereClient("https://home.test",
                                transport=httpx.MockTransport(handler)) as client:
        await client.login(session={"did": DID, "handle": "a.test", "accessJwt": "secret-jwt",
                                    "refreshJwt": "r"})
        await client.get_record("c.o.l", "k", repo="did:plc:other",
                                service="https://elsewhere.test")
        await client.get_record("c.o.l", "k")
    assert seen == [("elsewhere.test", None), ("home.test", "Bearer secret-jwt")]


# -- two real PDS servers, one PLC -------------------------------------------------------


class HandlesTo(httpx.AsyncBaseTransport):
    """Real HTTP, with DNS faked for ``*.test`` handles: they reach ``pds_url`` (the Host
    header keeps the handle, which is how a PDS serves its handles' well-known)."""

    def __init__(self, pds_url: str) -> None:
        self.target = httpx.URL(pds_url)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.endswith(".test"):
            request.url = request.url.copy_with(host=self.target.host, port=self.target.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def published_elsewhere(redis_url, second_pds, http_server):
    """A dataset (schema, record, http shards) published by an account of the second PDS."""
    name = f"fed{uuid.uuid4().hex[:8]}"
    author = services.create_account(second_pds.url, name)
    directory = http_server.extra["root"] / name
    directory.mkdir()
    paths = write_shards(directory, 2, 25)
    urls = [f"{http_server.url}/{name}/{p.name}" for p in paths]
    async with AtmosphereClient(second_pds.url) as writer, LocalIndex(redis_url) as index:
        await writer.login(author["handle"], author["password"])
        await index.publish_schema(FeatureSample, version="1.0.0")
        entry = await index.add_entry(Dataset[FeatureSample](urls), name=name)
        uri = await promote_to_atmosphere(entry, index, writer, description="elsewhere")
    return {"uri": uri, "author": author, "paths": paths, "urls": urls}


@pytest.mark.pds
async def test_a_record_on_the_second_pds_is_read_through_a_client_of_the_first(
        pds, second_pds, pds_account, published_elsewhere):
    uri, author = published_elsewhere["uri"], published_elsewhere["author"]
    assert uri.startswith(f"at://{author['did']}/{DATASET_COLLECTION}/")
    async with AtmosphereClient(pds.url) as reader:
        await reader.login(pds_account["handle"], pds_account["password"])
        rkey = uri.rsplit("/", 1)[1]
        with pytest.raises(XrpcError):  # the first PDS does not hold the record itself
            await reader.get_record(DATASET_COLLECTION, rkey, repo=author["did"])
        index = AtmosphereIndex(reader)
        got = await index.get_dataset(uri)
        cold = reader.identity.request_count
        schema = await index.get_schema(got.schema_ref)
        listed = await index.list_datasets(author["did"])
        cached = reader.identity.request_count - cold
        assert await reader.resolve_pds(author["did"]) == second_pds.extra["public_url"]
        own = reader.identity.request_count
        assert await index.list_datasets() == []  # its own repo: no lookup at all
        assert reader.identity.request_count == own
    assert (got.name, got.description, got.uri) == (
        author["handle"].removesuffix(".test"), "elsewhere", uri)
    assert got.pds_url == second_pds.extra["public_url"]
    assert got.data_urls == published_elsewhere["urls"] and len(got.checksums) == 2
    assert schema["name"] == "FeatureSample" and [d.uri for d in listed] == [uri]
    assert (cold, cached) == (1, 0)  # one PLC lookup cold; none once cached
    shards = Dataset[FeatureSample].from_entry(got, allow_http=True)  # verified reads
    assert set(shards.checksums) == set(got.data_urls)
    samples = [s async for s in shards]
    assert len(samples) == 50 and [s.label for s in samples[:3]] == [0, 1, 2]
    print(f"\nresolution requests: cold get_dataset {cold}, then get_schema + list_datasets "
          f"{cached}")


@pytest.mark.pds
async def test_a_handle_uri_is_resolved_without_a_login(pds, second_pds, published_elsewhere):
    author = published_elsewhere["author"]
    by_handle = published_elsewhere["uri"].replace(author["did"], author["handle"])
    async with AtmosphereClient(pds.url, transport=HandlesTo(second_pds.url)) as stranger:
        stranger.identity.allow_http = True  # the well-known of a test handle is plain http
        got = await AtmosphereIndex(stranger).get_dataset(by_handle)
        cold = stranger.identity.request_count
        await AtmosphereIndex(stranger).get_dataset(by_handle)
        cached = stranger.identity.request_count - cold
        assert not stranger.is_authenticated
    assert got.uri == published_elsewhere["uri"]
    assert got.name == author["handle"].removesuffix(".test")
    # resolveHandle on the first PDS (it does not know the handle), the handle's own
    # well-known (answered by the second PDS), the DID document: 3 cold, 0 cached
    assert (cold, cached) == (3, 0)


@pytest.mark.pds
async def test_a_handle_of_the_clients_own_pds_costs_two_lookups(pds, pds_account):
    async with AtmosphereClient(pds.url) as stranger:
        assert await AtmosphereIndex(stranger).list_datasets(pds_account["handle"]) == []
        cold = stranger.identity.request_count
        await AtmosphereIndex(stranger).list_schemas(pds_account["handle"])
        assert (cold, stranger.identity.request_count - cold) == (2, 0)  # resolveHandle, PLC


@pytest.mark.pds
async def test_did_web_resolves_through_a_real_server(second_pds, http_server):
    """A did:web document served over real HTTP (plain http: allow_http)."""
    port = http_server.url.rsplit(":", 1)[1]
    did = f"did:web:localhost%3A{port}"
    well_known = http_server.extra["root"] / ".well-known"
    well_known.mkdir(exist_ok=True)
    (well_known / "did.json").write_text(json.dumps(
        did_doc(did, handle=None, pds=second_pds.extra["public_url"])))
    async with AtmosphereClient(second_pds.url) as client:
        client.identity.allow_http = True
        assert await client.resolve_pds(did) == second_pds.extra["public_url"]
    async with AtmosphereClient(second_pds.url) as strict:  # https only by default
        with pytest.raises(IdentityError, match="cannot reach https://localhost"):
            await strict.resolve_pds(did)


@pytest.mark.pds
async def test_show_reads_a_record_of_another_pds(pds, published_elsewhere):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATDATA_HANDLE", "ATDATA_PASSWORD")}
    env.update(ATDATA_PDS_URL=pds.url, PYTHONPATH=os.getcwd())
    out = await anyio.to_thread.run_sync(functools.partial(
        subprocess.run, [sys.executable, "-W", "error", "-m", "atdata_async.cli", "--json",
                         "show", published_elsewhere["uri"]], env=env, capture_output=True,
        text=True, timeout=120))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["uri"] == published_elsewhere["uri"]
    assert shown["data_urls"] == published_elsewhere["urls"] and len(shown["checksums"]) == 2
