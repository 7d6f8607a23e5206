"""Dataset[T]: typed samples streamed from WebDataset tar shards (files, S3, http(s))."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import struct
import tarfile
from collections.abc import AsyncIterator, Collection, Generator, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import anyio
import msgspec

from .._errors import (
    AtdataError,
    ChecksumMismatchError,
    ConfigurationError,
    CorruptShardError,
    UntrustedSourceError,
)
from .._model.sample import PackableSample
from .._model.trust import RedirectPolicy, record_sources, redirect_policy
from .._model.urls import expand_braces, local_path, url_kind
from .http_reader import HttpShardReader
from .streams import READ_AHEAD, AsyncRead, ExactReader, blocking_file

if TYPE_CHECKING:
    from .atmosphere_index import AtmosphereDatasetEntry
    from .s3_store import S3DataStore

T = TypeVar("T", bound=PackableSample)


DECODE_BATCH = 64  # samples decoded per worker-thread hop
HASH_INLINE = 64 * 1024  # smaller reads are hashed on the loop, larger in a worker thread


class VerifiedRead:
    """``read(n)`` that hashes every byte it hands out; ``verify()`` reads what the
    consumer left (tar padding) and raises ChecksumMismatchError unless the sha256 is
    the expected one."""

    def __init__(self, url: str, read: AsyncRead, expected: str) -> None:
        self.url = url
        self._read = read
        self.expected = expected.lower()
        self._hash = hashlib.sha256()

    async def read(self, n: int) -> bytes:
        data = await self._read(n)
        if len(data) < HASH_INLINE:
            self._hash.update(data)
        else:
            await anyio.to_thread.run_sync(self._hash.update, data)
        return data

    async def verify(self) -> None:
        while await self.read(READ_AHEAD):
            pass
        actual = self._hash.hexdigest()
        if actual != self.expected:
            raise ChecksumMismatchError(self.url, self.expected, actual)


def _take(pairs: Iterator[tuple[str, T]], n: int) -> list[tuple[str, T]]:
    return list(itertools.islice(pairs, n))


def decode_shard(data: bytes | IO[bytes], sample_type: type[T],
                 name: str = "shard") -> Generator[tuple[str, T], None, None]:
    """Yield (``__key__``, sample) for each ``<key>.msgpack`` member of a tar shard; a
    shard that is no tar, or a sample that does not decode, is a CorruptShardError
    naming the shard (``name``) and the member."""
    fileobj = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    member_name = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                member_name = member.name
                base = os.path.basename(member.name)
                key, _, ext = base.partition(".")
                if not member.isfile() or ext != "msgpack":
                    continue
                payload = tar.extractfile(member)
                assert payload is not None
                yield key, sample_type.from_bytes(payload.read())
    except (tarfile.TarError, EOFError, msgspec.DecodeError, ValueError, TypeError,
            KeyError, struct.error) as exc:
        if isinstance(exc, AtdataError):
            raise
        where = f" (member {member_name!r})" if member_name else ""
        raise CorruptShardError(f"{name}{where}: not a readable WebDataset shard: "
                                f"{type(exc).__name__}: {exc}") from exc


def count_samples(path: str) -> int:
    """Count distinct sample keys in a local tar shard by reading headers only."""
    keys = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    base = os.path.basename(member.name)
                    keys.add(os.path.join(os.path.dirname(member.name),
                                          base.partition(".")[0]))
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptShardError(f"{path}: not a tar file: {exc}") from exc
    return len(keys)


class Dataset(Generic[T]):
    """A WebDataset of samples of type T; ``Dataset[T](url)``.

    ``url`` is a path, a brace pattern (``shard-{000000..000009}.tar``), an ``s3://`` URL
    (read through ``store``), an ``http(s)://`` URL, or a list of those. Iteration is in
    shard order. ``checksums`` ({url: sha256 hex}): those shards are hashed while they
    stream, and a mismatch raises ChecksumMismatchError at the end of the shard.
    A published dataset (someone else's record) is read with ``Dataset[T].from_entry``.
    """

    sample_type: ClassVar[type[Any] | None] = None

    def __class_getitem__(cls, sample_type: Any) -> Any:
        if isinstance(sample_type, TypeVar):
            return super().__class_getitem__(sample_type)  # type: ignore[misc]
        name = f"{cls.__name__}[{getattr(sample_type, '__name__', sample_type)}]"
        return type(name, (cls,), {"sample_type": sample_type, "__module__": cls.__module__})

    def __init__(self, url: str | Sequence[str], *, store: S3DataStore | None = None,
                 checksums: Mapping[str, str] | None = None) -> None:
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
        self.checksums: dict[str, str] = dict(checksums or {})
        self.redirects: RedirectPolicy | None = None  # None: the user's own URLs
        self.untrusted = False  # True: the URLs came from a record (no local files)

    @classmethod
    def from_entry(cls, entry: AtmosphereDatasetEntry, *, store: S3DataStore | None = None,
                   allow_http: bool = False, allow_redirects_to: Collection[str] = ()) -> Any:
        """A published dataset's shards, read as untrusted input: only https (plain http
        with ``allow_http``), s3 and the author's blobs, never a local file; redirects
        only to the same host or ``allow_redirects_to``; an S3 record's bucket and
        endpoint checked against ``store`` (without one, read anonymously from the
        record's endpoint); every shard with a recorded sha256 verified as it streams."""
        sources = record_sources(entry, store=store, allow_http=allow_http)
        dataset = cls([s.read_url for s in sources], store=store,
                      checksums={s.read_url: s.sha256 for s in sources if s.sha256})
        dataset.url = entry.uri
        dataset.redirects = redirect_policy(allow_http, allow_redirects_to)
        dataset.untrusted = True
        return dataset

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, shards={len(self.shard_urls)})"

    @contextlib.asynccontextmanager
    async def open_shard(self, url: str) -> AsyncIterator[AsyncRead]:
        """An async ``read(n)`` over one shard, streamed: memory is a chunk, not the shard
        (S3 shards come in part-sized ranges of the version the first HEAD saw). A shard
        with a checksum is verified when the reader is done with it."""
        expected = self.checksums.get(url)
        async with self._open(url) as read:
            if expected is None:
                yield read
                return
            verified = VerifiedRead(url, read, expected)
            try:
                yield verified.read
            except Exception as exc:  # a tampered shard may fail to decode: say why
                try:
                    await verified.verify()
                except ChecksumMismatchError as mismatch:
                    raise mismatch from exc
                except Exception:
                    pass
                raise
            await verified.verify()  # not reached when the consumer stopped early

    @contextlib.asynccontextmanager
    async def _open(self, url: str) -> AsyncIterator[AsyncRead]:
        kind = url_kind(url)
        if kind == "file" and self.untrusted:
            raise UntrustedSourceError(f"{url}: a published dataset never reads local files")
        if kind == "file":
            async with await anyio.open_file(local_path(url), "rb") as f:
                yield f.read
        elif kind == "s3":
            if self.store is None:
                raise ConfigurationError(f"reading {url} needs Dataset(..., store=S3DataStore)")
            yield ExactReader(await self.store.open_object(url)).read
        else:
            async with HttpShardReader(redirects=self.redirects) as http, \
                    http.open(url) as body:
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
                                     self.sample_type, url)
                try:
                    while batch := await anyio.to_thread.run_sync(_take, pairs, DECODE_BATCH):
                        for key, sample in batch:
                            yield (key, sample) if with_keys else sample
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(pairs.close)
