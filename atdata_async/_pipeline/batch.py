"""promote_many: many entries published in one pass.

    plan every entry (pure; a bad entry fails alone)
      -> record keys for all of them in one Redis round trip (remembered ones reused)
      -> the remembered ones the PDS already holds are done: a rerun publishes only what
         is missing, and never a second record for the same promotion
      -> every entry's shards settle under ONE concurrency limit; each entry's schema is
         found (one listing per client) or published once all its shards settled
      -> settled records go out through applyWrites: at most 200 writes and
         ``MAX_WRITE_BYTES`` per call, paced by the PDS's ratelimit-* headers

Each entry gets an outcome (its at-uri, or the error that stopped it); one entry's
failure never stops the others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
import msgspec

from .._backends.http_reader import HttpShardReader
from .._backends.redis_index import LocalDatasetEntry, LocalIndex
from .._backends.s3_store import SERVER_COPIES, STREAMED_COPIES, S3DataStore
from .._backends.tasks import backoff, run_per_shard, single_error
from .._backends.xrpc import MAX_WRITES_PER_CALL, AtmosphereClient, RateLimit
from .._errors import (
    AuthError,
    EntryError,
    FieldTypeError,
    RateLimitedError,
    RecordNotFoundError,
    ShardTransferError,
    XrpcError,
)
from .._model.ids import next_tid
from .._model.lexicon import DATASET_COLLECTION, DatasetSize, to_json, validate_dataset
from .._model.progress import ProgressCallback, ProgressTracker
from .._model.urls import parse_s3_url
from .._model.validate import check_handles, check_number, check_promotion_args
from .executor import DaskExecutor
from .fence import fenced, run_fence
from .journal import PromotionJournal, ShardLog, ShardResume, dest_prefix
from .promote import (
    MAX_RECORD_BYTES,
    PromotionPlan,
    ShardPlan,
    _open_journal,
    _settle_shard,
    _storage,
    copy_kind_limiter,
    copy_limits,
    plan_promotion,
    promotion_key,
    raise_lost_cluster,
    resolve_source,
    schema_registry,
    settle_elsewhere,
    source_location,
    with_copy_modes,
)

log = logging.getLogger("atdata_async.batch")

APPLY_WRITES = "com.atproto.repo.applyWrites"
# The reference PDS takes 1,000,000 bytes of JSON per applyWrites call; stay under it.
MAX_WRITE_BYTES = 900_000
CREATE_POINTS = 3  # what one create costs in the PDS's write budget
_CREATE = "com.atproto.repo.applyWrites#create"
# Above this many remembered keys one listing of the collection beats a getRecord each.
_LIST_ABOVE = 50
_LIST_SHARDS_ABOVE = 20


@dataclass(frozen=True)
class PromotionOutcome:
    """What became of one entry: ``uri`` when published (now or by an earlier run:
    ``existing``), else ``error``."""

    name: str
    uri: str | None = None
    error: BaseException | None = None
    existing: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Job:
    index: int
    entry: LocalDatasetEntry
    plan: PromotionPlan
    key: str = ""
    rkey: str = ""
    remembered: bool = False


async def promote_many(
    entries: Sequence[LocalDatasetEntry],
    local_index: LocalIndex,
    client: AtmosphereClient,
    *,
    data_store: S3DataStore | None = None,
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
) -> list[PromotionOutcome]:
    """Publish every entry (each under its own name); one outcome per entry, in order.
    The options are promote_to_atmosphere's but ``name`` (tests/test_batch.py keeps the
    two lists equal). With ``executor`` (a DaskExecutor) the shard copies run on a
    cluster; ``s3://`` shards are read through ``source_store``, else the index's store.

    Idempotent: an entry already published by an earlier run (same account, entry, name
    and destination) is reported ``existing`` and not written again. Record writes wait
    for the PDS's write budget to reset, up to ``max_rate_limit_wait`` seconds a time.
    ``verify`` as in promote_to_atmosphere.
    """
    check_promotion_args(name=None, description=description, tags=tags, license=license,
                         copy_prefix=copy_prefix, max_concurrency=max_concurrency,
                         compute_checksums=compute_checksums, verify=verify,
                         max_server_copies=max_server_copies,
                         max_streamed_copies=max_streamed_copies)
    check_number("max_rate_limit_wait", max_rate_limit_wait)
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
        raise FieldTypeError("entries", f"must be a list of entries, got "
                             f"{type(entries).__name__}")
    check_handles(local_index=local_index, client=client, data_store=data_store,
                  progress=progress)
    check_handles(local_index=local_index, client=client, data_store=source_store)
    if entries:  # the shared handles; each entry is checked with its own outcome below
        check_handles(entry=entries[0], local_index=local_index, client=client,
                      data_store=data_store, progress=progress)
    if not client.is_authenticated:
        raise AuthError("promote_many", None, "NotLoggedIn",
                        "the AtmosphereClient is not logged in: call client.login() first")
    outcomes: list[PromotionOutcome | None] = [None] * len(entries)
    jobs: list[_Job] = []
    for i, entry in enumerate(entries):
        try:
            check_handles(entry=entry, local_index=local_index, client=client)
            plan = plan_promotion(entry, copy_to=data_store, description=description,
                                  tags=tags, license=license, copy_prefix=copy_prefix,
                                  location=source_location(entry, local_index,
                                                           source_store),
                                  repo=client.did, max_record_bytes=max_record_bytes)
        except Exception as exc:
            outcomes[i] = PromotionOutcome(entry.name, error=exc)
            continue
        jobs.append(_Job(i, entry, plan, promotion_key(client.did, entry, plan.record.name,
                                                       data_store)))
    jobs, twins = _unique(jobs, data_store is not None, outcomes)

    keys = await local_index.record_keys_for({j.key: next_tid() for j in jobs})
    for job in jobs:
        job.rkey, job.remembered = keys[job.key]
    existing = await _existing_records(client, [j.rkey for j in jobs if j.remembered])
    todo = []
    for job in jobs:
        if job.rkey in existing:
            outcomes[job.index] = PromotionOutcome(job.entry.name, existing[job.rkey],
                                                   existing=True)
        else:
            todo.append(job)

    # one lookup per distinct local schema for the whole batch
    schemas: dict[str, dict[str, Any] | BaseException] = {}
    for job in todo:
        ref = job.entry.schema_ref
        if ref not in schemas:
            try:
                schemas[ref] = await local_index.get_schema(ref)
            except Exception as exc:
                schemas[ref] = exc
    source = source_store or local_index.data_store
    listed = await _list_in_place(source, [s for job in todo for s in job.plan.shards])
    shards = [s for job in todo for s in job.plan.shards]
    tracker = ProgressTracker(progress, len(shards), sum(s.size or 0 for s in shards))
    # On a cluster, more shard tasks in flight than run at once (DaskExecutor.in_flight,
    # workers counted once here); a shard settled here still takes a local slot.
    shard_limit = (await executor.in_flight(max_concurrency) if executor is not None
                   else max(1, max_concurrency))
    limiter = anyio.CapacityLimiter(shard_limit)
    local_slots = (anyio.CapacityLimiter(max(1, max_concurrency)) if executor is not None
                   else None)
    # server-side copies of every entry share their own, higher, limit; streamed ones too
    copies = copy_limits(max_server_copies, remote=executor is not None)
    streams = copy_limits(max_streamed_copies, remote=executor is not None)
    # Entries in flight at once (their shards share ``limiter``): bounds the journals and
    # Redis connections a batch of thousands holds.
    entry_slots = anyio.CapacityLimiter(max(4, 4 * max_concurrency, shard_limit,
                                            max_server_copies, max_streamed_copies))
    writer = _Writer(client, max_rate_limit_wait,
                     min(MAX_WRITE_BYTES, max_record_bytes * 9 // 10))
    ready: dict[int, _Settled] = {}
    send, receive = anyio.create_memory_object_stream[tuple[_Job, dict[str, Any]]](
        max_buffer_size=len(todo) or 1)

    async def settle(job: _Job) -> None:
        try:
            local_schema = schemas[job.entry.schema_ref]
            if isinstance(local_schema, BaseException):
                raise local_schema
            async with entry_slots:
                ready[job.index] = await _settle_entry(
                    job, local_schema, local_index, client, data_store, compute_checksums,
                    limiter, tracker, http, listed, verify, executor, source_store,
                    local_slots, copies, streams)
        except Exception as exc:
            outcomes[job.index] = PromotionOutcome(job.entry.name, error=exc)
            return
        await send.send((job, ready[job.index].record))

    async def done(results: list[tuple[_Job, str | BaseException]]) -> None:
        for job, result in results:
            outcomes[job.index] = _outcome(job, result)
            await ready.pop(job.index).finish(result if isinstance(result, str) else None)

    async def settle_all() -> None:
        with single_error():
            async with send, anyio.create_task_group() as tg:
                for job in todo:
                    tg.start_soon(settle, job)

    async def write_all() -> None:
        async with receive:
            async for job, record in receive:
                await done(await writer.add(job, record))
        await done(await writer.flush())

    try:
        async with HttpShardReader() as http:
            with single_error():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(settle_all)
                    tg.start_soon(write_all)
    finally:
        with anyio.CancelScope(shield=True):
            for left in ready.values():  # settled, never written (cancelled, failed)
                await left.finish(None)

    for twin, first in twins:
        got = outcomes[first]
        assert got is not None
        outcomes[twin] = PromotionOutcome(entries[twin].name, got.uri, got.error, got.existing)
    return [o if o is not None else PromotionOutcome(e.name, error=RuntimeError("not run"))
            for o, e in zip(outcomes, entries, strict=True)]


def _outcome(job: _Job, result: str | BaseException) -> PromotionOutcome:
    if isinstance(result, BaseException):
        return PromotionOutcome(job.entry.name, error=result)
    return PromotionOutcome(job.entry.name, result)


def _unique(jobs: list[_Job], copies: bool, outcomes: list[PromotionOutcome | None]
            ) -> tuple[list[_Job], list[tuple[int, int]]]:
    """The same promotion twice in a batch runs once (the twin shares its outcome); two
    different entries published under one name into one store would share keys: the
    later fails."""
    by_key: dict[str, _Job] = {}
    by_name: dict[str, _Job] = {}
    unique, twins = [], []
    for job in jobs:
        if job.key in by_key:
            twins.append((job.index, by_key[job.key].index))
            continue
        name = job.plan.record.name
        if copies and name in by_name:
            outcomes[job.index] = PromotionOutcome(job.entry.name, error=EntryError(
                f"two entries of the batch are both published as {name!r} into one store; "
                "their shards would collide"))
            continue
        by_key[job.key] = by_name[name] = job
        unique.append(job)
    return unique, twins


async def _existing_records(client: AtmosphereClient, rkeys: list[str]) -> dict[str, str]:
    """Which of these dataset record keys the repo already holds: rkey -> at-uri."""
    if not rkeys:
        return {}
    wanted = set(rkeys)
    found: dict[str, str] = {}
    if len(rkeys) > _LIST_ABOVE:
        async for rec in client.list_records(DATASET_COLLECTION):
            rkey = str(rec["uri"]).rsplit("/", 1)[-1]
            if rkey in wanted:
                found[rkey] = str(rec["uri"])
        return found
    limiter = anyio.CapacityLimiter(8)

    async def one(rkey: str) -> None:
        async with limiter:
            try:
                got = await client.get_record(DATASET_COLLECTION, rkey)
            except RecordNotFoundError:
                return
            found[rkey] = str(got["uri"])

    async with anyio.create_task_group() as tg:
        for rkey in rkeys:
            tg.start_soon(one, rkey)
    return found


@dataclass
class _Settled:
    """An entry ready to publish: its record, and its journal to compact afterwards."""

    record: dict[str, Any]
    settled: list[ShardPlan]
    journal: PromotionJournal | None = None
    logs: list[ShardLog | None] | None = None

    async def finish(self, uri: str | None) -> None:
        """After the write: compact the journal if the record landed; drop the lease."""
        if self.journal is None:
            return
        try:
            if uri is not None:
                await self.journal.flush()
                await self.journal.publish(uri, self.settled, {
                    i: lg.etag for i, lg in enumerate(self.logs or []) if lg is not None})
        finally:
            await self.journal.release()


async def _settle_entry(
    job: _Job, local_schema: dict[str, Any], local_index: LocalIndex,
    client: AtmosphereClient,
    data_store: S3DataStore | None, compute_checksums: bool, limiter: anyio.CapacityLimiter,
    tracker: ProgressTracker, http: HttpShardReader,
    listed: dict[str, tuple[int, str]] | None = None, verify: bool = True,
    executor: DaskExecutor | None = None, source_store: S3DataStore | None = None,
    local_slots: anyio.CapacityLimiter | None = None,
    copies: anyio.CapacityLimiter | None = None,
    streams: anyio.CapacityLimiter | None = None,
) -> _Settled:
    """One entry's shards settled under the batch's limiter (resumed from its journal
    when copying), its schema found or published after them, its record validated."""
    plan = job.plan
    location = source_location(job.entry, local_index, source_store)
    owned = contextlib.AsyncExitStack()
    source = await resolve_source(job.entry, local_index, data_store, source_store, plan,
                                  location, verify, owned)
    plan = with_copy_modes(plan, source, data_store)
    journal: PromotionJournal | None = None
    resumes = [ShardResume()] * len(plan.shards)
    logs: list[ShardLog | None] = [None] * len(plan.shards)
    remote = None
    try:
        if data_store is not None and plan.copies:
            if executor is not None:
                remote = executor.bind(promotion=job.key, local_index=local_index,
                                       dest=data_store, source=source,
                                       compute_checksums=compute_checksums, verify=verify)
            journal = PromotionJournal(local_index, job.key)
            resumes = await _open_journal(journal, plan, job.entry, data_store)
            data_store = fenced(data_store, run_fence(journal, plan.shards))
            logs = [journal.shard(i, s, r) for i, (s, r) in
                    enumerate(zip(plan.shards, resumes, strict=True))]
            if remote is not None:  # groups that fit the batch's shared shard limit
                await remote.plan([(i, s, resumes[i]) for i, s in enumerate(plan.shards)
                                   if s.dest_key is not None and resumes[i].done is None],
                                  journal, limit=int(limiter.total_tokens))

        async def one(item: tuple[int, ShardPlan]) -> ShardPlan:
            i, shard = item
            seen = (listed or {}).get(shard.source_url)
            if seen is not None and shard.dest_key is None and seen[1] == shard.etag:
                # the listing proved it is still the version insert recorded: no HEAD
                if shard.size is None:
                    tracker.learn_size(seen[0])
                tracker.add_bytes(seen[0])
                return replace(shard, size=seen[0])
            if remote is not None and shard.dest_key is not None and resumes[i].done is None:
                return await settle_elsewhere(remote, i, shard, resumes[i], logs[i], tracker)
            async with local_slots if local_slots is not None else contextlib.nullcontext():
                return await _settle_shard(shard, source, http, data_store, compute_checksums,
                                           tracker, logs[i], resumes[i], verify)

        settled: list[ShardPlan] = []
        with single_error():
            async with anyio.create_task_group() as tg:
                flusher = anyio.CancelScope()
                if journal is not None:

                    async def flush_journal(journal: PromotionJournal = journal) -> None:
                        with flusher:
                            await journal.run_flusher()

                    tg.start_soon(flush_journal)
                try:
                    settled = await run_per_shard([s.source_url for s in plan.shards],
                                                  list(enumerate(plan.shards)), one, limiter,
                                                  tracker,
                                                  copy_kind_limiter(copies, resumes, streams))
                except ShardTransferError as exc:
                    raise_lost_cluster(exc)
                    raise
                if remote is not None:
                    await remote.sweep([s.dest_key for s in plan.shards if s.dest_key])
                flusher.cancel()
        schema_uri = await schema_registry(client).find_or_publish(client, local_schema)
        sizes = [s.size for s in settled]
        total = sum(x for x in sizes if x is not None) if None not in sizes else None
        record = validate_dataset(msgspec.structs.replace(
            plan.record, schema_ref=schema_uri, storage=_storage(settled, data_store, location),
            size=msgspec.structs.replace(plan.record.size or DatasetSize(), bytes=total)))
    except BaseException:
        if journal is not None:
            await journal.release()
        raise
    finally:
        await owned.aclose()
    return _Settled(to_json(record), settled, journal, logs)


async def _list_in_place(source: S3DataStore | None,
                         shards: list[ShardPlan]) -> dict[str, tuple[int, str]]:
    """url -> (size, ETag) of the shards that stay where they are, from one listing of
    their common prefix instead of a HEAD each (worth it from _LIST_SHARDS_ABOVE shards;
    a listing that would outgrow the batch stops early, the rest are HEADed)."""
    wanted = [s for s in shards if s.kind == "s3" and s.dest_key is None and s.sha256
              and s.etag and source is not None
              and parse_s3_url(s.source_url).bucket == source.bucket]
    if source is None or len(wanted) <= _LIST_SHARDS_ABOVE:
        return {}
    keys = [parse_s3_url(s.source_url).key for s in wanted]
    listing = await source.list_objects(dest_prefix(keys), limit=4 * len(keys) + 1000)
    return {source.url(k): listing[k] for k in keys if k in listing}


# -- writing: chunks under both limits, paced by the PDS's write budget -------------------


def writes_allowed(limit: RateLimit | None, now: float) -> int | None:
    """How many creates the last ratelimit-* headers allow before their reset (None:
    no limit known, or it has reset since)."""
    if limit is None or limit.reset_at <= now:
        return None
    return max(0, limit.remaining) // CREATE_POINTS


def _write_op(rkey: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"$type": _CREATE, "collection": DATASET_COLLECTION, "rkey": rkey, "value": record}


async def _wait(seconds: float) -> None:
    """Sleep for the rate limiter (a seam the tests replace)."""
    await anyio.sleep(seconds)


class _Writer:
    """Collects settled records; sends them in applyWrites chunks as they fill."""

    def __init__(self, client: AtmosphereClient, max_wait: float,
                 max_bytes: int = MAX_WRITE_BYTES) -> None:
        self.client = client
        self.max_wait = max_wait
        self.max_bytes = max_bytes
        self.pending: list[tuple[_Job, dict[str, Any], int]] = []
        self.pending_bytes = 0
        self.calls = 0
        self.waited = 0.0

    async def add(self, job: _Job, record: dict[str, Any]
                  ) -> list[tuple[_Job, str | BaseException]]:
        op = _write_op(job.rkey, record)
        size = len(json.dumps(op, separators=(",", ":")).encode()) + 1
        results: list[tuple[_Job, str | BaseException]] = []
        if self.pending and (len(self.pending) >= MAX_WRITES_PER_CALL
                             or self.pending_bytes + size > self.max_bytes):
            results = await self.flush()
        self.pending.append((job, op, size))
        self.pending_bytes += size
        if len(self.pending) >= MAX_WRITES_PER_CALL:
            results += await self.flush()
        return results

    async def flush(self) -> list[tuple[_Job, str | BaseException]]:
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        results: list[tuple[_Job, str | BaseException]] = []
        while batch:
            allowed = await self._budget(len(batch))
            if isinstance(allowed, BaseException):
                results += [(job, allowed) for job, _, _ in batch]
                break
            chunk, batch = batch[:allowed], batch[allowed:]
            results += await self._send(chunk)
        return results

    async def _budget(self, wanted: int) -> int | BaseException:
        """How many writes to send now, after waiting for the budget's reset if none."""
        while True:
            now = time.time()
            limit = self.client.rate_limits.get(APPLY_WRITES)
            allowed = writes_allowed(limit, now)
            if allowed is None or allowed >= wanted:
                return wanted
            if allowed > 0:
                return allowed
            assert limit is not None
            wait = limit.reset_at - now + 1.0
            if wait > self.max_wait:
                return RateLimitedError(APPLY_WRITES, 429, "RateLimitExceeded",
                                        f"the write budget resets in {wait:.0f}s, more than "
                                        f"max_rate_limit_wait={self.max_wait:.0f}s",
                                        reset_at=limit.reset_at)
            log.info("write budget spent (%d left of %d); waiting %.0fs for its reset",
                     limit.remaining, limit.limit, wait)
            self.waited += wait
            await _wait(wait)
            # forget the spent budget: the next answer brings fresh headers
            self.client.rate_limits.pop(APPLY_WRITES, None)

    async def _send(self, chunk: list[tuple[_Job, dict[str, Any], int]]
                    ) -> list[tuple[_Job, str | BaseException]]:
        """One applyWrites call (atomic). A lost answer is checked at the first key; a
        429 waits for its reset; a permanent error falls back to one write per record
        so that only the bad one fails."""
        writes = [op for _, op, _ in chunk]
        attempt = 0
        while True:
            try:
                self.calls += 1
                known = self.client.rate_limits.get(APPLY_WRITES)
                body = await self.client.procedure(
                    APPLY_WRITES, {"repo": self.client.did, "writes": writes})
                if known is not None and self.client.rate_limits.get(APPLY_WRITES) is known:
                    # no fresh headers came back: count what this call spent ourselves
                    self.client.rate_limits[APPLY_WRITES] = replace(
                        known, remaining=known.remaining - CREATE_POINTS * len(writes))
                results = body.get("results") or []
                uris = [r.get("uri") for r in results] + [None] * len(chunk)
                return [(job, str(uris[i] or _uri(self.client, job.rkey)))
                        for i, (job, _, _) in enumerate(chunk)]
            except RateLimitedError as exc:
                wait = (exc.reset_at or time.time() + 1) - time.time() + 1.0
                if wait > self.max_wait:
                    return [(job, exc) for job, _, _ in chunk]
                log.info("applyWrites rate limited; waiting %.0fs", wait)
                self.waited += wait
                await _wait(max(0.0, wait))
            except XrpcError as exc:
                transient = exc.status is None or exc.status >= 500
                if transient and await self._landed(chunk[0][0].rkey):
                    return [(job, _uri(self.client, job.rkey)) for job, _, _ in chunk]
                if transient and attempt < self.client.max_retries:
                    attempt += 1
                    await backoff(log, APPLY_WRITES, attempt, self.client.backoff_base,
                                  f"{exc.status} {exc.error}")
                    continue
                if len(chunk) == 1:
                    return [(chunk[0][0], exc)]
                out: list[tuple[_Job, str | BaseException]] = []
                for one in chunk:  # find the write the PDS refuses; the rest go through
                    out += await self._send([one])
                return out

    async def _landed(self, rkey: str) -> bool:
        """Did an applyWrites whose answer was lost go through? (It is atomic: its first
        record tells for all.)"""
        try:
            await self.client.get_record(DATASET_COLLECTION, rkey)
        except XrpcError:
            return False
        return True


def _uri(client: AtmosphereClient, rkey: str) -> str:
    return f"at://{client.did}/{DATASET_COLLECTION}/{rkey}"
