"""HttpShardReader's retry and error policy with httpx.MockTransport (no network)."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from atdata_async import StorageError
from atdata_async._backends.http_reader import HttpShardReader
from atdata_async.local import ObjectNotFoundError

pytestmark = pytest.mark.anyio
URL = "http://shards.invalid/set/shard-000000.tar"
BODY = bytes(range(256)) * 9000  # 2.2 MiB: several chunks


def reader(answers: list) -> tuple[HttpShardReader, list[httpx.Request]]:
    """A reader whose server gives ``answers`` in turn (a Response, or an exception)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return HttpShardReader(transport=httpx.MockTransport(handle), backoff_base=0.001,
                           max_attempts=3), seen


async def test_5xx_and_resets_before_the_body_are_retried():
    http, seen = reader([httpx.Response(503), httpx.ConnectError("reset"),
                         httpx.Response(200, content=BODY)])
    async with http:
        assert await http.sha256_of(URL) == (hashlib.sha256(BODY).hexdigest(), len(BODY))
    assert len(seen) == 3
    assert all(r.headers["accept-encoding"] == "identity" for r in seen)


async def test_a_server_that_keeps_failing_is_one_clear_error():
    http, seen = reader([httpx.Response(502)])
    async with http:
        with pytest.raises(StorageError, match=r"GET http://shards\.invalid/.*HTTP 502") as info:
            await http.sha256_of(URL)
    assert info.value.code == "502" and len(seen) == 3


async def test_not_found_is_not_retried_and_is_a_key_error():
    http, seen = reader([httpx.Response(404)])
    async with http:
        with pytest.raises(ObjectNotFoundError) as info:
            await http.sha256_of(URL)
    assert isinstance(info.value, KeyError) and len(seen) == 1


async def test_a_body_shorter_than_its_content_length_is_refused():
    short = httpx.Response(200, headers={"content-length": str(len(BODY))},
                           stream=httpx.ByteStream(BODY[:1000]))
    http, _ = reader([short])
    async with http:
        with pytest.raises(StorageError, match=f"got 1000 of {len(BODY)} bytes"):
            await http.sha256_of(URL)


async def test_reads_come_in_exact_sizes_across_chunks():
    http, _ = reader([httpx.Response(200, content=BODY)])
    async with http, http.open(URL) as body:
        assert body.size == len(BODY)
        pieces = [await body.read(700_000) for _ in range(4)]
    assert [len(p) for p in pieces] == [700_000, 700_000, 700_000, len(BODY) - 2_100_000]
    assert b"".join(pieces) == BODY


async def test_a_connection_lost_mid_body_says_how_far_it_got():
    class CutOff(httpx.AsyncByteStream):
        async def __aiter__(self):
            yield BODY[:5000]
            raise httpx.ReadError("connection reset by peer")

    http, seen = reader([httpx.Response(200, headers={"content-length": str(len(BODY))},
                                        stream=CutOff())])
    async with http:
        with pytest.raises(StorageError, match="connection lost after 5000 bytes"):
            await http.sha256_of(URL)
    assert len(seen) == 1  # the body had started: the caller decides (the shard fails)
