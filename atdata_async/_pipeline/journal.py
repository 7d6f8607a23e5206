"""The promotion journal: a promotion's plan and each shard's progress, kept in the local
index's Redis so that a rerun (after a failure, a kill, or on another machine) resumes.

| key                              | type   | content                                   |
| atdata_async:journals            | set    | promotion keys that have a journal        |
| atdata_async:journal:{pkey}      | hash   | plan, status, and per-shard state below   |
| atdata_async:journal:{pkey}:lease| string | host:pid:token of the run holding it (TTL)|
| atdata_async:epoch:{pkey}        | string | the epoch of the run holding it (fencing)  |
| atdata_async:epochs              | string | the counter epochs are drawn from          |
| atdata_async:epoch:{pkey}:inflight | string | set (TTL) while a worker's fenced request may run |

Hash fields: ``plan`` (JSON: destination and every shard's source, key, size, checksums),
``status`` (running | published), ``s:{i}`` shard i copied and verified (fp, etag,
sha256, size), ``u:{i}`` its open multipart upload (fp, id, part size), ``p:{i}:{n}``
the ETag of a finished part. Each state carries the fingerprint (``fp``) of the shard
plan it belongs to: a state for another plan is ignored. Publishing compacts the hash
to plan + status + uri + ``done`` (one field). Never a secret: no credentials, no tokens.

The plan is written before any copy starts; progress is written behind (batched into one
pipeline every few milliseconds), so a kill loses at most the last batch: a part or a
shard whose state was lost is found by listing the destination, or sent again.

Design for fan-out (issue 13): the plan is data, separate from its execution; each
shard's copy is one idempotent unit (a deterministic destination key, its resume state
in ``ShardResume``) that reports through a ``ShardLog``, which any process reaching this
Redis could write.

Fencing: taking the lease draws a new epoch (a global counter, never reused), and every
write to the journal, the final compaction, and each abort or completion of a multipart
upload (by a worker or a local run, fence.py) first checks that the journal's epoch is
still the writer's (journal writes atomically, in one Lua script). An upload action is
also sent only if it ends before the lease could (``check_fence``: epoch and the lease's
remaining time in one call). A run left over from a dead, stalled or earlier one is
refused and stops without touching the upload the rerun continues.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import LocalIndexError, PromotionBusyError

if TYPE_CHECKING:
    from .._backends.redis_index import LocalIndex
    from .promote import ShardPlan

log = logging.getLogger("atdata_async.journal")
JOURNALS = "atdata_async:journals"
EPOCHS = "atdata_async:epochs"
EPOCH_PREFIX = "atdata_async:epoch:"
JOURNAL_PREFIX = "atdata_async:journal:"
LEASE_SECONDS = 30
LEASE_REFRESH = 10.0
BATCH_DELAY = 0.02  # seconds a write waits for company before its pipeline goes out


def journal_key(promotion: str) -> str:
    return JOURNAL_PREFIX + promotion


def epoch_key(promotion: str) -> str:
    return EPOCH_PREFIX + promotion  # outside the journal's prefix: scans of it see hashes


# KEYS: lease, epoch, counter, in-flight marker; ARGV: holder, ttl, expected holder
# ('' = none). {new epoch (0 when the lease is not, or no longer, the expected one), ms
# a worker's fenced request admitted under the old epoch may still run}.
_TAKE_LEASE = """
local cur = redis.call('GET', KEYS[1])
if (ARGV[3] == '' and not cur) or cur == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  local e = redis.call('INCR', KEYS[3])
  redis.call('SET', KEYS[2], e)
  return {e, redis.call('PTTL', KEYS[4])}
end
return {0, 0}
"""
# KEYS: lease, epoch; ARGV: holder, ttl, epoch. 1 if still ours (lease renewed).
_KEEP_LEASE = """
local cur = redis.call('GET', KEYS[1])
if redis.call('GET', KEYS[2]) ~= ARGV[3] or (cur and cur ~= ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""
# KEYS: lease, epoch; ARGV: holder, epoch. Drops the lease only if it is ours.
_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return 1
"""
# KEYS: hash, epoch; ARGV: epoch, then (op, field, value) triples, op 's' set, 'd' delete.
_FENCED_WRITE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 3 do
  if ARGV[i] == 'd' then redis.call('HDEL', KEYS[1], ARGV[i + 1])
  else redis.call('HSET', KEYS[1], ARGV[i + 1], ARGV[i + 2]) end
end
return 1
"""
# KEYS: hash, epoch; ARGV: epoch, uri, done. Compacts to plan + status + uri + done.
_FENCED_PUBLISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= 'plan' and f ~= 'status' then redis.call('HDEL', KEYS[1], f) end
end
redis.call('HSET', KEYS[1], 'status', 'published', 'uri', ARGV[2], 'done', ARGV[3])
return 1
"""


# KEYS: epoch, lease, hash, in-flight marker; ARGV: epoch, holder ('' = a worker, not
# the lease's holder), ttl ms, field naming shard i's upload ('' = none), upload id, ms
# the request may run. {ours, pttl, named}: the epoch is still ARGV[1] (and, for the
# holder, the lease is not another's: an epoch drawn again after Redis lost its data);
# the lease's remaining ms (renewed first when the caller holds it; <= 0: expired or
# released); the
# journal's field names that upload. A worker's check marks its request as possibly in
# flight for ARGV[6] ms: a rerun taking over from a dead coordinator waits that out.
_FENCE_CHECK = """
local ours = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then ours = 1 end
if ours == 1 and ARGV[2] ~= '' then
  local cur = redis.call('GET', KEYS[2])
  if cur == ARGV[2] then redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
  elseif cur then ours = 0 end
end
if ours == 1 and ARGV[2] == '' and tonumber(ARGV[6]) > 0 then
  redis.call('SET', KEYS[4], '1', 'PX', tonumber(ARGV[6]))
end
local named = 0
if ARGV[4] ~= '' then
  local u = redis.call('HGET', KEYS[3], ARGV[4])
  if u and cjson.decode(u)['id'] == ARGV[5] then named = 1 end
end
return {ours, redis.call('PTTL', KEYS[2]), named}
"""
# KEYS: hash, lease, epoch, journals set; ARGV: epoch, promotion. Drops the journal
# unless another run's epoch holds it (a stale run never drops a rerun's journal; one
# dropped already, by another process that found the work done, is no refusal).
_FENCED_FORGET = """
local e = redis.call('GET', KEYS[3])
if e and e ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class FenceState:
    """One fence check's answer (see ``check_fence``)."""

    ours: bool  # the journal's epoch is still the caller's
    lease_ms: int  # the lease's remaining time (<= 0: expired or released)
    named: bool  # the journal names the upload asked about (a rerun may continue it)


def inflight_key(promotion: str) -> str:
    """Set while a worker's fenced request admitted under the current epoch may run."""
    return epoch_key(promotion) + ":inflight"


async def check_fence(index: LocalIndex, promotion: str, epoch: int, *, holder: str = "",
                      upload_field: str = "", upload_id: str = "",
                      runs_for: float = 0.0) -> FenceState:
    """Epoch, lease time left and whether the journal names an upload: one Lua call.
    ``holder`` (the lease's holder string, for the run holding it) renews the lease too;
    without it (a worker), ``runs_for`` seconds are marked as possibly in flight."""
    key = journal_key(promotion)
    with index._errors("check the promotion's epoch"):
        script = index.redis.register_script(_FENCE_CHECK)
        ours, pttl, named = await script(
            keys=[epoch_key(promotion), key + ":lease", key, inflight_key(promotion)],
            args=[str(epoch), holder, LEASE_SECONDS * 1000, upload_field, upload_id,
                  int(runs_for * 1000)])
    return FenceState(bool(ours), int(pttl), bool(named))


def run_name(promotion: str) -> str:
    """What a journal key names, for messages: an insert's or a promotion's run."""
    if promotion.startswith("insert-"):
        return f"insert {promotion[len('insert-'):][:12]}"
    return f"promotion {promotion[:12]}"


async def holds_epoch(index: LocalIndex, promotion: str, epoch: int) -> bool:
    """Whether ``epoch`` is still the journal's (no newer run took the promotion over)."""
    with index._errors("check the promotion's epoch"):
        got = await index.redis.get(epoch_key(promotion))
    return got is not None and got.decode() == str(epoch)


def stale_run(promotion: str, epoch: int, what: str, why: str = "") -> PromotionBusyError:
    """The fencing error: names the run (an insert's or a promotion's) and the action."""
    name = run_name(promotion)
    kind = name.partition(" ")[0]
    why = why or (f"a newer run took the {kind} over, or its journal was dropped")
    return PromotionBusyError(
        f"{name}: {what} refused: this run (epoch {epoch}) is no longer the {kind}'s "
        f"({why}); it stops without touching the uploads")


def fingerprint(shard: ShardPlan) -> str:
    """What a shard's saved state is true of: its source, key, size and checksums."""
    text = "|".join(str(x) for x in (shard.source_url, shard.dest_key, shard.size,
                                     shard.sha256, shard.etag))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_document(shards: Sequence[ShardPlan], *, entry_cid: str, name: str,
                  bucket: str, endpoint: str | None) -> dict[str, Any]:
    """The plan as data (JSON-ready): enough to run or check every shard copy elsewhere."""
    return {"v": 1, "entry": entry_cid, "name": name, "bucket": bucket, "endpoint": endpoint,
            "shards": [[s.source_url, s.dest_key, s.size, s.sha256, s.etag] for s in shards]}


def dest_prefix(keys: Sequence[str]) -> str:
    """The narrowest listing prefix that covers every destination key."""
    dirs = {posixpath.dirname(k) for k in keys}
    if len(dirs) == 1:
        only = dirs.pop()
        return f"{only}/" if only else ""
    return os.path.commonprefix(list(keys))  # noqa: RUF071  (an S3 prefix, by character)


# -- what a journal holds ---------------------------------------------------------------


@dataclass
class OpenUpload:
    """A multipart upload a run started and may be continued."""

    upload_id: str
    part_size: int
    parts: dict[int, str] = field(default_factory=dict)  # part number -> ETag


@dataclass
class ShardState:
    """One shard's saved progress (only states whose fingerprint matches the plan)."""

    copied: tuple[str, str | None, int] | None = None  # (dest ETag, sha256, size), verified
    upload: OpenUpload | None = None


@dataclass(frozen=True)
class ShardResume:
    """What a shard's copy starts from: done already, an upload to continue, or nothing."""

    done: tuple[str | None, int] | None = None  # (sha256, size) of a verified copy in place
    upload: OpenUpload | None = None


def decide_resume(
    shards: Sequence[ShardPlan], states: Sequence[ShardState],
    listing: Mapping[str, tuple[int, str]] | None,
    uploads: Sequence[tuple[str, str]],
) -> tuple[list[ShardResume], list[tuple[str, str]]]:
    """Pure: each shard's starting point, and the open uploads to abort.

    A shard is done when the listing shows its key with the size and ETag its journal
    recorded after verifying it, or (no journal state) the ETag and size that insert
    recorded, with a sha256 (a server-side copy of the very version that was hashed).
    An upload is continued when the journal knows it and it is still open; every other
    open upload under the plan's keys belongs to a dead run and is aborted.
    """
    open_uploads = set(uploads)
    resumes: list[ShardResume] = []
    keep: set[tuple[str, str]] = set()
    for shard, state in zip(shards, states, strict=True):
        key = shard.dest_key
        seen = listing.get(key) if listing is not None and key is not None else None
        if seen is not None and state.copied and state.copied[0] \
                and seen == (state.copied[2], state.copied[0]):
            resumes.append(ShardResume(done=(state.copied[1], state.copied[2])))
            continue
        if seen is not None and shard.etag and shard.sha256 and shard.size is not None \
                and seen == (shard.size, shard.etag):
            resumes.append(ShardResume(done=(shard.sha256, shard.size)))
            continue
        upload = state.upload
        if upload is not None and (key, upload.upload_id) in open_uploads:
            keep.add((key, upload.upload_id))  # type: ignore[arg-type]
            resumes.append(ShardResume(upload=upload))
        else:
            resumes.append(ShardResume())
    ours = {s.dest_key for s in shards}
    aborts = [u for u in uploads if u[0] in ours and u not in keep]
    return resumes, aborts


def parse_states(raw: Mapping[str, str], shards: Sequence[ShardPlan]) -> list[ShardState]:
    """The hash's per-shard fields, kept only where their fingerprint matches ``shards``."""
    fps = [fingerprint(s) for s in shards]
    states = [ShardState() for _ in shards]
    done = raw.get("done")
    if done is not None:
        for i, item in enumerate(json.loads(done)[:len(shards)]):
            if item and item[0] == fps[i]:
                states[i].copied = (item[1], item[2], item[3])
    parts: dict[int, dict[int, str]] = {}
    for name, value in raw.items():
        kind, _, rest = name.partition(":")
        if kind == "p":
            i, _, n = rest.partition(":")
            parts.setdefault(int(i), {})[int(n)] = value
            continue
        if kind not in ("s", "u") or not rest.isdigit() or int(rest) >= len(shards):
            continue
        i, doc = int(rest), json.loads(value)
        if doc.get("fp") != fps[i]:
            continue
        if kind == "s":
            states[i].copied = (doc["etag"], doc.get("sha256"), int(doc["size"]))
        else:
            states[i].upload = OpenUpload(doc["id"], int(doc["ps"]))
    for i, got in parts.items():
        if i < len(states) and states[i].upload is not None:
            states[i].upload.parts = got  # type: ignore[union-attr]
    return states


# -- the journal -------------------------------------------------------------------------


class PromotionJournal:
    """One promotion's journal: open it (takes the lease), note progress, publish."""

    def __init__(self, index: LocalIndex, promotion: str, epoch: int | None = None) -> None:
        self.index = index
        self.promotion = promotion
        self.key = journal_key(promotion)
        self.lease_key = self.key + ":lease"
        self.epoch_key = epoch_key(promotion)
        self.epoch = epoch  # set by open() (the lease's), or a worker's task's
        self._lease = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._pending: list[tuple[str, str | None]] = []  # (field, value or None = delete)
        self._wake = anyio.Event()
        self.writes = 0  # pipelines sent (for benchmarks)
        self.existed = False
        self.was_running = False
        self.waited = 0.0  # seconds the lease's taking waited for a dead run's requests

    async def open(self, plan_doc: dict[str, Any],
                   shards: Sequence[ShardPlan]) -> list[ShardState]:
        """Take the lease, load what an earlier run saved, and write this run's plan."""
        await self._take_lease()
        with self.index._errors("open promotion journal"):
            raw = {k.decode(): v.decode()
                   for k, v in (await self.index.redis.hgetall(self.key)).items()}
        self.existed = bool(raw)
        self.was_running = raw.get("status") == "running"
        states = parse_states(raw, shards)
        stale = [f for f in raw if f.startswith(("s:", "u:", "p:"))
                 and not _still_used(f, states)]
        with self.index._errors("write promotion journal"):
            async with self.index.redis.pipeline(transaction=True) as pipe:
                if stale:
                    pipe.hdel(self.key, *stale)
                pipe.hset(self.key, mapping={"plan": json.dumps(plan_doc), "status": "running"})
                pipe.sadd(JOURNALS, self.promotion)
                await pipe.execute()
        return states

    async def _take_lease(self) -> None:
        """Take the lease (from nobody, or from a dead process on this host) and draw a
        new epoch, atomically: a second taker racing us finds the lease changed."""
        redis = self.index.redis
        take = redis.register_script(_TAKE_LEASE)
        keys = [self.lease_key, self.epoch_key, EPOCHS, inflight_key(self.promotion)]
        expected = ""
        with self.index._errors("take the promotion lease"):
            for _ in range(5):
                epoch, inflight = await take(keys=keys,
                                             args=[self._lease, LEASE_SECONDS, expected])
                if int(epoch):
                    self.epoch = int(epoch)
                    break
                holder = await redis.get(self.lease_key)
                if holder is not None and _holder_alive(holder.decode()):
                    kind = run_name(self.promotion).partition(" ")[0]
                    raise PromotionBusyError(
                        f"this {kind} is already running ({_describe(holder.decode())}); "
                        "wait for it, or rerun when it has stopped")
                expected = holder.decode() if holder is not None else ""
            else:
                kind = run_name(self.promotion).partition(" ")[0]
                raise PromotionBusyError(f"this {kind}'s lease keeps changing hands; rerun later")
        if expected and int(inflight) > 0:  # (expired with the lease otherwise)
            # taken from a dead coordinator before its lease ended: its workers may still
            # be completing or aborting an upload they were admitted to (fence.py); wait
            # until none can be, so that what this run lists is what they left
            self.waited = int(inflight) / 1000
            log.info("waiting %.1fs for the dead run's admitted upload requests to end",
                     self.waited)
            await anyio.sleep(self.waited + 0.005)  # past Redis's own expiry of the marker

    def note(self, field_name: str, value: str | None) -> None:
        """Queue a write (None deletes the field); the flusher sends it shortly."""
        self._pending.append((field_name, value))
        self._wake.set()

    def shard(self, i: int, plan: ShardPlan, resume: ShardResume) -> ShardLog:
        return ShardLog(self, i, fingerprint(plan), resume.upload)

    async def flush(self) -> None:
        """Send everything queued in one script (shielded: it runs after a failure too),
        applied only while the journal's epoch is this run's: a stale run's batch is
        dropped and PromotionBusyError raised."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        args: list[Any] = [str(self.epoch)]
        for f, v in batch:  # in order: a field set then deleted ends deleted
            args += ["d", f, ""] if v is None else ["s", f, v]
        with anyio.CancelScope(shield=True), self.index._errors("write promotion journal"):
            script = self.index.redis.register_script(_FENCED_WRITE)
            applied = await script(keys=[self.key, self.epoch_key], args=args)
        self.writes += 1
        if not applied:
            raise stale_run(self.promotion, self.epoch or 0, "a journal write")

    async def run_flusher(self, lease: bool = True) -> None:
        """Flush batches as they fill and keep the lease alive (``lease=False``: a worker
        writing for the coordinator, which holds it); runs until cancelled."""
        while True:
            with anyio.move_on_after(LEASE_REFRESH):
                await self._wake.wait()
            self._wake = anyio.Event()
            await anyio.sleep(BATCH_DELAY)
            await self.flush()
            if not lease:
                continue
            with self.index._errors("refresh the promotion lease"):
                keep = self.index.redis.register_script(_KEEP_LEASE)
                kept = await keep(keys=[self.lease_key, self.epoch_key],
                                  args=[self._lease, LEASE_SECONDS, str(self.epoch)])
            if not kept:
                raise stale_run(self.promotion, self.epoch or 0, "renewing the lease")

    async def publish(self, uri: str, settled: Sequence[ShardPlan],
                      etags: Mapping[int, str]) -> None:
        """The record is written: compact the journal to one ``done`` field."""
        done = [[fingerprint(s), etags.get(i, ""), s.sha256, s.size]
                for i, s in enumerate(settled)]
        with self.index._errors("compact promotion journal"):
            script = self.index.redis.register_script(_FENCED_PUBLISH)
            applied = await script(keys=[self.key, self.epoch_key],
                                   args=[str(self.epoch), uri, json.dumps(done)])
        if not applied:
            raise stale_run(self.promotion, self.epoch or 0, "compacting the journal")

    async def forget(self) -> None:
        """Drop the journal, its lease and epoch, unless a newer run owns them (then
        PromotionBusyError): what a finished insert does instead of ``forget_journal``."""
        with self.index._errors("drop promotion journal"):
            script = self.index.redis.register_script(_FENCED_FORGET)
            applied = await script(keys=[self.key, self.lease_key, self.epoch_key, JOURNALS],
                                   args=[str(self.epoch), self.promotion])
        if not applied:
            raise stale_run(self.promotion, self.epoch or 0, "dropping the journal")

    @property
    def holder(self) -> str:
        """This run's lease holder string (host:pid:token; no secret)."""
        return self._lease

    async def release(self) -> None:
        """Flush and drop the lease (shielded). A failure is logged, never raised: it
        would hide the promotion's outcome, and a rerun copes with a stale journal."""
        kind = run_name(self.promotion).partition(" ")[0]
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            except (LocalIndexError, PromotionBusyError) as exc:
                log.warning("could not close the %s journal: %s", kind, exc)
            try:
                with self.index._errors("release the promotion lease"):
                    drop = self.index.redis.register_script(_DROP_LEASE)
                    await drop(keys=[self.lease_key, self.epoch_key],
                               args=[self._lease, str(self.epoch)])
            except LocalIndexError as exc:
                log.warning("could not release the %s lease: %s", kind, exc)


class ShardLog:
    """Shard i's reporter: what the store tells of its multipart upload, and the copy's
    verified outcome. Also carries the upload to continue (``upload_id``, ``parts``)."""

    def __init__(self, journal: PromotionJournal, i: int, fp: str,
                 upload: OpenUpload | None) -> None:
        self.journal, self.i, self.fp = journal, i, fp
        self.upload_id = upload.upload_id if upload else None
        self.part_size = upload.part_size if upload else None
        self.parts: dict[int, str] = dict(upload.parts) if upload else {}
        self.etag = ""

    def opened(self, upload_id: str, part_size: int) -> None:
        self.journal.note(f"u:{self.i}", json.dumps({"fp": self.fp, "id": upload_id,
                                                     "ps": part_size}))

    def part(self, number: int, etag: str) -> None:
        self.parts[number] = etag
        self.journal.note(f"p:{self.i}:{number}", etag)

    def closed(self) -> None:
        """Completed or aborted: the upload and its parts are no longer state."""
        self.journal.note(f"u:{self.i}", None)
        for n in self.parts:
            self.journal.note(f"p:{self.i}:{n}", None)
        self.upload_id, self.parts = None, {}

    def copied(self, etag: str, sha256: str | None, size: int) -> None:
        self.etag = etag
        self.journal.note(f"s:{self.i}", json.dumps({"fp": self.fp, "etag": etag,
                                                     "sha256": sha256, "size": size}))


def _still_used(name: str, states: Sequence[ShardState]) -> bool:
    kind, _, rest = name.partition(":")
    i = int(rest.partition(":")[0]) if rest.partition(":")[0].isdigit() else -1
    if not 0 <= i < len(states):
        return False
    if kind == "s":
        return states[i].copied is not None
    return states[i].upload is not None


def _holder_alive(holder: str) -> bool:
    """Whether the run holding a lease still lives: a dead process on this host does not
    (its lease would otherwise block a rerun until it expires)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: str) -> str:
    host, _, rest = holder.partition(":")
    return f"process {rest.partition(':')[0]} on {host}"


async def load_journals(index: LocalIndex) -> dict[str, dict[str, str]]:
    """Every journal's hash (promotion key -> fields), for cleanup."""
    with index._errors("list promotion journals"):
        keys = sorted(k.decode() for k in await index.redis.smembers(JOURNALS))
        async with index.redis.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hgetall(journal_key(k))
                pipe.get(journal_key(k) + ":lease")
            got = await pipe.execute() if keys else []
    out: dict[str, dict[str, str]] = {}
    for n, k in enumerate(keys):
        raw, lease = got[2 * n], got[2 * n + 1]
        fields = {a.decode(): b.decode() for a, b in raw.items()}
        if lease is not None and _holder_alive(lease.decode()):
            fields["_lease"] = lease.decode()
        out[k] = fields
    return out


async def forget_journal(index: LocalIndex, promotion: str) -> None:
    with index._errors("drop promotion journal"):
        async with index.redis.pipeline(transaction=True) as pipe:
            pipe.delete(journal_key(promotion), journal_key(promotion) + ":lease",
                        epoch_key(promotion), inflight_key(promotion))
            pipe.srem(JOURNALS, promotion)
            await pipe.execute()
