"""Dataset[T]: typed samples streamed from WebDataset tar shards (files, S3, http(s))."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import tarfile
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import anyio

from ._errors import ConfigurationError
from ._http import HttpShardReader
from ._sample import PackableSample
from ._streams import READ_AHEAD, AsyncRead, ExactReader, blocking_file
from ._urls import expand_braces, local_path, url_kind

if TYPE_CHECKING:
    from ._store import S3DataStore

T = TypeVar("T", bound=PackableSample)


DECODE_BATCH = 64  # samples decoded per worker-thread hop


def _take(pairs: Iterator[tuple[str, T]], n: int) -> list[tuple[str, T]]:
    return list(itertools.islice(pairs, n))


def decode_shard(data: bytes | IO[bytes],
                 sample_type: type[T]) -> Generator[tuple[str, T], None, None]:
    """Yield (``__key__``, sample) for each ``<key>.msgpack`` member of a tar shard."""
    fileobj = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            base = os.path.basename(member.name)
            key, _, ext = base.partition(".")
            if not member.isfile() or ext != "msgpack":
                continue
            payload = tar.extractfile(member)
            assert payload is not None
            yield key, sample_type.from_bytes(payload.read())


def count_samples(path: str) -> int:
    """Count distinct sample keys in a local tar shard by reading headers only."""
    keys = set()
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isfile():
                base = os.path.basename(member.name)
                keys.add(os.path.join(os.path.dirname(member.name), base.partition(".")[0]))
    return len(keys)


class Dataset(Generic[T]):
    """A WebDataset of samples of type T; ``Dataset[T](url)``.

    ``url`` is a path, a brace pattern (``shard-{000000..000009}.tar``), an ``s3://`` URL
    (read through ``store``), an ``http(s)://`` URL, or a list of those. Iteration is in
    shard order.
    """

    sample_type: ClassVar[type[Any] | None] = None

    def __class_getitem__(cls, sample_type: Any) -> Any:
        if isinstance(sample_type, TypeVar):
            return super().__class_getitem__(sample_type)  # type: ignore[misc]
        name = f"{cls.__name__}[{getattr(sample_type, '__name__', sample_type)}]"
        return type(name, (cls,), {"sample_type": sample_type, "__module__": cls.__module__})

    def __init__(self, url: str | Sequence[str], *, store: S3DataStore | None = None) -> None:
        if self.sample_type is None:
            raise TypeError("give the sample type: Dataset[MySample](url)")
        patterns = [url] if isinstance(url, str | os.PathLike) else list(url)
        if not patterns:
            raise ConfigurationError("a dataset needs at least one shard URL")
        self.url = url
        self.store = store
        self.shard_urls: list[str] = [u for p in patterns for u in expand_braces(os.fspath(p))]
        for shard in self.shard_urls:
            url_kind(shard)  # refuse unknown schemes now, not halfway through iteration

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, shards={len(self.shard_urls)})"

    @contextlib.asynccontextmanager
    async def open_shard(self, url: str) -> AsyncIterator[AsyncRead]:
        """An async ``read(n)`` over one shard, streamed: memory is a chunk, not the shard
        (S3 shards come in part-sized ranges of the version the first HEAD saw)."""
        kind = url_kind(url)
        if kind == "file":
            async with await anyio.open_file(local_path(url), "rb") as f:
                yield f.read
        elif kind == "s3":
            if self.store is None:
                raise ConfigurationError(f"reading {url} needs Dataset(..., store=S3DataStore)")
            yield ExactReader(await self.store.open_object(url)).read
        else:
            async with HttpShardReader() as http, http.open(url) as body:
                yield body.read

    async def read_shard(self, url: str) -> bytes:
        """The raw bytes of one shard (whole, in memory)."""
        chunks = []
        async with self.open_shard(url) as read:
            while chunk := await read(READ_AHEAD):
                chunks.append(chunk)
        return b"".join(chunks)

    def items(self) -> AsyncIterator[tuple[str, T]]:
        """(``__key__``, sample) pairs in shard order."""
        return self._stream(with_keys=True)

    def __aiter__(self) -> AsyncIterator[T]:
        return self._stream(with_keys=False)

    async def _stream(self, with_keys: bool) -> AsyncIterator[Any]:
        """Shards streamed one after another, decoded in a worker thread a batch of
        samples at a time. One generator (not two nested ones), so that a loop left
        early is finalized cleanly even without ``aclosing``."""
        assert self.sample_type is not None
        for url in self.shard_urls:
            async with self.open_shard(url) as read:
                pairs = decode_shard(blocking_file(read, anyio.from_thread.run),
                                     self.sample_type)
                try:
                    while batch := await anyio.to_thread.run_sync(_take, pairs, DECODE_BATCH):
                        for key, sample in batch:
                            yield (key, sample) if with_keys else sample
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(pairs.close)
