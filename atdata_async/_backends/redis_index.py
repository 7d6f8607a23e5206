"""LocalIndex: dataset entries and schemas in Redis, in atdata's exact key layout.

| key                         | type   | content                                        |
| LocalDatasetEntry:{cid}     | hash   | name, schema_ref, cid, data_urls, metadata     |
| LocalSchema:{Class}@{ver}   | string | JSON schema record                             |
| atdata_async:entry_names    | hash   | name -> cid (ours; else found by SCAN)         |
| atdata_async:promotions     | hash   | promotion key -> dataset record key (a TID)    |

This module is the one place where redis errors become library errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import RedisError, ResponseError

from .._errors import (
    ConfigurationError,
    EntryNotFoundError,
    FieldTypeError,
    LocalIndexError,
    MalformedEntryError,
    ObjectNotFoundError,
    SchemaNotFoundError,
    ValidationError,
)
from .._model.cid import entry_cid
from .._model.progress import ProgressCallback
from .._model.schema import (
    check_semver,
    parse_schema_ref,
    schema_key,
    schema_record,
    schema_ref,
)
from .._model.urls import local_path, url_kind
from .._model.validate import (
    check_metadata,
    check_string,
    check_text,
    check_url,
    redact_userinfo,
)

if TYPE_CHECKING:
    from .dataset import Dataset
    from .s3_store import S3DataStore

log = logging.getLogger("atdata_async.index")

ENTRY_PREFIX = "LocalDatasetEntry:"
NAME_INDEX = "atdata_async:entry_names"
PROMOTIONS = "atdata_async:promotions"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# A restart, a CLIENT KILL or the server's idle-client `timeout` costs a reconnect: a
# command that meets a dead connection is retried on a new one (6 retries, 2.2-4.4 s in
# all), and a connection idle for HEALTH_CHECK_SECONDS is PINGed before it is reused.
REDIS_RETRIES = 6
HEALTH_CHECK_SECONDS = 10
# A Redis that accepts and never answers (a hung server, a half-open connection after a
# failover) fails each attempt after this long instead of holding the command, and the
# shielded journal writes and releases of a cancelled promotion with it, for good. No
# command we send blocks on the server (no BLPOP or XREAD BLOCK): the slowest is a
# journal compaction's script, milliseconds.
REDIS_SOCKET_TIMEOUT = 20.0
REDIS_CONNECT_TIMEOUT = 10.0


REDIS_MAX_CONNECTIONS = 64


def connect_redis(url: str) -> aioredis.Redis:
    """A redis.asyncio client for ``url`` with our retry and health-check policy
    (redis-py's from_url alone gives its connections no retries at all). Its pool
    blocks for a free connection instead of failing with "Too many connections" when
    many tasks (a promote_many of 1,000 entries) use Redis at once."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=60,
        retry=Retry(EqualJitterBackoff(cap=1.0, base=0.1), REDIS_RETRIES),
        health_check_interval=HEALTH_CHECK_SECONDS,
        socket_keepalive=True,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
    )
    return aioredis.Redis.from_pool(pool)


@dataclass(frozen=True)
class LocalDatasetEntry:
    """A dataset in the local index. Its CID depends on schema_ref and data_urls only."""

    name: str
    schema_ref: str
    data_urls: list[str]
    metadata: dict[str, Any] | None = None
    cid: str = field(default="")

    def __post_init__(self) -> None:
        check_string("name", self.name)
        check_string("schema_ref", self.schema_ref)
        urls = self.data_urls
        if isinstance(urls, str | bytes) or not isinstance(urls, list | tuple):
            raise FieldTypeError("data_urls", f"must be a list of URLs, got {type(urls).__name__}")
        for i, url in enumerate(urls):
            check_string(f"data_urls[{i}]", url)
        if self.metadata is not None and not isinstance(self.metadata, dict):
            raise FieldTypeError("metadata", f"must be a dict, got {type(self.metadata).__name__}")
        check_string("cid", self.cid)
        if not self.cid:
            object.__setattr__(self, "cid", entry_cid(self.schema_ref, self.data_urls))

    @property
    def checksums(self) -> dict[str, str]:
        """sha256 hex per data URL, as recorded at insert time (may be empty)."""
        return dict((self.metadata or {}).get("checksums") or {})

    @property
    def shard_sizes(self) -> dict[str, int]:
        return dict((self.metadata or {}).get("shard_sizes") or {})

    @property
    def etags(self) -> dict[str, str]:
        """The S3 ETag per data URL, as returned when we uploaded it (may be empty)."""
        return dict((self.metadata or {}).get("etags") or {})

    @property
    def store_location(self) -> StoreLocation | None:
        """Where insert put the shards (S3 endpoint and region; never credentials), or
        None when the entry does not say (``add_entry``, entries written by atdata)."""
        found = (self.metadata or {}).get(STORE_KEY)
        if not isinstance(found, dict):
            return None
        endpoint, region = found.get("endpoint"), found.get("region")
        return StoreLocation(endpoint if isinstance(endpoint, str) and endpoint else None,
                             region if isinstance(region, str) and region else None)


@dataclass(frozen=True)
class StoreLocation:
    """An S3 endpoint (None: AWS) and region: enough, with credentials from elsewhere, to
    reach an entry's shards again."""

    endpoint: str | None
    region: str | None


STORE_KEY = "store"  # metadata key of the insert's StoreLocation (atdata ignores it)


_pack = msgspec.msgpack.Encoder().encode


def _entry_to_hash(entry: LocalDatasetEntry) -> dict[str, bytes]:
    fields = {
        "name": entry.name.encode(),
        "schema_ref": entry.schema_ref.encode(),
        "cid": entry.cid.encode(),
        "data_urls": _pack(entry.data_urls),
    }
    if entry.metadata is not None:
        fields["metadata"] = _pack(entry.metadata)
    return fields


def _entry_from_hash(raw: Mapping[bytes, bytes], key: str = "entry") -> LocalDatasetEntry:
    """Decode one entry hash; anything else (hand-written, truncated, another program's)
    is a MalformedEntryError naming ``key`` and what is wrong with it."""

    def text(field: str) -> str:
        value = raw.get(field.encode())
        if value is None:
            raise MalformedEntryError(key, f"has no {field!r} field")
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise MalformedEntryError(key, f"its {field!r} is not UTF-8 text") from None

    def unpack(field: str, value: bytes) -> Any:
        try:
            return msgspec.msgpack.decode(value)
        except (msgspec.DecodeError, RecursionError, ValueError):
            raise MalformedEntryError(key, f"its {field!r} is not msgpack") from None

    name, schema_ref, cid = text("name"), text("schema_ref"), text("cid")
    if b"data_urls" not in raw:
        raise MalformedEntryError(key, "has no 'data_urls' field")
    urls = unpack("data_urls", raw[b"data_urls"])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise MalformedEntryError(key, "its 'data_urls' is not a list of strings")
    metadata = raw.get(b"metadata")
    meta = unpack("metadata", metadata) if metadata is not None else None
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(k, str) for k in meta)):
        raise MalformedEntryError(key, "its 'metadata' is not a map with string keys")
    for claims in ("checksums", "shard_sizes", "etags"):
        if meta and meta.get(claims) is not None and not isinstance(meta[claims], dict):
            raise MalformedEntryError(key, f"its metadata[{claims!r}] is not a map")
    try:
        return LocalDatasetEntry(name=name, schema_ref=schema_ref, data_urls=urls,
                                 metadata=meta, cid=cid)
    except ValidationError as exc:
        raise MalformedEntryError(key, str(exc)) from None


class LocalIndex:
    """Datasets and schemas in Redis. Creating one does no I/O.

    ``redis`` is a URL, a ``redis.asyncio.Redis`` client, or None for
    ``redis://localhost:6379/0``. With ``data_store``, ``insert_dataset`` uploads shards.
    """

    def __init__(
        self, redis: str | aioredis.Redis | None = None, *, data_store: S3DataStore | None = None
    ) -> None:
        # A URL is connected lazily (on the loop that first uses it) and closed by us;
        # a client handed in is the caller's to close.
        if redis is None:
            redis = DEFAULT_REDIS_URL
        if isinstance(redis, str):
            check_text("redis", redis, nonempty=True)
        elif not isinstance(redis, aioredis.Redis):
            raise FieldTypeError("redis", "must be a redis:// URL or a redis.asyncio.Redis, "
                                 f"got {type(redis).__name__}")
        if data_store is not None and not _is_store(data_store):
            raise FieldTypeError("data_store", "must be an S3DataStore or None, "
                                 f"got {type(data_store).__name__}")
        self._url = redis if isinstance(redis, str) else None
        self._redis = None if isinstance(redis, str) else redis
        self.data_store = data_store

    def __repr__(self) -> str:
        where = _redact_url(self._url) if self._url else repr(self._redis)
        return f"LocalIndex({where}, data_store={self.data_store!r})"

    @property
    def redis(self) -> aioredis.Redis:
        """The redis.asyncio client (created on first use, on the running loop)."""
        if self._redis is None:
            assert self._url is not None
            self._redis = connect_redis(self._url)
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None and self._url is not None:
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> LocalIndex:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @contextlib.contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            where = _redact_url(self._url) if self._url else "redis"
            raise LocalIndexError(f"{operation}: Redis at {where} failed: {exc}") from exc

    # -- schemas -----------------------------------------------------------------------

    async def publish_schema(
        self, sample_type: type, *, version: str = "1.0.0", description: str | None = None
    ) -> str:
        """Store the schema of ``sample_type`` at ``version``; returns its ref."""
        _check_sample_type(sample_type)
        check_text("description", description, optional=True, multiline=True)
        record = schema_record(sample_type, version, description)
        with self._errors("publish_schema"):
            await self.redis.set(schema_key(record["name"], version), json.dumps(record))
        return schema_ref(record["name"], version)

    async def get_schema(self, ref: str) -> dict[str, Any]:
        """The schema record for a ref (any of atdata's three ref forms)."""
        name, version = parse_schema_ref(ref)
        key = schema_key(name, version)
        with self._errors("get_schema"):
            raw = await self.redis.get(key)
        if raw is None:
            raise SchemaNotFoundError(f"schema {name}@{version} is not in the local index ({ref})")
        return _schema_from_json(key, raw)

    async def list_schemas(self) -> list[dict[str, Any]]:
        """Every schema record in the index."""
        with self._errors("list_schemas"):
            keys = [k async for k in self.redis.scan_iter(match="LocalSchema:*", count=500)]
            values = await self.redis.mget(keys) if keys else []
        out = []
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            try:
                out.append(_schema_from_json(key.decode(errors="replace"), value))
            except MalformedEntryError as exc:  # one bad key never hides the others
                log.warning("skipping %s", exc)
        return out

    async def _latest_schema_ref(self, sample_type: type) -> str | None:
        prefix = f"LocalSchema:{sample_type.__name__}@"
        with self._errors("find schema"):
            keys = [k.decode() async for k in self.redis.scan_iter(match=f"{prefix}*", count=500)]
        versions = [k[len(prefix) :] for k in keys]
        versions = [v for v in versions if _semver_key(v) is not None]
        if not versions:
            return None
        return schema_ref(sample_type.__name__, max(versions, key=_semver_key))

    # -- entries -----------------------------------------------------------------------

    async def add_entry(
        self,
        ds: Dataset[Any],
        *,
        name: str,
        schema_ref: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> LocalDatasetEntry:
        """Index a dataset where it already is (no upload)."""
        _check_entry_args(ds, name, metadata)
        if schema_ref is not None:
            check_text("schema_ref", schema_ref)
            parse_schema_ref(schema_ref)
        ref = schema_ref or await self._schema_ref_of(ds)
        entry = LocalDatasetEntry(name, ref, list(ds.shard_urls), metadata)
        await self._store_entry(entry)
        return entry

    async def insert_dataset(
        self,
        ds: Dataset[Any],
        *,
        name: str,
        prefix: str | None = None,
        metadata: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        schema_ref: str | None = None,
    ) -> LocalDatasetEntry:
        """Upload local shards to the data store byte for byte, then index them.

        Shards are named ``{prefix}/data--{uuid}--{i:06d}.tar``, the uuid derived from the
        insert itself (destination, prefix, name, schema, each file's path, size and
        mtime), so a rerun after a failure or a kill continues: shards already uploaded
        are skipped, open multipart uploads continued; an insert already indexed is not
        uploaded again. Each shard's sha256 and size land in ``metadata["checksums"]`` /
        ``["shard_sizes"]``. A failed insert indexes nothing. Without a data store the
        dataset is indexed where it is. ``schema_ref`` names a stored schema (default:
        the latest local version of the sample type's, published if none).
        """
        if not name:
            raise ConfigurationError("a dataset needs a non-empty name")
        _check_entry_args(ds, name, metadata)
        check_text("prefix", prefix, optional=True)
        if prefix is not None and ".." in prefix.split("/"):
            raise ValidationError("prefix", "must not contain '..' segments")
        if progress is not None and not callable(progress):
            raise FieldTypeError("progress", f"must be callable, got {type(progress).__name__}")
        if self.data_store is None:
            return await self.add_entry(ds, name=name, schema_ref=schema_ref, metadata=metadata)
        ref = schema_ref or await self._schema_ref_of(ds)
        paths = [local_path(u) for u in ds.shard_urls if url_kind(u) == "file"]
        if len(paths) != len(ds.shard_urls):
            raise ConfigurationError("insert_dataset uploads local shards; use add_entry for URLs")
        for path in paths:
            if not os.path.isfile(path):
                raise ObjectNotFoundError(f"{path}: no such file to insert", code="ENOENT")
        # The upload is a pipeline (journaled, resumable): the one call from a backend
        # into _pipeline/, made here at call time because the seed puts insert on the index.
        from .._pipeline.insert import insert_shards

        return await insert_shards(self, self.data_store, paths, name=name,
                                   stem=(prefix or name).strip("/"), schema_ref=ref,
                                   metadata=metadata, progress=progress)

    async def _schema_ref_of(self, ds: Dataset[Any]) -> str:
        sample_type = ds.sample_type
        assert sample_type is not None
        ref = await self._latest_schema_ref(sample_type)
        if ref is None:  # index it anyway: promotion needs a schema
            ref = await self.publish_schema(sample_type)
        return ref

    async def _store_entry(self, entry: LocalDatasetEntry) -> None:
        with self._errors("store entry"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(ENTRY_PREFIX + entry.cid, mapping=_entry_to_hash(entry))
                pipe.hset(NAME_INDEX, entry.name, entry.cid)
                await pipe.execute()

    async def record_key_for(self, promotion: str, fresh: str) -> str:
        """The record key remembered for ``promotion``, or ``fresh`` stored as it (atomic:
        two racing promotions of the same thing get the same key)."""
        with self._errors("record_key_for"):
            await self.redis.hsetnx(PROMOTIONS, promotion, fresh)
            stored = await self.redis.hget(PROMOTIONS, promotion)
        return stored.decode() if stored is not None else fresh

    async def record_keys_for(self, fresh: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
        """``record_key_for`` for many promotions in one round trip: promotion key ->
        (record key, whether it was remembered from an earlier run)."""
        keys = list(fresh)
        if not keys:
            return {}
        with self._errors("record_keys_for"):
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.hsetnx(PROMOTIONS, key, fresh[key])
                pipe.hmget(PROMOTIONS, keys)
                *added, stored = await pipe.execute()
        return {key: (value.decode() if value is not None else fresh[key], not new)
                for key, new, value in zip(keys, added, stored, strict=True)}

    async def get_entry(self, cid: str) -> LocalDatasetEntry:
        check_text("cid", cid, nonempty=True)
        with self._errors("get_entry"):
            try:
                raw = await self.redis.hgetall(ENTRY_PREFIX + cid)
            except ResponseError as exc:
                raise MalformedEntryError(ENTRY_PREFIX + cid, f"is not a hash ({exc})") from None
        if not raw:
            raise EntryNotFoundError(f"no dataset entry with CID {cid!r}")
        return _entry_from_hash(raw, ENTRY_PREFIX + cid)

    async def get_entry_by_name(self, name: str) -> LocalDatasetEntry:
        """The entry called ``name``: one lookup for ours, a SCAN for atdata's. An entry
        that cannot be decoded is skipped, unless it is the one called ``name``."""
        check_text("name", name, nonempty=True)
        with self._errors("get_entry_by_name"):
            cid = await self.redis.hget(NAME_INDEX, name)
            if cid is not None:
                key = ENTRY_PREFIX + cid.decode(errors="replace")
                try:
                    raw = await self.redis.hgetall(key)
                except ResponseError:  # WRONGTYPE: not a hash; look further
                    raw = {}
                if raw and raw.get(b"name") == name.encode():
                    return _entry_from_hash(raw, key)
            async for _, raw_name, entry in self._scan_entries():
                if isinstance(entry, MalformedEntryError):
                    if raw_name == name.encode():
                        raise entry
                    continue
                if entry.name == name:
                    await self.redis.hset(NAME_INDEX, name, entry.cid)
                    return entry
        raise EntryNotFoundError(f"no dataset entry named {name!r} in the local index")

    async def list_entries(self) -> list[LocalDatasetEntry]:
        """Every dataset entry in the index. A key that holds no decodable entry is
        skipped with a warning naming it (``malformed_entries`` lists them)."""
        out = []
        with self._errors("list_entries"):
            async for _, _, entry in self._scan_entries():
                if isinstance(entry, MalformedEntryError):
                    log.warning("skipping a malformed local index entry: %s", entry)
                else:
                    out.append(entry)
        return out

    async def malformed_entries(self) -> list[MalformedEntryError]:
        """The index's keys that look like entries but cannot be decoded, as errors
        naming each key and its fault (for a repair, or ``DEL`` by hand)."""
        with self._errors("malformed_entries"):
            return [e async for _, _, e in self._scan_entries()
                    if isinstance(e, MalformedEntryError)]

    async def _scan_entries(
        self,
    ) -> AsyncIterator[tuple[str, bytes | None, LocalDatasetEntry | MalformedEntryError]]:
        """(key, its raw name, the entry or why it is not one) for every entry key."""
        keys = [k async for k in self.redis.scan_iter(match=ENTRY_PREFIX + "*", count=1000)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            results = await pipe.execute(raise_on_error=False)
        for raw_key, raw in zip(keys, results, strict=True):
            key = raw_key.decode(errors="replace")
            if isinstance(raw, ResponseError):  # e.g. WRONGTYPE: a string under the prefix
                yield key, None, MalformedEntryError(key, f"is not a hash ({raw})")
            elif isinstance(raw, BaseException):
                raise raw
            elif raw:
                try:
                    entry: LocalDatasetEntry | MalformedEntryError = _entry_from_hash(raw, key)
                except MalformedEntryError as bad:
                    entry = bad
                yield key, raw.get(b"name"), entry


def _schema_from_json(key: str, raw: bytes) -> dict[str, Any]:
    """A local schema record, or MalformedEntryError naming its key."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedEntryError(key, "is not a JSON schema record") from None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) \
            or not isinstance(value.get("fields"), list):
        raise MalformedEntryError(key, "is not a schema record (no name or fields)")
    return value


def _check_sample_type(sample_type: Any) -> None:
    import dataclasses

    if not (isinstance(sample_type, type) and dataclasses.is_dataclass(sample_type)):
        raise FieldTypeError("sample_type", "must be a @packable class, got "
                             f"{getattr(sample_type, '__name__', type(sample_type).__name__)}")


def _is_store(value: Any) -> bool:
    """An S3DataStore, checked without importing aioboto3 when there is none (a store
    handed in means s3_store is imported already)."""
    import sys

    module = sys.modules.get(f"{__package__}.s3_store")
    return module is not None and isinstance(value, module.S3DataStore)


def _check_entry_args(ds: Any, name: Any, metadata: Any) -> None:
    """add_entry's and insert_dataset's arguments, before anything is read or stored."""
    # numpy and webdataset come with .dataset: only the insert path, which has a Dataset
    # in hand already, pays for them (start-up, #10)
    from .dataset import Dataset

    if not isinstance(getattr(ds, "_core", ds), Dataset):
        raise FieldTypeError("ds", f"must be a Dataset, got {type(ds).__name__}")
    check_text("name", name, nonempty=True)
    for i, url in enumerate(ds.shard_urls):
        check_url(f"ds.shard_urls[{i}]", url)
    check_metadata("metadata", metadata, for_record=False)


def _semver_key(version: str) -> tuple[int, int, int] | None:
    try:
        check_semver(version)
    except ConfigurationError:
        return None
    core = version.split("-", 1)[0].split("+", 1)[0]
    major, minor, patch = (int(x) for x in core.split("."))
    return major, minor, patch


def _redact_url(url: str) -> str:
    """A redis URL without its password."""
    return redact_userinfo(url)
