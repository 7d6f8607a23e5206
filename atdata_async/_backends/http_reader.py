"""Shards published at http(s) URLs: streamed, hashed or copied, never whole in memory.

The one seam for plain HTTP reads: retries (5xx and transport errors before the body
starts, full-jitter backoff) and the translation of httpx failures into StorageError
live here, and so do redirects: followed hop by hop (at most MAX_REDIRECTS), each
checked against the reader's RedirectPolicy when it has one (readers of someone else's
record: same host only unless allowed). Bodies are asked for with
``Accept-Encoding: identity`` (and decoded if a server encodes them anyway): the bytes
hashed or copied are the file's own bytes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx

from .._errors import ObjectNotFoundError, StorageError
from .streams import ExactReader, sha256_of_chunks
from .tasks import backoff

if TYPE_CHECKING:
    from .._model.trust import RedirectPolicy

log = logging.getLogger("atdata_async.http")
MAX_REDIRECTS = 10
_REDIRECTS = {301, 302, 303, 307, 308}


class HttpBody(ExactReader):
    """An open response body read by exact sizes; ``size`` is its Content-Length (None
    when unknown, or when the server encoded the body despite ``identity``)."""

    def __init__(self, url: str, response: httpx.Response) -> None:
        super().__init__(self.next_chunk)
        self.url = url
        self._chunks = response.aiter_bytes()
        self.pulled = 0  # bytes received from the server so far
        length = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        self.size: int | None = int(length) if length is not None and not encoded else None

    async def next_chunk(self) -> bytes | None:
        """The body's next chunk, None at its end (a puller)."""
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as exc:
            raise StorageError(f"GET {self.url}: connection lost after {self.pulled} bytes: "
                               f"{exc}") from exc
        self.pulled += len(chunk)
        return chunk


class HttpShardReader:
    """Reads shards over http(s) with one lazily created httpx client. ``redirects``:
    None follows any http(s) redirect (the user's own URLs); a RedirectPolicy checks each."""

    def __init__(self, *, max_attempts: int = 5, backoff_base: float = 0.5,
                 transport: httpx.AsyncBaseTransport | None = None,
                 redirects: RedirectPolicy | None = None) -> None:
        self.redirects = redirects
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> HttpShardReader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport, follow_redirects=False,
                timeout=httpx.Timeout(30, read=120), headers={"Accept-Encoding": "identity"})
        return self._client

    @contextlib.asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[HttpBody]:
        """The shard's body, once the server answered 200."""
        response = await self._get(url)
        try:
            _check(url, response)
            yield HttpBody(url, response)
        finally:
            await response.aclose()

    async def _get(self, url: str) -> httpx.Response:
        """A streaming GET, redirects followed hop by hop and checked."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._get_once(current)
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            await response.aclose()
            try:
                target = str(httpx.URL(current).join(location))
            except httpx.InvalidURL as exc:
                raise StorageError(f"GET {url}: a redirect to a malformed URL") from exc
            if self.redirects is not None:
                self.redirects.check(url, current, target)
            elif httpx.URL(target).scheme not in ("http", "https"):
                raise StorageError(f"GET {url}: a redirect to a {httpx.URL(target).scheme} URL")
            log.debug("GET %s: redirected to %s", url, target)
            current = target
        raise StorageError(f"GET {url}: more than {MAX_REDIRECTS} redirects")

    async def _get_once(self, url: str) -> httpx.Response:
        """A streaming GET; 5xx answers and transport errors are retried with backoff."""
        http = self._http()
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await http.send(http.build_request("GET", url), stream=True)
            except httpx.TransportError as exc:
                if attempt == self.max_attempts:
                    raise StorageError(f"GET {url}: cannot reach the server: {exc}") from exc
                why = type(exc).__name__
            else:
                if response.status_code < 500 or attempt == self.max_attempts:
                    return response
                await response.aclose()
                why = f"HTTP {response.status_code}"
            await backoff(log, f"GET {url}", attempt, self.backoff_base, why)
        raise AssertionError("unreachable")

    async def sha256_of(self, url: str) -> tuple[str, int]:
        """Stream the shard once: (sha256 hex, size); memory is one chunk."""
        async with self.open(url) as body:
            digest, size = await sha256_of_chunks(body.next_chunk)
        if body.size is not None and size != body.size:
            raise StorageError(f"GET {url}: got {size} of {body.size} bytes")
        return digest, size


def _check(url: str, response: httpx.Response) -> None:
    if response.status_code == 404:
        raise ObjectNotFoundError(f"GET {url}: not found (HTTP 404)", code="404")
    if response.status_code != 200:
        raise StorageError(f"GET {url}: HTTP {response.status_code}",
                           code=str(response.status_code))
