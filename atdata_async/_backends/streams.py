"""Byte streams between the async core and blocking readers such as ``tarfile``.

A puller is an async callable giving the next chunk, or None at the end (S3 ranges, an
HTTP body). ``sha256_of_chunks`` hashes one; ``ExactReader`` turns one into an async
``read(n)``; ``blocking_file`` turns an async ``read(n)`` into a buffered blocking file
for code that runs in another thread (a worker thread, or a facade caller's thread).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

READ_AHEAD = 1 << 20  # bytes per hop from a blocking reader to the event loop

AsyncRead = Callable[[int], Awaitable[bytes]]
Pull = Callable[[], Awaitable[bytes | None]]


async def sha256_of_chunks(pull: Pull) -> tuple[str, int]:
    """(sha256 hex, size) of everything ``pull`` gives; hashed in a worker thread, so
    memory is one chunk and the event loop keeps running."""
    hasher = hashlib.sha256()
    size = 0
    while (chunk := await pull()) is not None:
        await anyio.to_thread.run_sync(hasher.update, chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


class ExactReader:
    """``read(n)`` over a puller of chunks (None at the end): exactly n bytes, fewer only
    at the end."""

    def __init__(self, pull: Pull) -> None:
        self._pull = pull
        self._pending = bytearray()
        self._offset = 0  # bytes of _pending already handed out (compacted lazily)

    async def read(self, n: int) -> bytes:
        while len(self._pending) - self._offset < n:
            chunk = await self._pull()
            if chunk is None:
                break
            del self._pending[:self._offset]  # what is left is under n bytes: cheap
            self._offset = 0
            self._pending += chunk
        end = min(self._offset + n, len(self._pending))
        data = bytes(self._pending[self._offset:end])
        self._offset = end
        return data


class _PulledFile(io.RawIOBase):
    """A blocking raw file whose reads run ``read(n)`` on the loop through ``run``."""

    def __init__(self, read: AsyncRead, run: Callable[..., Any]) -> None:
        self._read = read
        self._run = run

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._run(self._read, len(buffer))
        buffer[: len(data)] = data
        return len(data)


def blocking_file(read: AsyncRead, run: Callable[..., Any]) -> io.BufferedReader:
    """A buffered blocking file over ``read``. ``run`` is ``anyio.from_thread.run`` in a
    worker thread, or the portal's ``call`` in a facade caller's thread."""
    return io.BufferedReader(_PulledFile(read, run), buffer_size=READ_AHEAD)
