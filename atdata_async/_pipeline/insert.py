"""A resumable insert: local shards uploaded under keys derived from the insert itself,
their progress journaled in Redis like a promotion's, so that a rerun continues.

    the insert's identity (destination, prefix, name, schema ref, each file's path, size
    and mtime): known before any byte is read, unlike the entry's CID (which hashes the
    destination URLs) -> keys ``{prefix}/data--{uuid5(identity)}--{i:06d}.tar``
      -> an entry already indexed under those URLs: the insert finished before, done
      -> the journal (``atdata_async:journal:insert-{uuid}``): plan saved first; on a
         rerun one listing of the prefix says which shards landed, open uploads are
         continued from ListParts (or aborted when they cannot be trusted)
      -> the missing shards uploaded; the entry indexed; the journal dropped

A failed or cancelled insert aborts its open multipart uploads and indexes nothing; the
shards it finished stay for the rerun (``cleanup`` removes them once given up). A kill
leaves its uploads open, and the rerun continues them. A run stalled past its lease
(a rerun took over) is fenced like a promotion's (docs/scale-out.md, Fencing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._backends.dataset import count_samples
from .._backends.s3_store import S3DataStore, ShardUpload
from .._backends.tasks import run_per_shard, single_error
from .._errors import EntryNotFoundError, PromotionBusyError
from .._model.cid import entry_cid
from .._model.progress import ProgressCallback, ProgressTracker
from .fence import fenced, run_fence
from .journal import (
    PromotionJournal,
    ShardLog,
    ShardResume,
    check_fence,
    decide_resume,
    dest_prefix,
    forget_journal,
    plan_document,
    stale_run,
)
from .promote import ShardPlan

log = logging.getLogger("atdata_async.insert")

if TYPE_CHECKING:
    from .._backends.redis_index import LocalDatasetEntry, LocalIndex

# Fixed: the shard keys of an insert must not change between versions of the library.
INSERT_NAMESPACE = uuid.UUID("5b0f6c8e-2d7a-5e51-9c39-0a7d1f3e6b21")
INSERT_KEY_PREFIX = "insert-"  # journal keys of inserts (promotions': 64 hex digits)
INTERNAL = ("checksums", "shard_sizes", "etags", "num_samples", "store")


def insert_run_id(store: S3DataStore, stem: str, name: str, schema_ref: str,
                  files: Sequence[tuple[str, int, int]]) -> str:
    """The uuid in an insert's shard keys: the same insert (same destination, prefix,
    name, schema and files, each as (real path, size, mtime_ns)) always gets the same
    one, so a rerun finds what an earlier run uploaded. Metadata is not part of it."""
    identity = json.dumps({"v": 1, "endpoint": store.endpoint, "bucket": store.bucket,
                           "stem": stem, "name": name, "schema_ref": schema_ref,
                           "files": [list(f) for f in files]}, separators=(",", ":"))
    return str(uuid.uuid5(INSERT_NAMESPACE, identity))


def insert_keys(stem: str, run: str, n: int) -> list[str]:
    """atdata's shard names: ``{prefix}/data--{uuid}--{i:06d}.tar``."""
    return [f"{stem}/data--{run}--{i:06d}.tar" for i in range(n)]


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def insert_shards(
    index: LocalIndex, store: S3DataStore, paths: Sequence[str], *, name: str, stem: str,
    schema_ref: str, metadata: dict[str, Any] | None, progress: ProgressCallback | None,
) -> LocalDatasetEntry:
    """Upload ``paths`` to ``store`` (resuming an earlier run of the same insert) and
    index them as one entry."""
    from .._backends.redis_index import STORE_KEY, LocalDatasetEntry

    files = []
    for p in paths:
        st = os.stat(p)
        files.append((os.path.realpath(p), st.st_size, st.st_mtime_ns))
    run = insert_run_id(store, stem, name, schema_ref, files)
    keys = insert_keys(stem, run, len(paths))
    urls = [store.url(k) for k in keys]
    cid = entry_cid(schema_ref, urls)
    done_before = await _finished(index, cid, name, urls)
    if done_before is not None:  # an earlier run indexed it (and perhaps died after)
        entry = LocalDatasetEntry(name, schema_ref, urls,
                                  {**(metadata or {}), **done_before}, cid=cid)
        await index._store_entry(entry)
        await forget_journal(index, INSERT_KEY_PREFIX + run)
        return entry

    shards = [ShardPlan(f"file://{path}", "file", key, size, None)
              for (path, size, _), key in zip(files, keys, strict=True)]
    journal = PromotionJournal(index, INSERT_KEY_PREFIX + run)
    doc = {**plan_document(shards, entry_cid=cid, name=name, bucket=store.bucket,
                           endpoint=store.endpoint), "kind": "insert"}
    states = await journal.open(doc, shards)  # PromotionBusyError: it runs elsewhere now
    # fenced: after a stall past its lease, this run neither completes nor aborts the
    # uploads a rerun continues, nor indexes, nor drops the rerun's journal
    store = fenced(store, run_fence(journal, shards))
    listing: dict[str, tuple[int, str]] = {}
    resumes = [ShardResume()] * len(shards)
    if journal.existed:  # an earlier run of this insert: what did it leave?
        prefix = dest_prefix(keys)
        listing = await store.list_objects(prefix)
        uploads = [(u["Key"], u["UploadId"]) for u in await store.list_multipart_uploads(prefix)]
        resumes, aborts = decide_resume(shards, states, listing, uploads)
        if aborts:
            async with anyio.create_task_group() as tg:
                for key, upload_id in aborts:
                    tg.start_soon(store.abort_multipart, key, upload_id)
    logs = [journal.shard(i, s, r) for i, (s, r) in enumerate(zip(shards, resumes, strict=True))]
    tracker = ProgressTracker(progress, len(shards), sum(f[1] for f in files))
    counts: list[int] = [0] * len(paths)

    async def upload(i: int) -> ShardUpload:
        shard, resume, log = shards[i], resumes[i], logs[i]
        path = files[i][0]
        assert shard.dest_key is not None
        if resume.done is not None:
            sha256, size = resume.done
            tracker.add_bytes(size)
            return ShardUpload(urls[i], size, sha256, listing[shard.dest_key][1])
        if resume.upload is None:
            done = await store.upload_file(path, shard.dest_key, tracker, log=log)
        else:
            done = await _continue_upload(store, path, shard.dest_key, files[i][1], tracker,
                                          log)
        log.copied(done.etag or "", done.sha256, done.size)
        return done

    async def count() -> None:
        for i, p in enumerate(paths):
            counts[i] = await anyio.to_thread.run_sync(count_samples, p)

    try:
        with single_error():
            async with anyio.create_task_group() as tg:
                flusher = anyio.CancelScope()

                async def flush_journal() -> None:
                    with flusher:
                        await journal.run_flusher()

                tg.start_soon(flush_journal)
                tg.start_soon(count)
                uploads = await run_per_shard(list(paths), list(range(len(paths))), upload,
                                              store.max_concurrency, tracker)
                flusher.cancel()
        meta = dict(metadata or {})
        meta["checksums"] = {u.url: u.sha256 for u in uploads}
        meta["shard_sizes"] = {u.url: u.size for u in uploads}
        meta["etags"] = {u.url: u.etag for u in uploads if u.etag}
        meta["num_samples"] = sum(counts)
        meta[STORE_KEY] = {"endpoint": store.endpoint, "region": store.region}
        entry = LocalDatasetEntry(name, schema_ref, urls, meta, cid=cid)
        await journal.flush()
        if not (await check_fence(index, journal.promotion, journal.epoch or 0)).ours:
            raise stale_run(journal.promotion, journal.epoch or 0, "indexing the entry")
        await index._store_entry(entry)
    finally:
        await journal.release()
    try:
        await journal.forget()  # the entry now says it all
    except PromotionBusyError as exc:  # indexed: done, whatever run owns the journal now
        log.info("the insert is indexed; its journal is left to the newer run: %s", exc)
    return entry


async def _continue_upload(store: S3DataStore, path: str, key: str, size: int,
                           tracker: ProgressTracker, log: ShardLog) -> ShardUpload:
    """Continue the multipart upload ``log`` names: the file's sha256 is read first (the
    kept parts are not read again), the parts it lacks are sent."""
    digest = await anyio.to_thread.run_sync(_file_sha256, path)
    async with await anyio.open_file(path, "rb") as source:

        async def read(n: int) -> bytes:
            return await source.read(n)

        async def skip(n: int) -> None:
            await source.seek(n, os.SEEK_CUR)

        return await store.upload_stream(read, size, key, tracker, known_sha256=digest,
                                         log=log, skip=skip)


async def _finished(index: LocalIndex, cid: str, name: str,
                    urls: Sequence[str]) -> dict[str, Any] | None:
    """The bookkeeping of the entry an earlier run of this insert indexed, if it did."""
    try:
        entry = await index.get_entry(cid)
    except EntryNotFoundError:
        return None
    meta = entry.metadata or {}
    if entry.name != name or set(entry.checksums) != set(urls) or \
            not all(entry.checksums.values()):
        return None
    return {k: meta[k] for k in INTERNAL if k in meta}
