"""Promotion: publish a local dataset entry as ATProto records.

    plan_promotion (pure: validates everything, decides what to copy and what to write)
      -> the journal (copies only): the plan saved; one listing of the destination decides
         which shards are done, which uploads continue, and which a dead run left (aborted)
      -> one task group: find-or-publish the schema record | copy or checksum each shard
         (a new schema record waits until every shard has settled)
      -> write the dataset record last; the journal is compacted

Nothing remote is written before the plan validates, and nothing reaches the PDS unless
every shard settled; if a shard fails, every open multipart upload is aborted and no
record is written. A rerun of the same promotion continues from its journal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import msgspec

from .._backends.aws_env import ambient_credentials
from .._backends.http_reader import HttpShardReader
from .._backends.redis_index import LocalDatasetEntry, LocalIndex, StoreLocation
from .._backends.s3_store import SERVER_COPIES, STREAMED_COPIES, S3DataStore, ShardUpload, etag_of
from .._backends.tasks import run_per_shard, single_error
from .._backends.xrpc import AtmosphereClient
from .._errors import (
    AtdataError,
    AuthError,
    EntryError,
    ExecutorError,
    ObjectNotFoundError,
    RateLimitedError,
    RecordTooLargeError,
    ShardTransferError,
    SourceChangedError,
    ValidationError,
)
from .._model.ids import next_tid, record_key_from
from .._model.lexicon import (
    DATASET_COLLECTION,
    SCHEMA_COLLECTION,
    Checksum,
    DatasetRecord,
    DatasetSize,
    HttpShard,
    S3Shard,
    StorageHttp,
    StorageS3,
    encode_metadata,
    schema_record_from_local,
    to_json,
    validate_dataset,
)
from .._model.progress import ProgressCallback, ProgressTracker
from .._model.schema import now_iso, parse_schema_ref
from .._model.urls import local_path, parse_s3_url, url_kind
from .._model.validate import (
    check_entry,
    check_handles,
    check_number,
    check_promotion_args,
    check_text,
)
from .executor import DaskExecutor, ShardRunner
from .fence import fenced, run_fence
from .journal import (
    PromotionJournal,
    ShardLog,
    ShardResume,
    decide_resume,
    dest_prefix,
    plan_document,
)

log = logging.getLogger("atdata_async.promote")
INTERNAL_METADATA = ("checksums", "shard_sizes", "num_samples", "etags", "store")
_PLACEHOLDER_REF = "at://did:plc:placeholder/science.alt.dataset.schema/x"
MAX_RECORD_BYTES = 1_000_000  # the reference PDS's request body limit (413 above), measured
_PLC_DID = "did:plc:" + "a" * 24  # the length of every did:plc
UPLOAD_RESTARTS = 2  # new uploads for a shard whose upload vanished under it (NoSuchUpload)


@dataclass(frozen=True)
class ShardPlan:
    """One shard: where it is, where it goes (None = stays), what we know of it.
    ``server_side``: copied by the server (same endpoint and account), so it holds no
    client buffer and runs under its own, higher, limit (``max_server_copies``)."""

    source_url: str
    kind: str
    dest_key: str | None
    size: int | None
    sha256: str | None
    etag: str | None = None
    server_side: bool = False


def evolve(shard: ShardPlan, **changes: Any) -> ShardPlan:
    """``dataclasses.replace(shard, **changes)`` without its field-by-field rebuild (~10
    us, and a promotion of 1,024 shards makes a few thousand: plan, modes, each copy's
    outcome). ShardPlan has no ``__post_init__`` to skip."""
    new = object.__new__(ShardPlan)
    fields = new.__dict__
    fields.update(shard.__dict__)
    for name in changes:
        if name not in fields:
            raise TypeError(f"ShardPlan has no field {name!r}")
    fields.update(changes)
    return new


@dataclass(frozen=True)
class PromotionPlan:
    """What a promotion will do; built and validated without any I/O."""

    record: DatasetRecord
    shards: list[ShardPlan]
    schema_name: str
    schema_version: str

    @property
    def copies(self) -> bool:
        return any(s.dest_key is not None for s in self.shards)


def record_metadata(metadata: dict[str, Any] | None) -> bytes | None:
    """The entry's metadata as the lexicon says: msgpack bytes of the caller's own keys
    (the index's bookkeeping dropped). atdata's reader returns them as they were."""
    if not metadata:
        return None
    return encode_metadata({k: v for k, v in metadata.items() if k not in INTERNAL_METADATA})


def plan_promotion(
    entry: LocalDatasetEntry,
    *,
    copy_to: S3DataStore | None,
    name: str | None = None,
    description: str | None = None,
    tags: Sequence[str] | None = None,
    license: str | None = None,
    copy_prefix: str = "promoted",
    location: StoreLocation | None = None,
    repo: str | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> PromotionPlan:
    """Validate the entry and the record-to-be; decide each shard's fate. Pure.

    ``location``: the S3 endpoint and region of shards that stay where they are. The
    putRecord request the promotion will end with is sized here, with every shard's
    sha256 in it, before any copy or write: above ``max_record_bytes`` (the PDS's limit)
    it is a RecordTooLargeError (a ValueError). ``repo`` (the account's DID) sharpens
    the estimate; a did:plc is assumed without it."""
    check_promotion_args(name=name, description=description, tags=tags, license=license,
                         copy_prefix=copy_prefix)
    check_entry(entry)
    if not entry.data_urls:
        raise EntryError(f"entry {entry.name!r} has no data URLs: nothing to promote")
    schema_name, schema_version = parse_schema_ref(entry.schema_ref)
    kinds = [url_kind(u) for u in entry.data_urls]
    if copy_to is None:
        local = [u for u, k in zip(entry.data_urls, kinds, strict=True) if k == "file"]
        if local:
            raise EntryError(f"{local[0]} is a local path that nobody else can read; pass "
                             "data_store=S3DataStore(...) to copy the shards somewhere public")
        if len(set(kinds)) > 1:
            raise EntryError("the entry mixes s3:// and http(s) URLs; pass data_store= to copy "
                             "them into one store")
        if kinds[0] == "s3" and len({parse_s3_url(u).bucket for u in entry.data_urls}) > 1:
            raise EntryError("the entry's shards span several buckets; pass data_store= to copy "
                             "them into one")
    final_name = name if name is not None else entry.name
    check_text("name", final_name, nonempty=True)
    checksums, sizes, etags = entry.checksums, entry.shard_sizes, entry.etags
    shards = []
    for i, (url, kind) in enumerate(zip(entry.data_urls, kinds, strict=True)):
        dest = None
        if copy_to is not None:
            base = posixpath.basename(local_path(url) if kind == "file" else url.split("?")[0])
            dest = copy_key(copy_prefix, final_name, entry.cid, i, base)
        shards.append(ShardPlan(url, kind, dest, sizes.get(url), checksums.get(url),
                                etags.get(url)))
    samples = (entry.metadata or {}).get("num_samples")
    record = DatasetRecord(
        name=final_name, schema_ref=_PLACEHOLDER_REF, created_at=now_iso(),
        storage=StorageS3(bucket="placeholder", shards=[S3Shard(key="k")]),
        description=description, tags=list(tags) if tags is not None else None,
        license=license, metadata=record_metadata(entry.metadata),
        size=DatasetSize(samples=samples if isinstance(samples, int) else None,
                         shards=len(shards)))
    validate_dataset(record)
    check_record_size(record, shards, copy_to, location, schema_name, schema_version,
                      repo=repo, limit=max_record_bytes)
    return PromotionPlan(record, shards, schema_name, schema_version)


def with_copy_modes(plan: PromotionPlan, source: S3DataStore | None,
                    dest: S3DataStore | None) -> PromotionPlan:
    """The plan with each copied s3:// shard marked server-side when ``source`` and
    ``dest`` share an endpoint and account (decided once the source store is known;
    pure: compares credentials, no I/O)."""
    if source is None or dest is None or not dest.shares_account_with(source):
        return plan
    return replace(plan, shards=[
        evolve(s, server_side=True) if s.kind == "s3" and s.dest_key is not None else s
        for s in plan.shards])


def copy_limits(max_copies: int, *, remote: bool = False) -> anyio.CapacityLimiter | None:
    """The limiter of a promotion's server-side (or streamed) copies (None on a cluster:
    the workers' own stores bound them there)."""
    return None if remote else anyio.CapacityLimiter(max(1, max_copies))


# Streamed shards below this size run up to max_streamed_copies at once; bigger ones
# under max_concurrency. A small copy waits on per-request latency, so more in flight
# pays (radosgw, 1,024 x 1 MiB across endpoints: 0.76x rclone's throughput at 8, 0.95x
# at 16); a big one is bound by bytes, so more in flight only adds the streams' buffers
# (32 x 32 MiB: 0.93-0.95x at both 8 and 16, peak RSS 103-106 vs 136-138 MiB).
WIDE_STREAMS_BELOW = 8 * 1024 * 1024


def streams_through(shard: ShardPlan) -> bool:
    """True when the pipeline runs the shard's copy under the streamed-copies limit: the
    store will stream it (GET passed through to the PUT, no whole-shard buffer: another
    account's s3:// object whose sha256 and ETag insert recorded, S3DataStore.copy_from)
    and it is small enough that more copies in flight pay (``WIDE_STREAMS_BELOW``)."""
    return (shard.kind == "s3" and shard.dest_key is not None and not shard.server_side
            and shard.sha256 is not None and shard.etag is not None
            and shard.size is not None and shard.size < WIDE_STREAMS_BELOW)


def copy_kind_limiter(copies: anyio.CapacityLimiter | None, resumes: Sequence[ShardResume],
                      streams: anyio.CapacityLimiter | None = None,
                      ) -> Callable[[tuple[int, ShardPlan]], anyio.CapacityLimiter | None]:
    """run_per_shard's ``limiter_for``: a server-side copy still to do takes ``copies``,
    a streamed one ``streams``; everything else (buffered, done, in place) the shard
    limit."""
    def limiter_for(item: tuple[int, ShardPlan]) -> anyio.CapacityLimiter | None:
        i, shard = item
        if resumes[i].done is not None:
            return None
        if copies is not None and shard.server_side:
            return copies
        if streams is not None and streams_through(shard):
            return streams
        return None
    return limiter_for


_COMPOUND_EXTS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")


def copy_key(prefix: str, name: str, cid: str, index: int, source_name: str) -> str:
    """``{prefix}/{name}/{tag}-{index:06d}{ext}``: short, because every key is spelled out
    in the dataset record (about 35 bytes per shard less than the source's
    ``data--{uuid}--{i}.tar``, so ~20% more shards per record), and unique: ``tag`` is 8
    characters of the entry's CID (a content hash), so two entries promoted under one
    name never overwrite each other's copies, and a rerun lands on the same keys."""
    ext = next((e for e in _COMPOUND_EXTS if source_name.endswith(e)), None) or \
        posixpath.splitext(source_name)[1] or ".tar"
    leaf = f"{cid[-8:]}-{index:06d}{ext}"
    return "/".join(p for p in (prefix.strip("/"), name, leaf) if p)


def putrecord_size(record: DatasetRecord, repo: str, rkey: str) -> int:
    """Bytes of the putRecord request body for ``record``, encoded as our client sends it
    (compact JSON, UTF-8)."""
    body = {"repo": repo, "collection": DATASET_COLLECTION, "rkey": rkey,
            "record": to_json(record)}
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def check_record_size(record: DatasetRecord, shards: Sequence[ShardPlan],
                      dest: S3DataStore | None, location: StoreLocation | None,
                      schema_name: str, schema_version: str, *, repo: str | None,
                      limit: int) -> int:
    """The size of the final putRecord request, at its largest (every shard with a sha256,
    the longest schema record key we may point at, a 16-digit byte count); refuses what
    the PDS would refuse, naming the way out."""
    schema_rkey_len = max(13, len(record_key_from(f"{schema_name}@{schema_version}")))
    did = repo or _PLC_DID
    worst = msgspec.structs.replace(
        record, schema_ref=f"at://{did}/{SCHEMA_COLLECTION}/{'k' * schema_rkey_len}",
        storage=_storage([evolve(s, sha256="0" * 64) for s in shards], dest, location),
        size=msgspec.structs.replace(record.size or DatasetSize(), bytes=10**15))
    size = putrecord_size(worst, did, "k" * 13)
    if size > limit:
        raise RecordTooLargeError(len(shards), size, limit)
    return size


# -- schema records: one listing per client, single flight per schema --------------------


class SchemaRegistry:
    """The client's schema records by (bare name, version), listed once and cached."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], str] | None = None
        self._listing: anyio.Lock | None = None
        self._inflight: dict[tuple[str, str], anyio.Lock] = {}

    async def _load(self, client: AtmosphereClient) -> dict[tuple[str, str], str]:
        if self._listing is None:
            self._listing = anyio.Lock()
        async with self._listing:
            if self._known is None:
                known: dict[tuple[str, str], str] = {}
                async for rec in client.list_records(SCHEMA_COLLECTION):
                    value = rec.get("value", {})
                    if isinstance(value.get("name"), str) and isinstance(value.get("version"), str):
                        bare = value["name"].rsplit(".", 1)[-1]  # atdata may store module.Class
                        known.setdefault((bare, value["version"]), rec["uri"])
                self._known = known
        return self._known

    async def lookup(self, client: AtmosphereClient, local: dict[str, Any]) -> str | None:
        """The URI of an existing record for this schema, if the repo has one."""
        return (await self._load(client)).get(_schema_key(local))

    async def find_or_publish(
        self, client: AtmosphereClient, local: dict[str, Any],
        ready: Callable[[], Awaitable[Any]] | None = None,
    ) -> str:
        """The schema record's URI, published once if the repo has none. A publish first
        awaits ``ready()`` (the caller's proof that the promotion can go through)."""
        key = _schema_key(local)
        known = await self._load(client)
        if key in known:
            return known[key]
        if ready is not None:
            await ready()
        lock = self._inflight.setdefault(key, anyio.Lock())
        async with lock:
            if key in known:
                return known[key]
            record = to_json(schema_record_from_local(local, now_iso()))
            # The key is deterministic, so a 5xx or a timeout is retried, and a record
            # another process (or our lost response) left at the key is reused.
            made = await client.create_record_at(
                SCHEMA_COLLECTION, schema_rkey(local), record,
                matches=lambda value: value.get("version") == key[1])
            uri = made["uri"]
            known[key] = uri
            return uri


def check_local_schema(local: Any, ref: str) -> None:
    """The local schema record (hand-written Redis, another program's) converts to a
    schema record, or ValidationError names it: before any write, never a KeyError."""
    try:
        if not isinstance(local.get("version"), str):
            raise TypeError("no version string")
        schema_record_from_local(local, now_iso())
    except AtdataError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise ValidationError("schema", f"the local schema {ref} is malformed "
                                        f"({type(exc).__name__}: {exc})") from None


def _schema_key(local: dict[str, Any]) -> tuple[str, str]:
    return local["name"].rsplit(".", 1)[-1], local["version"]


def schema_rkey(local: dict[str, Any]) -> str:
    """The deterministic record key of a schema we publish: racing writers collide on it."""
    name, version = _schema_key(local)
    return record_key_from(f"{name}@{version}")


_registries: weakref.WeakKeyDictionary[AtmosphereClient, SchemaRegistry] = (
    weakref.WeakKeyDictionary())


def schema_registry(client: AtmosphereClient) -> SchemaRegistry:
    registry = _registries.get(client)
    if registry is None:
        registry = _registries[client] = SchemaRegistry()
    return registry


# -- shards ------------------------------------------------------------------------------


async def _settle_shard(
    plan: ShardPlan, source: S3DataStore | None, http: HttpShardReader,
    dest: S3DataStore | None, compute_checksums: bool, tracker: ProgressTracker,
    log: ShardLog | None = None, resume: ShardResume | None = None, verify: bool = True,
) -> ShardPlan:
    """Copy one shard (or just learn its size and checksum); verify what landed.

    One idempotent unit: its destination key is fixed by the plan, it starts from
    ``resume`` (done already, or an upload to continue) and reports to ``log``.

    A checksum the entry claims is published only once proven: computed by us on the
    way, recorded by our own insert (with the object's ETag, checked by a HEAD when a
    store can reach it), or hashed here. ``verify=False`` drops an unproven claim
    instead of hashing (the record then says "none" for that shard)."""
    if plan.sha256 and not verify and not (plan.etag and plan.kind == "s3"):
        plan = replace(plan, sha256=None)
    if (verify and plan.kind == "s3" and source is None and plan.sha256 and not plan.etag
            and plan.dest_key is None):
        raise EntryError(f"{plan.source_url}: a claimed sha256 that no store can read to "
                         "prove (verify=False publishes the shard without it)")
    if resume is not None and resume.done is not None:
        sha256, size = resume.done
        _learn_size(tracker, plan, size)
        tracker.add_bytes(size)
        return evolve(plan, size=size, sha256=sha256 or plan.sha256)
    if plan.dest_key is None:
        settled = plan
        if plan.kind == "s3" and source is not None:
            settled = await _check_in_place(plan, source, compute_checksums)
        elif plan.kind == "http" and (compute_checksums or plan.sha256):
            digest, size = await http.sha256_of(plan.source_url)
            _check_claim(plan, digest)
            settled = replace(plan, sha256=digest, size=size)
        _learn_size(tracker, plan, settled.size)
        tracker.add_bytes(settled.size or 0)
        return settled
    assert dest is not None
    for restart in range(UPLOAD_RESTARTS + 1):
        try:
            done = await _copy_shard(plan, source, http, dest, tracker, log)
            break
        except ObjectNotFoundError as exc:
            # the multipart upload vanished under the copy (aborted by cleanup, by a stale
            # worker, or completed by one): a new upload, not a failed promotion
            if exc.code != "NoSuchUpload" or restart == UPLOAD_RESTARTS:
                raise
            logging.getLogger("atdata_async.promote").warning(
                "%s: its multipart upload vanished (%s); restarting the shard", plan.source_url,
                exc)
            if log is not None:
                log.closed()
            if plan.size is not None:
                tracker.learn_size(plan.size)  # its bytes are sent again
    settled = await _verify_copy(plan, done, source, dest, compute_checksums)
    if log is not None:
        log.copied(done.etag or "", settled.sha256, done.size)
    return settled


async def _copy_shard(plan: ShardPlan, source: S3DataStore | None, http: HttpShardReader,
                      dest: S3DataStore, tracker: ProgressTracker,
                      log: ShardLog | None) -> ShardUpload:
    """One attempt at shard ``plan``'s copy into ``dest`` (streamed, uploaded or copied)."""
    if plan.kind == "file":
        path = local_path(plan.source_url)
        _learn_size(tracker, plan, os.path.getsize(path))
        done: ShardUpload = await dest.upload_file(path, plan.dest_key, tracker, log=log)
    elif plan.kind == "http":
        async with http.open(plan.source_url) as body:
            if body.size is None:
                raise EntryError(f"{plan.source_url}: the server sends no Content-Length, "
                                 "so the shard cannot be streamed into S3")
            _learn_size(tracker, plan, body.size)
            # hashed on the way (no known digest passed): compared with any recorded one
            done = await dest.upload_stream(body.read, body.size, plan.dest_key, tracker,
                                            log=log)
    else:
        if source is None:
            raise EntryError(f"copying {plan.source_url} needs credentials for its store: "
                             "LocalIndex(data_store=S3DataStore(...))")
        size = plan.size if plan.size is not None else await source.size_of(plan.source_url)
        _learn_size(tracker, plan, size)
        try:
            done = await dest.copy_from(source, plan.source_url, plan.dest_key, size, tracker,
                                        plan.sha256, source_etag=plan.etag, log=log)
        except SourceChangedError as exc:
            raise _changed_since_insert(plan, "its ETag no longer matches") from exc
    return done


def _learn_size(tracker: ProgressTracker, plan: ShardPlan, size: int | None) -> None:
    """Grow the progress total by a shard whose size the plan did not know."""
    if plan.size is None and size is not None:
        tracker.learn_size(size)


async def _check_in_place(plan: ShardPlan, source: S3DataStore,
                          compute_checksums: bool) -> ShardPlan:
    """A shard that stays where it is: its size, and a checksum true of its bytes now."""
    if plan.sha256 and plan.etag:
        head = await _still_as_inserted(plan, source)
        return replace(plan, size=int(head["ContentLength"]))
    if plan.sha256 or compute_checksums:  # a claim not tied to an ETag is proven here
        digest, size = await source.sha256_of(plan.source_url)
        _check_claim(plan, digest)
        return replace(plan, sha256=digest, size=size)
    if plan.size is None:
        return replace(plan, size=await source.size_of(plan.source_url))
    return plan


async def _still_as_inserted(plan: ShardPlan, source: S3DataStore) -> dict[str, Any]:
    """HEAD the source: it must still be the version whose sha256 insert recorded."""
    head = await source.head(plan.source_url)
    if etag_of(head) != plan.etag:
        raise _changed_since_insert(plan, f"ETag {etag_of(head)} != recorded {plan.etag}")
    return head


def _check_claim(plan: ShardPlan, digest: str) -> None:
    """The sha256 the entry claims must be the one its bytes have."""
    if plan.sha256 and plan.sha256 != digest:
        raise SourceChangedError(f"{plan.source_url}: its bytes hash to sha256 {digest}, not "
                                 f"the {plan.sha256} the entry claims; nothing was published "
                                 "with the wrong checksum (re-insert the dataset)")


def _changed_since_insert(plan: ShardPlan, detail: str) -> SourceChangedError:
    return SourceChangedError(f"{plan.source_url} changed since it was inserted ({detail}); "
                              "re-insert the dataset")


async def _verify_copy(plan: ShardPlan, done: ShardUpload, source: S3DataStore | None,
                       dest: S3DataStore, compute_checksums: bool) -> ShardPlan:
    """Check a copy before a record may name it; the sha256 it gets is true of its bytes.

    Verified outright when S3 checked our sha256 on arrival, or when a server-side copy
    reports the ETag recorded at insert. Otherwise the size is read back, and a
    server-side copy (whose new ETag may differ for layout or encryption reasons) needs
    its source to still be the inserted version. Streamed copies read with If-Match.
    """
    if not (done.verified or (done.etag and done.etag == plan.etag)):
        landed = await dest.size_of(done.url)
        if landed != done.size:
            raise EntryError(f"copy of {plan.source_url} has {landed} bytes, "
                             f"expected {done.size}")
        if done.sha256 is None and plan.etag and source is not None:
            await _still_as_inserted(plan, source)
    if done.sha256 and plan.sha256 and done.sha256 != plan.sha256:
        raise _changed_since_insert(plan, f"sha256 {done.sha256} != recorded {plan.sha256}")
    digest = done.sha256
    if digest is None and plan.sha256 and plan.etag and (
            done.etag == plan.etag or source is not None):
        digest = plan.sha256  # the inserted version's own digest (ETag checked above)
    if digest is None and (compute_checksums or plan.sha256):
        digest, _ = await dest.sha256_of(done.url)
        _check_claim(plan, digest)
    return evolve(plan, size=done.size, sha256=digest)


def _storage(shards: Sequence[ShardPlan], dest: S3DataStore | None,
             location: StoreLocation | None) -> StorageS3 | StorageHttp:
    def checksum(s: ShardPlan) -> Checksum:
        return Checksum("sha256", s.sha256) if s.sha256 else Checksum("none", "")

    if dest is not None:
        return StorageS3(bucket=dest.bucket, endpoint=dest.endpoint, region=dest.region,
                         shards=[S3Shard(s.dest_key or "", checksum(s)) for s in shards])
    if shards[0].kind == "http":
        return StorageHttp([HttpShard(s.source_url, checksum(s)) for s in shards])
    bucket = parse_s3_url(shards[0].source_url).bucket
    return StorageS3(bucket=bucket, endpoint=location.endpoint if location else None,
                     region=location.region if location else None,
                     shards=[S3Shard(parse_s3_url(s.source_url).key, checksum(s))
                             for s in shards])


async def promote_to_atmosphere(
    entry: LocalDatasetEntry,
    local_index: LocalIndex,
    client: AtmosphereClient,
    *,
    data_store: S3DataStore | None = None,
    name: str | None = None,
    description: str | None = None,
    tags: Sequence[str] | None = None,
    license: str | None = None,
    compute_checksums: bool = True,
    max_concurrency: int = 8,
    max_server_copies: int = SERVER_COPIES,
    max_streamed_copies: int = STREAMED_COPIES,
    copy_prefix: str = "promoted",
    progress: ProgressCallback | None = None,
    verify: bool = True,
    executor: DaskExecutor | None = None,
    source_store: S3DataStore | None = None,
    max_record_bytes: int = MAX_RECORD_BYTES,
    max_rate_limit_wait: float = 3600.0,
) -> str:
    """Publish ``entry`` (schema record deduplicated) and return the dataset's at-uri.

    By default the shards stay where they are; with ``data_store`` they are copied there
    (server-side when possible). ``s3://`` shards are read through ``source_store``, else
    the local index's store, else one made from the endpoint and region recorded at
    insert with the AWS credentials of the environment or profile. Each checksum is proven
    true of the shard before it is published; when nothing can read the shards, the
    promotion refuses before any write, unless ``verify=False``: then checksums the entry
    claims are not hashed to prove them, and unproven ones are left out of the record
    (those our own insert recorded with the object's ETag are kept). KeyError: schema not
    in the local index; ValueError: an entry or a record that cannot be published (the
    message names the field), or a record over ``max_record_bytes``.
    With ``executor`` (a DaskExecutor) the copies run on a cluster; this process keeps
    the plan, the journal's lease and every PDS write. A spent write budget (429) is
    waited out when it resets within ``max_rate_limit_wait`` seconds: after a long copy
    the record waits rather than fails.
    ``max_concurrency`` shards are copied (or checked) at once; server-side copies (same
    endpoint and account) hold no buffer and run up to ``max_server_copies`` at once
    instead (each request also within the store's own ``max_server_copies``); streamed
    copies (another account, sha256 and ETag recorded at insert: the source's GET passed
    straight into the PUT) hold only chunk buffers and run up to ``max_streamed_copies``
    at once (likewise within the store's own).
    """
    check_promotion_args(name=name, description=description, tags=tags, license=license,
                         copy_prefix=copy_prefix, max_concurrency=max_concurrency,
                         compute_checksums=compute_checksums, verify=verify,
                         max_server_copies=max_server_copies,
                         max_streamed_copies=max_streamed_copies)
    check_number("max_rate_limit_wait", max_rate_limit_wait)
    check_handles(entry=entry, local_index=local_index, client=client, data_store=data_store,
                  progress=progress)
    check_handles(local_index=local_index, client=client, data_store=source_store)
    location = source_location(entry, local_index, source_store)
    plan = plan_promotion(entry, copy_to=data_store, name=name, description=description,
                          tags=tags, license=license, copy_prefix=copy_prefix,
                          location=location, repo=client.did,
                          max_record_bytes=max_record_bytes)
    if not client.is_authenticated:
        raise AuthError("promote_to_atmosphere", None, "NotLoggedIn",
                        "the AtmosphereClient is not logged in: call client.login() first")
    local_schema = await local_index.get_schema(entry.schema_ref)  # KeyError before any write
    check_local_schema(local_schema, entry.schema_ref)
    async with contextlib.AsyncExitStack() as owned:
        source = await resolve_source(entry, local_index, data_store, source_store, plan,
                                      location, verify, owned)
        plan = with_copy_modes(plan, source, data_store)
        return await _promote(entry, local_index, client, plan, local_schema, source,
                              location, data_store, compute_checksums, max_concurrency,
                              progress, verify, executor, max_rate_limit_wait,
                              max_server_copies, max_streamed_copies)
    raise AssertionError("unreachable")  # pragma: no cover  (the stack never swallows)


def source_location(entry: LocalDatasetEntry, local_index: LocalIndex,
                    source_store: S3DataStore | None) -> StoreLocation | None:
    """Where shards that stay in place live, for the record: the store they are read
    through, else the endpoint and region recorded at insert (never lost to a missing
    store)."""
    store = source_store or local_index.data_store
    if store is not None:
        return StoreLocation(store.endpoint, store.region)
    return entry.store_location


async def resolve_source(entry: LocalDatasetEntry, local_index: LocalIndex,
                         dest: S3DataStore | None, source_store: S3DataStore | None,
                         plan: PromotionPlan, location: StoreLocation | None, verify: bool,
                         owned: contextlib.AsyncExitStack) -> S3DataStore | None:
    """The store the s3:// shards are read (or proven) through, decided before any write.

    The caller's ``source_store``, else the local index's; when copying, the
    destination's credentials if the entry's recorded endpoint is the destination's (one
    account holding both buckets); else a store for the recorded endpoint and region with
    the AWS credentials of the environment or profile (closed with ``owned``). None, and
    nothing to read with: a copy cannot happen; a promotion in place refuses unless
    ``verify=False``."""
    s3 = [s for s in plan.shards if s.kind == "s3"]
    if not s3:
        return None
    if source_store is not None:
        return source_store
    if local_index.data_store is not None:
        return local_index.data_store
    if dest is not None and (entry.store_location is None
                             or entry.store_location.endpoint == dest.endpoint):
        return dest
    bucket = parse_s3_url(s3[0].source_url).bucket
    ambient = await anyio.to_thread.run_sync(
        ambient_credentials, location.endpoint if location else None,
        location.region if location else None)
    if ambient is not None:
        store = S3DataStore(ambient, bucket=bucket)
        owned.push_async_callback(store.aclose)
        return store
    where = (f"s3://{bucket} at {location.endpoint or 'AWS'}" if location
             else f"s3://{bucket} (no endpoint recorded: AWS, or AWS_ENDPOINT_URL)")
    fix = ("pass source_store=S3DataStore(...) (CLI: --source-credentials FILE.env), or "
           "LocalIndex(data_store=...), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
           "(or AWS_PROFILE) for that store")
    if any(s.dest_key is not None for s in s3):
        raise EntryError(f"copying the shards in {where} needs credentials to read them: "
                         f"{fix}")
    if verify:
        raise EntryError(
            f"cannot prove the checksums of the {len(s3)} shard(s) in {where}: there are no "
            f"credentials to read them with. {fix[0].upper()}{fix[1:]}; or pass verify=False "
            "(CLI: --no-verify) to publish them unproven")
    log.warning("verify=False: publishing %d shard(s) in %s without proving them (checksums "
                "our insert recorded with the object's ETag are kept, other claims dropped)",
                len(s3), where)
    return None


async def _promote(entry: LocalDatasetEntry, local_index: LocalIndex,
                   client: AtmosphereClient, plan: PromotionPlan,
                   local_schema: dict[str, Any], source: S3DataStore | None,
                   location: StoreLocation | None, data_store: S3DataStore | None,
                   compute_checksums: bool, max_concurrency: int,
                   progress: ProgressCallback | None, verify: bool,
                   executor: DaskExecutor | None, max_rate_limit_wait: float = 3600.0,
                   max_server_copies: int = SERVER_COPIES,
                   max_streamed_copies: int = STREAMED_COPIES) -> str:
    tracker = ProgressTracker(progress, len(plan.shards),
                              sum(s.size or 0 for s in plan.shards))
    pkey = promotion_key(client.did, entry, plan.record.name, data_store)
    journal: PromotionJournal | None = None
    resumes = [ShardResume()] * len(plan.shards)
    logs: list[ShardLog | None] = [None] * len(plan.shards)
    remote = None
    if executor is not None and data_store is not None and plan.copies:
        remote = executor.bind(promotion=pkey, local_index=local_index, dest=data_store,
                               source=source, compute_checksums=compute_checksums,
                               verify=verify)  # refuses a secret in the task before any write
    if data_store is not None and plan.copies:
        journal = PromotionJournal(local_index, pkey)
        resumes = await _open_journal(journal, plan, entry, data_store)
        data_store = fenced(data_store, run_fence(journal, plan.shards))  # docs/scale-out.md
        logs = [journal.shard(i, s, r) for i, (s, r) in
                enumerate(zip(plan.shards, resumes, strict=True))]
    schema_uri = ""
    settled: list[ShardPlan] = []
    # Nothing is written to the PDS before every shard has settled: a wrong bucket, bad
    # credentials, a dead endpoint or a shard failing late leave no stray schema record.
    all_settled = anyio.Event()

    async def resolve_schema() -> None:
        nonlocal schema_uri
        schema_uri = await schema_registry(client).find_or_publish(
            client, local_schema, ready=all_settled.wait)

    async def settle_shards() -> None:
        nonlocal settled
        indexed = list(enumerate(plan.shards))
        # on a cluster, more tasks in flight than run at once (ShardRunner.in_flight);
        # a shard settled here still takes one of max_concurrency local slots
        local: Any = contextlib.nullcontext()
        limit = max_concurrency
        if remote is not None:
            await remote.plan([(i, s, resumes[i]) for i, s in indexed
                               if s.dest_key is not None and resumes[i].done is None], journal)
            local, limit = (anyio.CapacityLimiter(max(1, max_concurrency)),
                            await remote.in_flight(max_concurrency))

        async def one(item: tuple[int, ShardPlan]) -> ShardPlan:
            i, shard = item
            if remote is not None and shard.dest_key is not None and resumes[i].done is None:
                return await settle_elsewhere(remote, i, shard, resumes[i], logs[i], tracker)
            async with local:
                return await _settle_shard(shard, source, http, data_store, compute_checksums,
                                           tracker, logs[i], resumes[i], verify)

        copies = copy_limits(max_server_copies, remote=remote is not None)
        streams = copy_limits(max_streamed_copies, remote=remote is not None)
        try:
            settled = await run_per_shard([s.source_url for s in plan.shards], indexed, one,
                                          limit, tracker,
                                          copy_kind_limiter(copies, resumes, streams))
        except ShardTransferError as exc:
            raise_lost_cluster(exc)
            raise
        if remote is not None:
            await remote.sweep([s.dest_key for s in plan.shards if s.dest_key])
        all_settled.set()

    try:
        async with HttpShardReader() as http:
            with single_error():
                async with anyio.create_task_group() as tg:
                    if journal is not None:
                        flusher = anyio.CancelScope()

                        async def flush_journal(journal: PromotionJournal = journal) -> None:
                            with flusher:
                                await journal.run_flusher()

                        tg.start_soon(flush_journal)
                    async with anyio.create_task_group() as work:
                        work.start_soon(resolve_schema)
                        work.start_soon(settle_shards)
                    if journal is not None:
                        flusher.cancel()

        unchecked = [s.source_url for s in settled if not s.sha256]
        if unchecked and compute_checksums:
            log.warning("publishing %d shard(s) without a checksum (none recorded, and the "
                        "local index has no data store to read them with): %s",
                        len(unchecked), unchecked[0])
        sizes = [s.size for s in settled]
        total = sum(x for x in sizes if x is not None) if None not in sizes else None
        record = validate_dataset(msgspec.structs.replace(
            plan.record, schema_ref=schema_uri, storage=_storage(settled, data_store, location),
            size=msgspec.structs.replace(plan.record.size or DatasetSize(), bytes=total)))
        # The same entry promoted under the same name to the same place always lands at one
        # record key, kept in the local index: a retry after a failure or a lost response,
        # or a second run, replaces that record (putRecord is safe to repeat) instead of
        # adding one.
        rkey = await local_index.record_key_for(pkey, next_tid())
        written = await put_waiting(client, rkey, to_json(record), max_rate_limit_wait)
        if journal is not None:
            await journal.flush()
            await journal.publish(str(written["uri"]), settled,
                                  {i: lg.etag for i, lg in enumerate(logs) if lg is not None})
    finally:
        if journal is not None:
            await journal.release()
    return str(written["uri"])


async def _wait(seconds: float) -> None:
    """Sleep for a spent write budget (a seam the tests replace)."""
    await anyio.sleep(seconds)


async def put_waiting(client: AtmosphereClient, rkey: str, record: dict[str, Any],
                      max_wait: float) -> dict[str, Any]:
    """putRecord (safe to repeat), waiting out 429s that reset within ``max_wait`` seconds
    each (the client alone waits only up to its own, shorter, max_rate_limit_wait)."""
    for _ in range(8):
        try:
            return await client.put_record(DATASET_COLLECTION, rkey, record)
        except RateLimitedError as exc:
            wait = (exc.reset_at or time.time() + 1) - time.time() + 1.0
            if wait > max_wait:
                raise
            log.info("putRecord rate limited; waiting %.0fs for the budget's reset", wait)
            await _wait(max(0.0, wait))
    return await client.put_record(DATASET_COLLECTION, rkey, record)


def raise_lost_cluster(exc: ShardTransferError) -> None:
    """The cluster is gone: that, not a list of shards, is the error."""
    lost = [e for e in exc.failures.values() if isinstance(e, ExecutorError)]
    if lost:
        raise lost[0] from exc


async def settle_elsewhere(remote: ShardRunner, i: int, shard: ShardPlan, resume: ShardResume,
                           log: ShardLog | None, tracker: ProgressTracker) -> ShardPlan:
    """Shard i copied by the executor's worker (which journals it). Its progress (the
    shard and its bytes) counts once: when the runner sees it settled in the journal
    (``remote.settle`` watches the groups at the cluster while ``tracker`` has a
    callback), or else here, when its group has answered."""
    settled, etag = await remote.settle(i, shard, resume,
                                        log.journal if log is not None else None, tracker)
    if log is not None:
        log.etag = etag
    tracker.returning(remote.progress_key(i), settled.size or 0,
                      unplanned=shard.size is None and settled.size is not None)
    return settled


async def _open_journal(journal: PromotionJournal, plan: PromotionPlan,
                        entry: LocalDatasetEntry, dest: S3DataStore) -> list[ShardResume]:
    """Save the plan and decide each shard's starting point from what an earlier run of
    the same promotion left: one listing of the destination prefix (and one of its open
    uploads, if that run never finished), never a HEAD per shard. Uploads a dead run left
    under the plan's keys are aborted here."""
    doc = plan_document(plan.shards, entry_cid=entry.cid, name=plan.record.name,
                        bucket=dest.bucket, endpoint=dest.endpoint)
    states = await journal.open(doc, plan.shards)
    dest = fenced(dest, run_fence(journal, plan.shards))  # a stale run's aborts are refused
    if not journal.existed:  # no earlier run journaled anything under these keys
        return [ShardResume()] * len(plan.shards)
    prefix = dest_prefix([s.dest_key for s in plan.shards if s.dest_key])
    listing = await dest.list_objects(prefix)
    uploads: list[tuple[str, str]] = []
    if journal.was_running:
        uploads = [(u["Key"], u["UploadId"]) for u in await dest.list_multipart_uploads(prefix)]
    resumes, aborts = decide_resume(plan.shards, states, listing, uploads)
    if aborts:
        async with anyio.create_task_group() as tg:
            for key, upload_id in aborts:
                tg.start_soon(dest.abort_multipart, key, upload_id)
    return resumes


def promotion_key(did: str, entry: LocalDatasetEntry, name: str,
                  dest: S3DataStore | None) -> str:
    """What makes two promotions "the same": account, entry, published name, destination."""
    where = f"{dest.endpoint}|{dest.bucket}" if dest is not None else "in-place"
    return hashlib.sha256(f"{did}|{entry.cid}|{name}|{where}".encode()).hexdigest()


async def preview_promotion(
    entry: LocalDatasetEntry,
    local_index: LocalIndex,
    client: AtmosphereClient,
    *,
    data_store: S3DataStore | None = None,
    name: str | None = None,
    description: str | None = None,
    tags: Sequence[str] | None = None,
    license: str | None = None,
    copy_prefix: str = "promoted",
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> dict[str, Any]:
    """What ``promote_to_atmosphere`` would do, writing nothing: the schema record to reuse
    or publish, the shards to copy (and bytes), and the dataset record to write."""
    check_promotion_args(name=name, description=description, tags=tags, license=license,
                         copy_prefix=copy_prefix)
    check_handles(entry=entry, local_index=local_index, client=client, data_store=data_store)
    location = source_location(entry, local_index, None)
    plan = plan_promotion(entry, copy_to=data_store, name=name, description=description,
                          tags=tags, license=license, copy_prefix=copy_prefix,
                          location=location, repo=client.did,
                          max_record_bytes=max_record_bytes)
    local_schema = await local_index.get_schema(entry.schema_ref)
    check_local_schema(local_schema, entry.schema_ref)
    existing = await schema_registry(client).lookup(client, local_schema)
    if existing is not None:
        schema: dict[str, Any] = {"action": "reuse", "uri": existing}
    else:
        existing = f"at://{client.did}/{SCHEMA_COLLECTION}/{schema_rkey(local_schema)}"
        schema = {"action": "publish", "uri": existing,
                  "record": to_json(schema_record_from_local(local_schema, now_iso()))}
    shards = [{"source": s.source_url,
               "destination": data_store.url(s.dest_key) if data_store and s.dest_key else None,
               "bytes": s.size} for s in plan.shards]
    record = msgspec.structs.replace(plan.record, schema_ref=existing,
                                     storage=_storage(plan.shards, data_store, location))
    return {"schema": schema, "shards": shards,
            "bytes": sum(s.size or 0 for s in plan.shards),
            "copies": plan.copies, "record": to_json(record)}
