"""Who hosts a repo: handles and DIDs resolved to the repo's own PDS, with a TTL cache.

A record lives on its author's PDS, so reads of someone else's records go there:

    handle -> DID        com.atproto.identity.resolveHandle on a PDS we know, then
                         https://HANDLE/.well-known/atproto-did
    DID -> DID document  did:plc: GET {plc directory}/{did} (default https://plc.directory)
                         did:web: GET https://HOST/.well-known/did.json
    document -> PDS      its ``#atproto_pds`` service endpoint

A handle counts only when the DID's document claims it back (``alsoKnownAs``). This
module is the seam for these lookups: httpx failures and unusable answers become
IdentityError (IdentityNotFoundError when the thing does not exist).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx

from .._errors import AtdataError, IdentityError, IdentityNotFoundError
from .._model.ids import (
    did_web_url,
    handles_of,
    is_did,
    is_handle,
    pds_endpoint_of,
    service_url_allowed,
)

DEFAULT_PLC_URL = "https://plc.directory"
MAX_DOCUMENT_BYTES = 64 * 1024  # DID documents are a few hundred bytes; refuse floods

V = TypeVar("V")


@dataclass(frozen=True)
class Identity:
    """A repo's DID, the handle its document claims (if any) and its PDS."""

    did: str
    handle: str | None
    pds_url: str


class IdentityResolver:
    """Resolves handles and DIDs to PDS endpoints; answers are cached for ``ttl`` seconds.

    ``plc_url`` defaults to ``$ATDATA_PLC_URL``, else https://plc.directory.
    ``allow_http`` lets did:web documents, handle well-knowns and PDS endpoints use plain
    http (tests; a PDS on a loopback host is always allowed). ``ask_pds(handle)`` is
    resolveHandle on a PDS (the client's own). ``request_count`` counts the lookups sent.
    """

    def __init__(
        self,
        *,
        plc_url: str | None = None,
        ttl: float = 300.0,
        max_entries: int = 1024,
        allow_http: bool = False,
        http: Callable[[], httpx.AsyncClient] | None = None,
        ask_pds: Callable[[str], Awaitable[str]] | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plc_url = (plc_url or os.environ.get("ATDATA_PLC_URL") or DEFAULT_PLC_URL).rstrip("/")
        self.ttl = ttl
        self.max_entries = max_entries
        self.allow_http = allow_http
        self.timeout = timeout
        self._http_factory = http
        self._own_http: httpx.AsyncClient | None = None
        self._ask_pds = ask_pds
        self._clock = clock
        self._cache: dict[str, tuple[float, Any]] = {}
        self._inflight: dict[str, anyio.Event] = {}
        self.request_count = 0  # identity lookups sent (resolveHandle, well-known, DID docs)
        self.cache_hits = 0

    def __repr__(self) -> str:
        return f"IdentityResolver(plc_url={self.plc_url!r}, ttl={self.ttl})"

    async def aclose(self) -> None:
        client, self._own_http = self._own_http, None
        if client is not None:
            await client.aclose()

    def clear(self) -> None:
        """Forget every cached answer (e.g. after an account moved to another PDS)."""
        self._cache.clear()

    # -- the public lookups ------------------------------------------------------------

    async def resolve(self, repo: str) -> Identity:
        """A handle or DID -> its DID, verified handle and PDS endpoint."""
        if is_did(repo):
            doc = await self.did_document(repo)
            return Identity(repo, (handles_of(doc) or [None])[0], self._pds_of(repo, doc))
        if not is_handle(repo):
            raise IdentityError(f"{repo!r} is neither a DID nor a handle")
        handle = repo.lower()
        did = await self.resolve_handle(handle)
        doc = await self.did_document(did)
        if handle not in handles_of(doc):
            raise IdentityError(f"handle {handle} points to {did}, but that DID's document "
                                f"does not claim the handle back (alsoKnownAs)")
        return Identity(did, handle, self._pds_of(did, doc))

    async def pds_for(self, repo: str) -> str:
        """The PDS endpoint hosting ``repo`` (a handle or DID)."""
        return (await self.resolve(repo)).pds_url

    async def resolve_handle(self, handle: str) -> str:
        """handle -> DID: resolveHandle on the PDS we know, then the handle's well-known."""
        return await self._cached(f"handle:{handle.lower()}",
                                  lambda: self._resolve_handle(handle.lower()))

    async def did_document(self, did: str) -> dict[str, Any]:
        """The DID's document (did:plc or did:web)."""
        return await self._cached(f"did:{did}", lambda: self._fetch_did_document(did))

    # -- lookups, uncached -------------------------------------------------------------

    async def _resolve_handle(self, handle: str) -> str:
        causes = []
        if self._ask_pds is not None:
            self.request_count += 1
            try:
                did = await self._ask_pds(handle)
            except AtdataError as exc:  # the PDS does not know it: ask the handle itself
                causes.append(f"resolveHandle: {exc}")
            else:
                if is_did(did):
                    return did
                causes.append(f"resolveHandle answered {did!r}")
        scheme = "http" if self.allow_http else "https"
        url = f"{scheme}://{handle}/.well-known/atproto-did"
        try:
            text = (await self._get(url, f"handle {handle}")).decode("utf-8", "replace").strip()
        except IdentityError as exc:
            causes.append(str(exc))
        else:
            if is_did(text):
                return text
            causes.append(f"{url} does not hold a DID")
        raise IdentityNotFoundError(f"cannot resolve handle {handle}: " + "; ".join(causes))

    async def _fetch_did_document(self, did: str) -> dict[str, Any]:
        if did.startswith("did:plc:"):
            url = f"{self.plc_url}/{did}"
        elif did.startswith("did:web:"):
            url = did_web_url(did, "http" if self.allow_http else "https")
        else:
            raise IdentityError(f"{did}: only did:plc and did:web are supported")
        body = await self._get(url, did)
        try:
            doc = json.loads(body)
        except ValueError:
            raise IdentityError(f"{did}: {url} did not answer a JSON DID document") from None
        if not isinstance(doc, dict) or doc.get("id") != did:
            raise IdentityError(f"{did}: {url} answered a document for another id")
        return doc

    def _pds_of(self, did: str, doc: dict[str, Any]) -> str:
        endpoint = pds_endpoint_of(doc, did)
        if endpoint is None:
            raise IdentityError(f"{did}: its DID document names no #atproto_pds service")
        if not service_url_allowed(endpoint, allow_http=self.allow_http):
            raise IdentityError(f"{did}: its PDS endpoint {endpoint!r} is not an https URL "
                                f"(plain http only to a loopback host, or with allow_http)")
        return endpoint

    # -- the HTTP seam -----------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._http_factory is not None:
            return self._http_factory()
        if self._own_http is None:
            self._own_http = httpx.AsyncClient(timeout=self.timeout,
                                               headers={"user-agent": "atdata-async"})
        return self._own_http

    async def _get(self, url: str, what: str) -> bytes:
        """GET ``url`` (no redirects followed), at most MAX_DOCUMENT_BYTES of body."""
        self.request_count += 1
        try:
            async with self._http().stream("GET", url, follow_redirects=False,
                                           timeout=self.timeout) as response:
                if response.status_code in (404, 410):
                    raise IdentityNotFoundError(f"{what}: {url} answered "
                                                f"{response.status_code} (no such identity)")
                if response.status_code != 200:
                    raise IdentityError(f"{what}: {url} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise IdentityError(f"{what}: {url} answered more than "
                                            f"{MAX_DOCUMENT_BYTES} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise IdentityError(f"{what}: cannot reach {url}: {type(exc).__name__}: "
                                f"{exc}") from exc

    # -- the cache ---------------------------------------------------------------------

    async def _cached(self, key: str, compute: Callable[[], Awaitable[V]]) -> V:
        """A fresh cached answer, else one lookup shared by concurrent askers."""
        while True:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > self._clock():
                self.cache_hits += 1
                return hit[1]
            waiting = self._inflight.get(key)
            if waiting is None:
                break
            await waiting.wait()  # someone is looking it up: use their answer
        done = self._inflight[key] = anyio.Event()
        try:
            value = await compute()
            if len(self._cache) >= self.max_entries:
                self._evict()
            self._cache[key] = (self._clock() + self.ttl, value)
            return value
        finally:
            del self._inflight[key]
            done.set()

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
        while len(self._cache) >= self.max_entries:
            del self._cache[next(iter(self._cache))]  # the oldest insertion
