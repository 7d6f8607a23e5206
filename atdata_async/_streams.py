"""Byte streams between the async core and blocking readers such as ``tarfile``.

``ExactReader`` turns a puller of chunks (an HTTP body, S3 ranges) into an async
``read(n)``; ``blocking_file`` turns an async ``read(n)`` into a buffered blocking file
for code that runs in another thread (a worker thread, or a facade caller's thread).
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

READ_AHEAD = 1 << 20  # bytes per hop from a blocking reader to the event loop

AsyncRead = Callable[[int], Awaitable[bytes]]


class ExactReader:
    """``read(n)`` over a puller of chunks (None at the end): exactly n bytes, fewer only
    at the end."""

    def __init__(self, pull: Callable[[], Awaitable[bytes | None]]) -> None:
        self._pull = pull
        self._pending = bytearray()
        self._offset = 0  # bytes of _pending already handed out (compacted lazily)
        self.received = 0  # bytes handed out so far

    @property
    def buffered(self) -> int:
        """Bytes pulled but not handed out yet."""
        return len(self._pending) - self._offset

    async def read(self, n: int) -> bytes:
        while self.buffered < n:
            chunk = await self._pull()
            if chunk is None:
                break
            del self._pending[:self._offset]  # what is left is under n bytes: cheap
            self._offset = 0
            self._pending += chunk
        end = min(self._offset + n, len(self._pending))
        data = bytes(self._pending[self._offset:end])
        self._offset = end
        self.received += len(data)
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
