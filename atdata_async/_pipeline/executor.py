"""Where a promotion's shard copies run: in the coordinator's own task group (the
default), or fanned out to a Dask cluster with ``DaskExecutor``.

    coordinator: plan -> journal (plan, lease) -> group the shards to copy -> submit
                 one ShardGroup per group -> results -> sweep stray uploads -> schema
                 + dataset record (PDS)
    worker:      ShardGroup -> its shards' journal state and the epoch (one Redis round
                 trip) -> each shard: copy/continue -> verify -> outcome noted in the
                 journal (batched) -> per shard (settled plan, ETag) or its failure

A ShardTask is data that holds no secret: the plan of one shard, its deterministic
destination key, the stores' bucket/endpoint/settings, and the *name* of where the
worker finds credentials (``CredentialSource``: an env-var prefix or a file path,
resolved on the worker). The scheduler stores and logs tasks; it never sees a key.

Fencing: each ShardTask carries the epoch the coordinator's lease drew. The worker
checks it in the journal before a group starts (with the group's journal state), again
before a shard that waited for a slot starts, with every journal write (atomically), and
before it aborts or completes a multipart upload: a task left over from a dead or
earlier run (still queued, or still copying when a rerun took over) is refused and stops
without touching the upload the rerun continues.

A worker killed mid-copy: the scheduler gives its task to another worker, which reads
the shard's state from the journal the dead one wrote (finished parts are kept when
ListParts confirms them). Uploads whose id never reached the journal are aborted by the
coordinator's sweep once every shard has settled. A lost scheduler is an ExecutorError;
the journal stays, and a rerun (local or on a new cluster) resumes from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import secrets
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from .._backends.s3_store import S3DataStore
from .._errors import (
    AtdataError,
    ConfigurationError,
    ExecutorError,
    PromotionBusyError,
    StorageError,
)
from .._model.groups import PREFETCH, group_size, plan_groups, shards_in_flight
from .._model.progress import ProgressTracker
from .fence import ACTION_TIMEOUT, MARGIN, Fence, FencedStore, current_fence
from .journal import (
    OpenUpload,
    PromotionJournal,
    ShardResume,
    epoch_key,
    fingerprint,
    holds_epoch,
    journal_key,
    parse_states,
    run_name,
    stale_run,
)

if TYPE_CHECKING:
    from .._backends.redis_index import LocalIndex
    from .promote import ShardPlan

log = logging.getLogger("atdata_async.executor")

_STORE_SETTINGS = ("part_size", "multipart_threshold", "max_concurrency", "min_part_size",
                   "max_attempts", "copy_multipart_threshold", "copy_part_size",
                   "max_server_copies", "max_streamed_copies")


# -- what a task may carry: names of secrets, never secrets ------------------------------


@dataclass(frozen=True)
class CredentialSource:
    """Where a worker finds S3 credentials, resolved on the worker: environment variables
    ``{env_prefix}AWS_ACCESS_KEY_ID`` / ``..._SECRET_ACCESS_KEY`` (default: the plain
    ones), or with ``path`` a ``.env`` file on the worker's disk."""

    env_prefix: str = ""
    path: str | None = None

    def load(self) -> dict[str, str]:
        if self.path is not None:
            from .._backends.s3_store import _read_env_file

            values = _read_env_file(Path(self.path))
            where = f"credentials file {self.path}"
        else:
            values = {k: os.environ.get(self.env_prefix + k, "")
                      for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
            where = f"environment variables {self.env_prefix}AWS_*"
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not values.get(k)]
        if missing:
            raise ConfigurationError(f"worker {os.uname().nodename}: {where} lack "
                                     f"{', '.join(missing)}")
        return {k: values[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


@dataclass(frozen=True)
class StoreSpec:
    """A store as a worker rebuilds it: bucket, endpoint, settings, credential source."""

    bucket: str
    endpoint: str | None
    region: str | None
    credentials: CredentialSource
    settings: tuple[tuple[str, int | bool | str], ...] = ()

    @classmethod
    def of(cls, store: S3DataStore, credentials: CredentialSource) -> StoreSpec:
        settings = tuple((k, int(getattr(store, k))) for k in _STORE_SETTINGS)
        if store.signed_payload is not None:  # forced: so are the workers' stores
            settings += (("signed_payload", store.signed_payload),)
        # where requests go (a server that answers only virtual-hosted ones) and how
        # they are made: as the caller's store does, not the defaults
        if store.addressing_style != "path":
            settings += (("addressing_style", store.addressing_style),)
        if not store.light_requests:
            settings += (("light_requests", False),)
        return cls(store.bucket, store.endpoint, store.region, credentials, settings)

    def open(self) -> S3DataStore:
        values = self.credentials.load()
        if self.endpoint:
            values["AWS_ENDPOINT"] = self.endpoint
        if self.region:
            values["AWS_REGION"] = self.region
        return FencedStore(values, bucket=self.bucket, **dict(self.settings))


@dataclass(frozen=True)
class RedisSpec:
    """How a worker reaches the local index's Redis: a URL without a password, or the
    name of an environment variable holding the URL on the worker."""

    url: str | None = None
    env: str | None = None

    def resolve(self) -> str:
        if self.url is not None:
            return self.url
        assert self.env is not None
        url = os.environ.get(self.env)
        if not url:
            raise ConfigurationError(f"worker {os.uname().nodename}: environment variable "
                                     f"{self.env} (the local index's Redis URL) is not set")
        return url


def redis_spec(index: LocalIndex, env: str | None) -> RedisSpec:
    """The index's Redis for workers; a URL with a password must come from ``env``."""
    if env is not None:
        return RedisSpec(env=env)
    url = index._url
    if url is None:
        kw = index.redis.connection_pool.connection_kwargs
        if kw.get("password") or "host" not in kw:
            url = ""
        else:
            url = f"redis://{kw['host']}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
    parts = urlsplit(url)
    if not url or parts.password or parts.username:
        raise ConfigurationError(
            "the local index's Redis URL carries a password (or cannot be rebuilt); name "
            "an environment variable that holds it on the workers: DaskExecutor(..., "
            "redis_url_env='ATDATA_REDIS_URL')")
    return RedisSpec(url=url)


@dataclass(frozen=True)
class ShardTask:
    """One shard's copy, self-contained: everything a worker needs, no secret."""

    promotion: str
    index: int
    shard: ShardPlan
    dest: StoreSpec
    source: StoreSpec | None
    redis: RedisSpec
    compute_checksums: bool
    verify: bool = True
    upload: OpenUpload | None = None  # what the coordinator's listing said to continue
    epoch: int | None = None  # the coordinator's lease's: the task's fencing token


# -- the worker side ---------------------------------------------------------------------


@dataclass
class _WorkerState:
    stores: dict[StoreSpec, S3DataStore] = field(default_factory=dict)
    indexes: dict[str, LocalIndex] = field(default_factory=dict)
    # (promotion, epoch) -> [the worker's shard slots for it, groups using them]
    slots: dict[tuple[str, int | None], list[Any]] = field(default_factory=dict)
    # a run (ShardGroup.run) -> the cancel scopes of its groups running here
    running: dict[str, set[anyio.CancelScope]] = field(default_factory=dict)
    # runs their coordinator stopped (failed or cancelled) -> when: a group of one that
    # starts afterwards (already on its way when it was released) ends at once
    stopped: dict[str, float] = field(default_factory=dict)


_per_loop: weakref.WeakKeyDictionary[Any, _WorkerState] = weakref.WeakKeyDictionary()


def _state() -> _WorkerState:
    """Stores and Redis clients kept for the worker's event loop: one S3 client pool
    and one Redis connection pool per worker, not one per task."""
    loop = asyncio.get_running_loop()
    got = _per_loop.get(loop)
    if got is None:
        got = _per_loop[loop] = _WorkerState()
    return got


def _store(spec: StoreSpec) -> S3DataStore:
    state = _state()
    store = state.stores.get(spec)
    if store is None:
        store = state.stores[spec] = spec.open()
    return store


def _index(url: str) -> LocalIndex:
    from .._backends.redis_index import LocalIndex

    state = _state()
    index = state.indexes.get(url)
    if index is None:
        index = state.indexes[url] = LocalIndex(url)
    return index


@dataclass(frozen=True)
class ShardGroup:
    """Several shards of one promotion as one task (a trip through the scheduler costs
    the same whatever a task carries); each shard stays its own unit. ``concurrency``:
    the shards a worker copies at once when it cannot tell its own slots."""

    tasks: tuple[ShardTask, ...]
    concurrency: int = 8
    tune_malloc: bool = True  # see _tune_malloc
    quiet: bool = True  # see _quiet_enter
    run: str = ""  # the coordinator's run (ShardRunner.run_id): what _stop_run stops
    fail_fast: bool = False  # no retry left: a shard's failure fails the promotion, so
    # it cancels the group's other shards at once (as a local run's first failure does)


JournaledState = tuple[tuple[str, str | None, int] | None, OpenUpload | None]


async def _journaled_states(index: LocalIndex,
                            tasks: Sequence[ShardTask]) -> list[JournaledState]:
    """Each shard's state as the journal has it now (another attempt may have moved it
    on): (copied etag, sha256, size) and the open upload with its finished parts; with
    the epoch checked, all in one round trip."""
    first = tasks[0]
    key = journal_key(first.promotion)
    with index._errors("read promotion journal"):
        async with index.redis.pipeline(transaction=False) as pipe:
            pipe.get(epoch_key(first.promotion))
            pipe.hmget(key, [f"{kind}:{t.index}" for t in tasks for kind in ("s", "u")])
            epoch, raw = await pipe.execute()
    if first.epoch is not None and (epoch is None or epoch.decode() != str(first.epoch)):
        what = (f"shard {first.index}'s copy" if len(tasks) == 1
                else f"the copies of shards {first.index}..{tasks[-1].index}")
        raise stale_run(first.promotion, first.epoch, what)
    states: list[JournaledState] = []
    for n, task in enumerate(tasks):
        s_raw, u_raw = raw[2 * n], raw[2 * n + 1]
        fp, i = fingerprint(task.shard), task.index
        copied = None
        if s_raw is not None:
            doc = json.loads(s_raw)
            if doc.get("fp") == fp:
                copied = (doc["etag"], doc.get("sha256"), int(doc["size"]))
        upload = None
        if u_raw is not None:
            doc = json.loads(u_raw)
            if doc.get("fp") == fp:
                if task.upload is not None and task.upload.upload_id == doc["id"]:
                    upload = task.upload
                else:
                    parts: dict[int, str] = {}
                    with index._errors("read promotion journal"):
                        async for name, value in index.redis.hscan_iter(key,
                                                                        match=f"p:{i}:*"):
                            parts[int(name.decode().rsplit(":", 1)[1])] = value.decode()
                    upload = OpenUpload(doc["id"], int(doc["ps"]), parts)
        states.append((copied, upload))
    return states


async def settle_group(group: ShardGroup) -> list[tuple[ShardPlan, str] | Exception]:
    """Run on a worker: copy a group's shards, each resumed from the journal; per shard
    (settled, dest ETag) or its failure.

    A failure goes back as a fresh copy of itself, without its chain of causes (a task
    group's chain can be cyclic, which Dask cannot serialize); one that would not survive
    the trip is sent as a StorageError naming it. What fails the whole group (a stale
    epoch, the journal unreachable) is raised."""
    try:
        return await _settle_group(group)
    except Exception as exc:
        failure = _portable(exc)
    raise failure  # outside the handler: no __context__ to carry


PROBE_FRESH = 0.5  # s a "still ours" answer serves the shards that start after it


class _EpochProbe:
    """The epoch checked for shards about to start after waiting for a slot: one GET
    shared by those starting at the same moment, and a "still ours" answer reused for
    ``PROBE_FRESH`` seconds from before its GET was sent (without it a group's shards,
    finishing one by one, asked once each: a Redis round trip per shard). The check only
    spares a stale task's work; what fences it are the journal writes, completes and
    aborts, each checked on its own (docs/scale-out.md, Fencing)."""

    def __init__(self, fence: Fence) -> None:
        self.fence = fence
        self._running: anyio.Event | None = None
        self._answer: bool | None = None
        self._fresh_until = float("-inf")
        self.asked = 0  # GETs sent

    async def holds(self) -> bool:
        if self._answer and self.fence.clock() < self._fresh_until:
            return True
        running = self._running
        if running is not None:
            await running.wait()
            if self._answer is not None:
                return self._answer
        self._running = done = anyio.Event()
        self._answer = None
        sent = self.fence.clock()
        try:
            self.asked += 1
            self._answer = await self.fence.holds()
            self._fresh_until = sent + PROBE_FRESH
            return self._answer
        finally:
            self._running = None
            done.set()


_MALLOC_TUNED = False
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_CEILING = 32 * 1024 * 1024  # glibc's own DEFAULT_MMAP_THRESHOLD_MAX (64-bit)


def _tune_malloc(part_size: int) -> bool:
    """Undo, in this worker process, what the Dask nanny's ``MALLOC_TRIM_THRESHOLD_``
    does to a copy: setting it freezes glibc's mmap threshold at 128 KiB, so every
    socket read buffer (asyncio's 256 KiB) and part buffer is a fresh mmap whose pages
    fault in and are unmapped again (measured: ~2,100 page faults and twice the CPU per
    4 MiB shard). The thresholds are set to what glibc's own dynamic rule reaches after
    one buffer of a part's size (mmap at that size, at most 32 MiB; trim at twice it).
    Once per process; only where the variable is set and glibc is there."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    _MALLOC_TUNED = True
    import ctypes

    threshold = max(4 * 1024 * 1024, min(_MMAP_CEILING, part_size))
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold) and \
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)
    except (OSError, AttributeError):  # not glibc
        return False
    log.debug("malloc thresholds of worker %d: mmap %d, trim %d", os.getpid(), threshold,
              2 * threshold)
    return bool(ok)


QUIET_TICK_MS = 1000.0  # the event-loop watchdog's interval while a worker copies
QUIET_GRACE = 1.0  # s a worker stays quiet after its last group, for the next to start
_PROFILER = ("profile", "profile-cycle")  # the worker's periodic callbacks, by name


@dataclass
class _Quiet:
    """What one worker paused while it copies (see ``_quiet_enter``)."""

    groups: int = 0  # this worker's groups (of any promotion) that asked for quiet
    loud: int = 0  # and those that did not (quiet_workers=False): none may run quiet
    stopped: list[str] = field(default_factory=list)  # callbacks stopped, to start again
    tick: float | None = None  # the watchdog's own interval (ms), to set back
    timer: Any = None  # the pending restore


_quiet_of: weakref.WeakKeyDictionary[Any, _Quiet] = weakref.WeakKeyDictionary()


def _quiet_enter(worker: Any, quiet: bool = True) -> None:
    """A group starts on ``worker``: while its groups run, pause its statistical profiler
    (100 wake-ups a second that sample only thread tasks, never a coroutine task like a
    copy) and slow its event-loop watchdog (``tick``, 50 a second, kept for its warning
    about a loop blocked over ``distributed.admin.tick.limit``, 3 s) to once a second.
    Measured idle on this machine: ~31 -> ~8 ms of CPU a second per worker process
    (benchmarks/bench_dask_idle.py). Counted per worker, so overlapping groups and
    promotions share one pause; ``_quiet_exit`` restores what was changed.

    The rule is per executor, not per worker: the worker is quiet only while every
    engine group running on it asked for it. A group with ``quiet=False`` (an executor
    made with ``quiet_workers=False``) restores the callbacks as it starts, beside quiet
    groups too, and the worker is quieted again when the last such group ends while
    quiet ones still run."""
    q = _quiet_of.get(worker)
    if q is None:
        q = _quiet_of[worker] = _Quiet()
    if quiet:
        q.groups += 1
    else:
        q.loud += 1
    if q.timer is not None:  # the next group came within the grace
        q.timer.cancel()
        q.timer = None
    if q.loud:
        _quiet_restore(worker)
    else:
        _quiet_pause(worker, q)


def _quiet_pause(worker: Any, q: _Quiet) -> None:
    if q.stopped or q.tick is not None:  # paused already
        return
    callbacks = getattr(worker, "periodic_callbacks", {})
    for name in _PROFILER:
        pc = callbacks.get(name)
        if pc is not None and pc.is_running():
            pc.stop()
            q.stopped.append(name)
    tick = callbacks.get("tick")
    if tick is not None and tick.callback_time < QUIET_TICK_MS:
        q.tick, tick.callback_time = tick.callback_time, QUIET_TICK_MS


def _quiet_exit(worker: Any, grace: float = QUIET_GRACE, quiet: bool = True) -> None:
    """A group ended (copied, failed or cancelled): once none has run on ``worker`` for
    ``grace`` seconds, start what ``_quiet_enter`` paused and set the watchdog back; the
    last group with ``quiet=False`` ending beside quiet ones quiets the worker again."""
    q = _quiet_of.get(worker)
    if q is None:
        return
    if not quiet:
        if q.loud <= 0:
            return
        q.loud -= 1
        if not q.loud and q.groups:
            _quiet_pause(worker, q)
        return
    if q.groups <= 0:
        return
    q.groups -= 1
    if q.groups or q.loud:
        return
    if grace <= 0:
        _quiet_restore(worker)
    else:
        q.timer = asyncio.get_running_loop().call_later(grace, _quiet_restore, worker)


def _quiet_restore(worker: Any) -> None:
    q = _quiet_of.get(worker)
    if q is None or (q.groups and not q.loud):
        return
    q.timer = None
    stopped, q.stopped = q.stopped, []
    tick, q.tick = q.tick, None
    status = getattr(getattr(worker, "status", None), "name", "running")
    if status not in ("running", "paused"):  # closing: its callbacks are stopped for good
        return
    callbacks = worker.periodic_callbacks
    for name in stopped:
        pc = callbacks.get(name)
        if pc is not None and not pc.is_running():
            pc.start()
    if tick is not None and "tick" in callbacks:
        callbacks["tick"].callback_time = tick


def _this_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except Exception:  # not on a Dask worker
        return None


def _worker_slots(default: int) -> int:
    """The shards this worker copies at once: its task slots (``--nthreads``)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except Exception:  # not on a Dask worker (or one that cannot say)
        return max(1, default)


async def _settle_group(group: ShardGroup) -> list[tuple[ShardPlan, str] | Exception]:
    first = group.tasks[0]
    state = _state()
    if group.run and group.run in state.stopped:  # released on its way here: not run
        return [_stopped_error(t) for t in group.tasks]
    if group.tune_malloc:
        _tune_malloc(dict(first.dest.settings).get("part_size", 16 * 1024 * 1024))
    worker = _this_worker()
    if worker is not None:
        _quiet_enter(worker, group.quiet)
    scope = anyio.CancelScope()
    running = state.running.setdefault(group.run, set())
    running.add(scope)
    try:
        with scope:
            return await _settle_group_on(group)
        # stopped by _stop_run: every outcome so far is journaled (_settle_group_on
        # flushes, shielded); the coordinator released the task and wants no answer
        return [_stopped_error(t) for t in group.tasks]
    finally:
        running.discard(scope)
        if not running and state.running.get(group.run) is running:
            del state.running[group.run]
        if worker is not None:
            _quiet_exit(worker, quiet=group.quiet)


STOPPED_KEPT = 600.0  # s a worker remembers a stopped run (its released tasks may still come)


class GroupStopped(AtdataError):
    """A shard's copy stopped on the worker before it settled: its promotion failed (shard
    ``failed`` of the same group, when known) or was cancelled. Not an ExecutorError: the
    cluster did not fail it (and raise_lost_cluster must not take it for a lost one)."""

    def __init__(self, promotion: str, index: int, failed: int | None = None) -> None:
        why = (f"shard {failed} of its group failed" if failed is not None
               else "its promotion failed or was cancelled")
        super().__init__(f"{run_name(promotion)}: shard {index}'s copy stopped: {why}")
        self.promotion, self.index, self.failed = promotion, index, failed

    def __reduce__(self) -> Any:
        return type(self), (self.promotion, self.index, self.failed)


def _stopped_error(task: ShardTask) -> GroupStopped:
    return GroupStopped(task.promotion, task.index)


async def _stop_run(run: str, wait: float = 2.0) -> tuple[int, int]:
    """Run on each worker (``Client.run``) by a coordinator whose promotion failed or was
    cancelled: cancel that run's groups copying here and wait, at most ``wait`` seconds,
    until they have ended. A cancelled shard ends as a cancelled local copy does: its
    multipart upload aborted (under the coordinator's lease, which it holds until this
    returns), its journal fields closed and flushed. Groups of the run that reach this
    worker later end at once. Dask itself cannot do this: a released (or
    ``Client.cancel``-ed) task that is executing only turns "cancelled" on the worker
    and runs to its end. (groups stopped, groups still running after ``wait``)"""
    state = _state()
    now = time.monotonic()
    for old in [r for r, t in state.stopped.items() if now - t > STOPPED_KEPT]:
        del state.stopped[old]
    state.stopped[run] = now
    scopes = list(state.running.get(run, ()))
    for scope in scopes:
        scope.cancel()
    with anyio.move_on_after(wait):
        while state.running.get(run):
            await anyio.sleep(0.01)
    return len(scopes), len(state.running.get(run, ()))


async def _settle_group_on(group: ShardGroup) -> list[tuple[ShardPlan, str] | Exception]:
    from .._backends.http_reader import HttpShardReader
    from .._backends.tasks import single_error

    tasks = group.tasks
    first = tasks[0]
    index = _index(first.redis.resolve())
    # keys: the fence can tell an upload the journal names (a rerun's to continue) from
    # this task's own never-journaled one, which even a stale task aborts
    fence = (Fence(index, first.promotion, first.epoch,
                   keys={t.shard.dest_key: t.index for t in tasks if t.shard.dest_key})
             if first.epoch is not None else None)
    reset = current_fence.set(fence)
    state = _state()
    slot_key = (first.promotion, first.epoch)
    held = state.slots.get(slot_key)
    if held is None:
        held = state.slots[slot_key] = [anyio.CapacityLimiter(
            _worker_slots(group.concurrency)), 0]
    held[1] += 1
    slots: anyio.CapacityLimiter = held[0]
    try:
        states = await _journaled_states(index, tasks)
        dest = _store(first.dest)
        source = _store(first.source) if first.source is not None else None
        journal = PromotionJournal(index, first.promotion, first.epoch)
        probe = _EpochProbe(fence) if fence is not None else None
        results: list[tuple[ShardPlan, str] | Exception | None] = [None] * len(tasks)
        tokens = [object() for _ in tasks]
        acquired: set[object] = set()
        for token in tokens:  # the shards that start at once, under the epoch just read
            try:
                slots.acquire_on_behalf_of_nowait(token)
            except anyio.WouldBlock:
                break
            acquired.add(token)
        fresh = len(acquired)
        stop: list[int] = []  # the shard whose failure stopped the group (fail_fast)
        siblings = anyio.CancelScope()

        async def member(k: int, http: HttpShardReader) -> None:
            token = tokens[k]
            try:
                if k >= fresh:
                    await slots.acquire_on_behalf_of(token)
                    acquired.add(token)
                    # it waited for a slot: the epoch is checked again before it starts
                    if probe is not None and not await probe.holds():
                        raise stale_run(first.promotion, first.epoch or 0,
                                        f"shard {tasks[k].index}'s copy")
                results[k] = await _settle_member(tasks[k], states[k], dest, source, http,
                                                  journal)
            except Exception as exc:
                results[k] = _portable(exc)
                if group.fail_fast and not stop:  # the promotion fails: so do the others
                    stop.append(tasks[k].index)
                    siblings.cancel()
            finally:
                if token in acquired:
                    acquired.discard(token)
                    slots.release_on_behalf_of(token)

        try:
            async with HttpShardReader() as http:
                with single_error():
                    async with anyio.create_task_group() as tg:
                        flusher = anyio.CancelScope()

                        async def flush() -> None:
                            with flusher:
                                await journal.run_flusher(lease=False)

                        tg.start_soon(flush)
                        with siblings:
                            async with anyio.create_task_group() as members:
                                for k in range(len(tasks)):
                                    members.start_soon(member, k, http)
                        flusher.cancel()
        finally:
            for token in list(acquired):  # shards that never started (the group failed)
                slots.release_on_behalf_of(token)
            acquired.clear()
            await journal.flush()  # every outcome journaled before any is reported
        if stop:  # the siblings the failure cancelled (their uploads aborted)
            results = [GroupStopped(t.promotion, t.index, stop[0]) if r is None else r
                       for t, r in zip(tasks, results, strict=True)]
        return results  # type: ignore[return-value]
    finally:
        held[1] -= 1
        if held[1] <= 0 and state.slots.get(slot_key) is held:
            del state.slots[slot_key]
        current_fence.reset(reset)


async def _settle_member(task: ShardTask, state: JournaledState, dest: S3DataStore,
                         source: S3DataStore | None, http: Any,
                         journal: PromotionJournal) -> tuple[ShardPlan, str]:
    """One shard of a group: done already (the journal says so and a HEAD agrees), or
    copied (continuing its journaled upload), its outcome noted in the group's journal."""
    from .._backends.s3_store import etag_of
    from .promote import _settle_shard

    plan = task.shard
    copied, upload = state
    if copied is not None and plan.dest_key is not None:
        head = await dest.head(dest.url(plan.dest_key))
        if (int(head["ContentLength"]), etag_of(head)) == (copied[2], copied[0]):
            return replace(plan, size=copied[2], sha256=copied[1] or plan.sha256), copied[0]
    resume = ShardResume(upload=upload)
    shard_log = journal.shard(task.index, plan, resume)
    tracker = ProgressTracker(None, 1, plan.size or 0)
    settled = await _settle_shard(plan, source, http, dest, task.compute_checksums,
                                  tracker, shard_log, resume, task.verify)
    return settled, shard_log.etag


def _portable(exc: Exception) -> Exception:
    """``exc`` rebuilt without its traceback and chain (distributed pickles both with
    tblib, and a task group's chain is cyclic), if that pickles; else a StorageError."""
    try:
        fresh = type(exc).__new__(type(exc), *exc.args)
        fresh.args = exc.args
        fresh.__dict__.update(exc.__dict__)
        pickle.loads(pickle.dumps(fresh))
    except Exception:
        return StorageError(f"{type(exc).__name__}: {exc}")
    return fresh


# -- the coordinator side ----------------------------------------------------------------


class DaskExecutor:
    """Run shard copies on a Dask cluster (``distributed.Client``, asynchronous or not).

    Workers need atdata_async installed and reach the same Redis and S3 endpoints; they
    find S3 credentials through ``credentials`` (and ``source_credentials`` for the
    source store, default the same), and the Redis URL itself when it carries a
    password through ``redis_url_env``. ``retries``: reruns of a shard whose copy
    raised (a worker's death is retried by the scheduler regardless).

    One task carries a group of a promotion's shards (``group_size``; default: about
    4 groups per worker, at most 64 shards), each shard still its own unit: its key,
    journal fields and outcome. A task costs a few ms of CPU at the scheduler,
    the coordinator and the worker whatever it carries, so this pays it once per group.

    ``tune_worker_malloc``: in a worker started by a Dask nanny (which sets
    ``MALLOC_TRIM_THRESHOLD_``), set glibc's malloc thresholds back to what a plain
    process reaches by itself (see ``_tune_malloc``: the nanny's setting doubles a
    streamed copy's CPU); False leaves the worker's malloc alone.

    ``quiet_workers``: while a worker runs this engine's groups, pause its statistical
    profiler (it samples thread tasks only, never a copy, a coroutine) and slow its
    event-loop watchdog from 50 to 1 wake-up a second (it still warns of a loop blocked
    over 3 s); both are restored once the worker has run none of the engine's groups
    for a second, whether they copied, failed or were cancelled (a worker's own
    setting, in its process: nothing on the scheduler or nanny is changed, and a worker
    that dies takes the change with it). Thread tasks of others running on the same
    worker meanwhile get no profile. False leaves the workers' callbacks alone. For
    workers that only copy, docs/scale-out.md gives a configuration that quiets the
    nanny and the scheduler too.

    On a cluster, a promotion's ``max_concurrency`` is a depth per worker: the
    coordinator keeps ``in_flight(max_concurrency)`` = max(max_concurrency, group) x
    workers x ``PREFETCH`` shards at the cluster (workers counted once, when a
    promotion starts), so the next group already waits at the scheduler while a result
    travels back. A worker copies as many shards at once as it has slots
    (``--nthreads``), whatever groups they came in; its S3 requests and buffers are
    bounded by its store's own ``max_concurrency`` (the destination store's setting,
    carried by the task). Shards settled by the coordinator itself still run at most
    max_concurrency at once."""

    PREFETCH = PREFETCH  # groups queued per worker: hides one scheduler round trip

    def __init__(self, client: Any, *, credentials: CredentialSource | None = None,
                 source_credentials: CredentialSource | None = None,
                 redis_url_env: str | None = None, retries: int = 0,
                 group_size: int | None = None, tune_worker_malloc: bool = True,
                 quiet_workers: bool = True) -> None:
        if group_size is not None and group_size < 1:
            raise ConfigurationError(f"group_size must be at least 1, got {group_size}")
        self.client = client
        self.credentials = credentials or CredentialSource()
        self.source_credentials = source_credentials or self.credentials
        self.redis_url_env = redis_url_env
        self.retries = retries
        self.group_size = group_size
        self.tune_worker_malloc = tune_worker_malloc
        self.quiet_workers = quiet_workers

    def __repr__(self) -> str:
        return f"DaskExecutor({self.scheduler_address!r})"

    async def workers(self) -> int:
        """The cluster's worker count, asked of the scheduler now (at least 1; 1 when
        it cannot say: then the limit is the local one, x PREFETCH)."""
        client = self.client
        try:
            # an asynchronous client returns its cached identity, which carries the count;
            # a sync one asks the scheduler (one round trip), off the event loop
            if getattr(client, "asynchronous", False):
                info = client.scheduler_info(n_workers=0)
            else:
                info = await anyio.to_thread.run_sync(
                    lambda: client.scheduler_info(n_workers=0))
            count = int(info.get("n_workers") or len(info.get("workers") or ()))
        except Exception as exc:  # a gone scheduler fails later, at submit, as ExecutorError
            log.debug("could not count the workers at %s: %s", self.scheduler_address, exc)
            count = 1
        return max(1, count)

    async def in_flight(self, max_concurrency: int, workers: int | None = None,
                        group: int = 1) -> int:
        """How many shards the coordinator keeps at the cluster (see the class)."""
        count = await self.workers() if workers is None else workers
        return shards_in_flight(max_concurrency, count, group)

    @property
    def scheduler_address(self) -> str:
        try:
            return str(self.client.scheduler.address)
        except Exception:
            return "?"

    def bind(self, *, promotion: str, local_index: LocalIndex, dest: S3DataStore,
             source: S3DataStore | None, compute_checksums: bool,
             verify: bool = True) -> ShardRunner:
        """The runner for one promotion's shards (checked here, before any copy)."""
        return ShardRunner(self, promotion, StoreSpec.of(dest, self.credentials),
                           StoreSpec.of(source, self.source_credentials) if source else None,
                           redis_spec(local_index, self.redis_url_env), compute_checksums,
                           verify, dest)


# s a failed or cancelled promotion waits for its groups to stop: long enough for every
# complete or abort a worker was admitted to (at most ACTION_TIMEOUT from its check) to
# end before the coordinator releases its lease, after which a rerun starts at once
STOP_WAIT = ACTION_TIMEOUT + MARGIN + 1.0
PROGRESS_POLL = 0.5  # s between the coordinator's looks at the journal for shards settled
GroupOutcome = list[Any] | BaseException  # per shard (settled, etag) or its failure


class _Pending:
    """One group's task: submitted by the first of its shards to ask, awaited by one of
    its shards at a time (another takes over if that one is cancelled)."""

    def __init__(self, members: tuple[int, ...]) -> None:
        self.members = members
        self.future: Any = None
        self.outcome: GroupOutcome | None = None
        self.leader = False
        self.changed = anyio.Event()
        self.waiters = 0
        self.asked: set[int] = set()  # members whose shard asked for the outcome (or
        # whose failure a sibling raised in its place: see ShardRunner.settle)


class ShardRunner:
    """One promotion's shard copies on the cluster, in groups (``plan``)."""

    def __init__(self, executor: DaskExecutor, promotion: str, dest: StoreSpec,
                 source: StoreSpec | None, redis: RedisSpec, compute_checksums: bool,
                 verify: bool, dest_store: S3DataStore) -> None:
        self.executor = executor
        self.promotion = promotion
        self.dest, self.source, self.redis = dest, source, redis
        self.compute_checksums, self.verify = compute_checksums, verify
        self.dest_store = dest_store
        self.run_token = secrets.token_hex(4)
        # what the workers know this run by (_stop_run): a 32-bit token alone is shared
        # by two entries of a 10,000-entry promote_many with a chance of ~1%, and one's
        # stop would then stop the other's groups
        self.run_id = f"{promotion}-{self.run_token}"
        self.submitted = 0  # tasks sent to the scheduler
        self.journal: PromotionJournal | None = None  # the coordinator's (lease, epoch)
        self.workers: int | None = None  # read once, by plan or in_flight
        self.group_size = 1
        self.concurrency = 8
        self._shards: dict[int, tuple[ShardPlan, ShardResume]] = {}
        self._groups: dict[int, _Pending] = {}
        self.stopping: anyio.Event | None = None  # set once abandon() is done
        self.stopped: dict[str, Any] = {}  # worker -> what _stop_run answered there
        # per-shard progress while groups are at the cluster (see _poll_while):
        self.tracker: ProgressTracker | None = None  # the promotion's, when it has a callback
        self._at_cluster: set[_Pending] = set()  # groups submitted and not answered
        self._before: dict[int, bytes | None] | None = None  # "s:{i}" as this run found it
        self._before_read: anyio.Event | None = None
        self._polling = False  # a leader's wait runs the poll loop
        self._poll_free = anyio.Event()  # set when it stops running it
        self._next_poll = 0.0
        self.polls = 0  # HMGETs sent (for tests and benchmarks)

    async def _workers(self) -> int:
        if self.workers is None:
            self.workers = await self.executor.workers()
        return self.workers

    async def plan(self, shards: Sequence[tuple[int, ShardPlan, ShardResume]],
                   journal: PromotionJournal | None = None, limit: int | None = None) -> None:
        """Group the shards the cluster will copy (index, plan, resume; in the order
        they are settled). ``limit``: a shard limit already fixed (promote_many's, shared
        by its entries): groups stay small enough that PREFETCH per worker fit in it."""
        if journal is not None:
            self.journal = journal
        workers = await self._workers()
        cap = max(1, limit // (PREFETCH * workers)) if limit is not None else None
        size = self.executor.group_size
        if size is None:
            size = group_size(len(shards), workers, cap)
        self.group_size = size
        self._shards.update({i: (shard, resume) for i, shard, resume in shards})
        for members in plan_groups([i for i, _, _ in shards], size):
            pending = _Pending(members)
            for i in members:
                self._groups[i] = pending

    async def in_flight(self, max_concurrency: int) -> int:
        """The coordinator's limit of this promotion's shards at the cluster."""
        self.concurrency = max(1, max_concurrency)
        return await self.executor.in_flight(max_concurrency, await self._workers(),
                                             self.group_size)

    def task(self, i: int, shard: ShardPlan, resume: ShardResume) -> ShardTask:
        epoch = self.journal.epoch if self.journal is not None else None
        return ShardTask(self.promotion, i, shard, self.dest, self.source, self.redis,
                         self.compute_checksums, self.verify, resume.upload, epoch)

    def progress_key(self, i: int) -> tuple[str, int]:
        """Shard i's key in the promotion's ProgressTracker (one for all entries of a
        promote_many, whose shards' names may repeat): it counts once under it."""
        return (self.promotion, i)

    async def settle(self, i: int, shard: ShardPlan, resume: ShardResume,
                     journal: PromotionJournal | None = None,
                     tracker: ProgressTracker | None = None) -> tuple[ShardPlan, str]:
        """Shard i's copy (fenced by ``journal``'s epoch), run in its planned group (a
        shard not planned goes alone); cluster failures are ExecutorError. While
        ``tracker`` has a callback, shards the workers settle are counted in it as soon
        as the journal shows them (``_poll_while``); the caller counts the rest."""
        if journal is not None:
            self.journal = journal
        if tracker is not None and tracker.watched and self.tracker is None:
            self.tracker = tracker
        pending = self._groups.get(i)
        if pending is None:
            self._shards[i] = (shard, resume)
            pending = self._groups[i] = _Pending((i,))
        pending.asked.add(i)
        outcome = await self._outcome(pending)
        if isinstance(outcome, BaseException):
            raise (outcome if isinstance(outcome, AtdataError)
                   else _translate(outcome, i, self.executor.scheduler_address))
        got = outcome[pending.members.index(i)]
        if isinstance(got, GroupStopped) and got.failed in pending.members:
            # stopped because a shard of its group failed: that shard's error is the
            # promotion's. Its own coroutine raises it (then run_per_shard cancels this
            # one) if it asked for the group; else the first sibling here raises it in
            # its place, once (the others count it as asked, and wait to be cancelled).
            if got.failed in pending.asked:
                await anyio.sleep_forever()
            pending.asked.add(got.failed)
            got = outcome[pending.members.index(got.failed)]
        if isinstance(got, BaseException):
            raise (got if isinstance(got, AtdataError)
                   else _translate(got, i, self.executor.scheduler_address))
        return got

    async def _outcome(self, pending: _Pending) -> GroupOutcome:
        pending.waiters += 1
        try:
            while pending.outcome is None:
                if pending.leader:
                    changed = pending.changed
                    await changed.wait()
                    continue
                pending.leader = True
                try:
                    pending.outcome = await self._run(pending)
                finally:
                    pending.leader = False
                    changed, pending.changed = pending.changed, anyio.Event()
                    changed.set()
            return pending.outcome
        finally:
            pending.waiters -= 1
            if pending.waiters == 0 and pending.outcome is None and pending.future is not None:
                # every shard of the group was cancelled: the promotion failed or was
                # cancelled (run_per_shard cancels all shards on the first failure)
                with anyio.CancelScope(shield=True):
                    await self.abandon()

    async def _run(self, pending: _Pending) -> GroupOutcome:
        """The group's per-shard outcomes; shards that raised are sent again (alone
        with the others that raised) up to ``retries`` times; a failure of the whole
        task is the outcome of every shard in it."""
        try:
            results = await self._submit(pending, pending.members, 0)
            for attempt in range(1, self.executor.retries + 1):
                failed = [k for k, got in enumerate(results) if isinstance(got, BaseException)
                          and not isinstance(got, PromotionBusyError)]
                if not failed:
                    break
                again = await self._submit(pending, tuple(pending.members[k] for k in failed),
                                           attempt)
                for k, got in zip(failed, again, strict=True):
                    results[k] = got
            return results
        except AtdataError as exc:
            return exc
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            return _translate(exc, pending.members[0], self.executor.scheduler_address)

    async def _submit(self, pending: _Pending, members: tuple[int, ...],
                      attempt: int) -> list[Any]:
        client = self.executor.client
        if pending.future is None:  # else submitted by a waiter that was cancelled since
            if self._watching():
                await self._read_before()
            if self.stopping is not None:  # the run is over: nothing more goes out
                raise GroupStopped(self.promotion, members[0])
            group = ShardGroup(tuple(self.task(i, *self._shards[i]) for i in members),
                               self.concurrency, self.executor.tune_worker_malloc,
                               self.executor.quiet_workers, self.run_id,
                               fail_fast=attempt >= self.executor.retries)
            key = (f"atdata-shard-{self.promotion[:12]}-{members[0]}-{len(members)}-"
                   f"{self.run_token}" + (f"-r{attempt}" if attempt else ""))
            where = self.executor.scheduler_address
            try:
                pending.future = client.submit(settle_group, group, key=key, pure=False,
                                               retries=self.executor.retries)
            except Exception as exc:
                raise ExecutorError(f"submitting shard {members[0]} to the Dask scheduler "
                                    f"at {where} failed: {type(exc).__name__}: {exc}"
                                    ) from exc
            self.submitted += 1
        self._at_cluster.add(pending)
        try:
            got = await self._poll_while(pending.future)
        finally:
            self._at_cluster.discard(pending)
        pending.future = None
        return list(got)

    async def _answer(self, future: Any) -> Any:
        if getattr(self.executor.client, "asynchronous", False):
            return await future
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    # -- progress per shard while groups are at the cluster --------------------------------

    def _watching(self) -> bool:
        return self.tracker is not None and self.journal is not None

    async def _read_before(self) -> None:
        """Before this run's first group goes out: the "s:{i}" fields the journal
        already holds for the planned shards (an earlier run's, kept by journal.open
        for a shard whose object the listing did not confirm: copied again now). The
        poll counts only a field that differs, one this run's workers wrote. Once."""
        if self._before_read is not None:
            await self._before_read.wait()
            return
        self._before_read = done = anyio.Event()
        assert self.journal is not None
        planned = sorted(self._shards)
        try:
            redis = self.journal.index.redis
            got = await redis.hmget(journal_key(self.promotion), [f"s:{i}" for i in planned])
            self._before = dict(zip(planned, got, strict=True))
        except Exception as exc:  # progress then comes per group, as without a callback
            log.debug("%s: no per-shard progress (reading the journal failed: %s)",
                      run_name(self.promotion), exc)
            self.tracker = None
        finally:
            done.set()

    async def _poll_while(self, future: Any) -> Any:
        """Await a group's answer; meanwhile, when progress is watched, run the
        runner's one poll loop (``_poll`` every PROGRESS_POLL s) if no other group's
        wait runs it, and take it over when the one that did gets its answer. So it runs
        exactly while groups are at the cluster, and ends with the last answer, with an
        abandoned run, or with the cancellation of the waits."""
        if not self._watching() or self._before is None:
            return await self._answer(future)
        got: list[Any] = []
        failed: list[BaseException] = []
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                try:
                    got.append(await self._answer(future))
                except BaseException as exc:  # raised below, as the plain await raised it
                    failed.append(exc)  # (a cancellation of this wait: raised by tg first)
                finally:
                    tg.cancel_scope.cancel()

            tg.start_soon(wait)
            await self._poll_loop()
            await anyio.sleep_forever()  # (the run stopped: no more polls) until the answer
        if failed:
            raise failed[0]
        return got[0]

    async def _poll_loop(self) -> None:
        while self.stopping is None and self.tracker is not None:
            if self._polling:
                free = self._poll_free
                await free.wait()
                continue
            self._polling = True
            try:
                while self.stopping is None and self.tracker is not None:
                    delay = self._next_poll - anyio.current_time()
                    if delay > 0:
                        await anyio.sleep(delay)
                    self._next_poll = anyio.current_time() + PROGRESS_POLL
                    await self._poll()
            finally:
                self._polling = False
                free, self._poll_free = self._poll_free, anyio.Event()
                free.set()

    async def _poll(self) -> None:
        """One look at the journal: the "s:{i}" fields of the shards of the groups at
        the cluster not counted yet, in one HMGET; each settled (fingerprint checked,
        as journal.parse_states reads them) counts at once, with its bytes."""
        tracker, before = self.tracker, self._before
        if tracker is None or before is None or self.journal is None:
            return
        ask = [i for pending in self._at_cluster for i in pending.members
               if i in before and not tracker.counted(self.progress_key(i))]
        if not ask:
            return
        try:
            self.polls += 1
            got = await self.journal.index.redis.hmget(journal_key(self.promotion),
                                                        [f"s:{i}" for i in ask])
        except Exception as exc:  # the group's answer still reports its shards
            log.debug("%s: reading the journal for progress failed: %s",
                      run_name(self.promotion), exc)
            return
        new = [(i, raw) for i, raw in zip(ask, got, strict=True)
               if raw is not None and raw != before[i]]
        if not new:
            return
        states = parse_states({f"s:{n}": raw.decode() for n, (_, raw) in enumerate(new)},
                              [self._shards[i][0] for i, _ in new])
        for (i, _), state in zip(new, states, strict=True):
            if state.copied is not None:
                size = state.copied[2]
                tracker.shard_done(self.progress_key(i), size,
                                   unplanned=self._shards[i][0].size is None)

    async def abandon(self) -> None:
        """The promotion failed or was cancelled with groups still at the cluster: let
        go of every one of them at the scheduler (the queued ones are dropped there),
        then stop the run's groups that are copying on the workers (``_stop_run``,
        through ``Client.run``) and wait for them to end, at most ``STOP_WAIT``
        seconds: their multipart uploads are aborted and their journal flushed under
        this run's lease, which the coordinator releases only after this returns. The
        first caller does it; the others wait for it (bounded the same way)."""
        client = self.executor.client
        for pending in {id(p): p for p in self._groups.values()}.values():
            # (a group whose shards still wait releases its own when they are cancelled)
            if pending.waiters == 0 and pending.outcome is None and pending.future is not None:
                _cancel(client, pending.future)
                pending.future = None
                self._at_cluster.discard(pending)
        if self.stopping is not None:
            with anyio.move_on_after(STOP_WAIT):
                await self.stopping.wait()
            return
        self.stopping = done = anyio.Event()
        try:
            if self.submitted:
                await self._stop_on_workers()
        finally:
            done.set()

    async def _stop_on_workers(self) -> None:
        client = self.executor.client
        where = self.executor.scheduler_address
        wait = STOP_WAIT - 0.5  # what a worker waits for its groups; the rest is travel
        with anyio.move_on_after(STOP_WAIT) as late:
            try:
                if getattr(client, "asynchronous", False):
                    got = await client.run(_stop_run, self.run_id, wait, on_error="return")
                else:
                    got = await anyio.to_thread.run_sync(
                        lambda: client.run(_stop_run, self.run_id, wait,
                                           on_error="return"),
                        abandon_on_cancel=True)
            except Exception as exc:  # the cluster may be gone (then so are its groups)
                log.warning("could not stop the groups of %s on the Dask cluster at %s: "
                            "%s: %s", run_name(self.promotion), where, type(exc).__name__,
                            exc)
                return
        if late.cancelled_caught:
            log.warning("the Dask cluster at %s did not confirm within %gs that the groups "
                        "of %s stopped", where, STOP_WAIT, run_name(self.promotion))
            return
        self.stopped = dict(got)
        answered = {w: v for w, v in got.items() if isinstance(v, tuple | list)}
        left = sum(int(v[1]) for v in answered.values())
        failed = [w for w in got if w not in answered]
        if left or failed:
            log.warning("%s: %d group(s) still running on the Dask cluster at %s after "
                        "%gs, %d worker(s) did not answer", run_name(self.promotion), left,
                        where, wait, len(failed))

    async def sweep(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """Every shard has settled: abort any upload still open under the plan's keys
        (a killed worker's, whose id the journal never got)."""
        from .journal import dest_prefix

        ours = set(keys)
        if not ours:
            return []
        journal = self.journal
        if journal is not None and journal.epoch is not None and not await holds_epoch(
                journal.index, self.promotion, journal.epoch):
            raise stale_run(self.promotion, journal.epoch, "sweeping stray uploads")
        uploads = await self.dest_store.list_multipart_uploads(dest_prefix(list(ours)))
        stray = [(u["Key"], u["UploadId"]) for u in uploads if u["Key"] in ours]
        for key, upload_id in stray:
            log.info("aborting stray multipart upload %s of %s", upload_id, key)
            await self.dest_store.abort_multipart(key, upload_id)
        return stray


def _cancel(client: Any, future: Any) -> None:
    """Let go of the task (the scheduler forgets a task nobody wants, and stops it)."""
    try:
        future.release()
    except Exception:  # the cluster may be gone; nothing more to do here
        log.debug("could not release %s", future)


def _translate(exc: BaseException, i: int, where: str) -> ExecutorError:
    name = type(exc).__name__
    if name == "KilledWorker":
        why = "it killed every worker it ran on (see the workers' logs)"
    elif name in ("FutureCancelledError", "CancelledError", "CommClosedError") or \
            isinstance(exc, OSError | TimeoutError):
        why = "the connection to the scheduler was lost"
    else:
        why = f"{name}: {exc}"
    return ExecutorError(f"shard {i} could not be run on the Dask cluster at {where}: {why}; "
                         "the journal keeps what finished: rerun the promotion to resume")
