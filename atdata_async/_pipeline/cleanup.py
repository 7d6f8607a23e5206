"""Cleanup: find, and on request remove, what failed or killed promotions and inserts left
in a store.

Garbage is an open multipart upload, or an object under the prefix, that nothing refers
to: no published dataset record of the account, no entry of the local index, and no
live journal (a promotion running now, or one a rerun could still resume; ``forget``
gives those up). A dry run by default. Its inputs are read in an order that keeps a
promotion starting meanwhile safe: the store is listed first, then the journals (a run
journals its plan before it writes any object), then the records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anyio

from .._backends.redis_index import LocalIndex
from .._backends.s3_store import S3DataStore
from .._backends.xrpc import AtmosphereClient
from .._errors import AuthError, StorageError
from .._model.lexicon import DATASET_COLLECTION
from .._model.urls import parse_s3_url, url_kind
from .journal import forget_journal, load_journals


@dataclass
class CleanupReport:
    """What a cleanup found (and removed, when ``removed``)."""

    uploads: list[dict[str, Any]] = field(default_factory=list)   # key, upload_id, initiated
    objects: list[dict[str, Any]] = field(default_factory=list)   # key, size
    journals: list[dict[str, Any]] = field(default_factory=list)  # promotion, kind, name, state
    kept: int = 0  # objects under the prefix that something refers to
    removed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"uploads": self.uploads, "objects": self.objects, "journals": self.journals,
                "kept": self.kept, "removed": self.removed}


async def cleanup_promotions(
    local_index: LocalIndex,
    data_store: S3DataStore,
    client: AtmosphereClient,
    *,
    prefix: str = "promoted",
    remove: bool = False,
    forget: bool = False,
) -> CleanupReport:
    """List (and with ``remove=True`` delete) uploads and objects under ``prefix`` that no
    published record, local entry or live journal (of a promotion or an insert: an
    insert's shards go under its own prefix, so pass that) refers to. ``forget=True`` gives up
    the journals of promotions that are not running (they can no longer be resumed)."""
    if not client.is_authenticated:
        raise AuthError("cleanup", None, "NotLoggedIn",
                        "cleanup reads the account's records to know what they point to: "
                        "call client.login() first")
    where = prefix.strip("/")
    where = f"{where}/" if where else ""
    uploads = await data_store.list_multipart_uploads(where)
    objects = await data_store.list_objects(where)
    report = CleanupReport()
    protected: set[str] = set()
    dropped: list[str] = []
    for pkey, fields in (await load_journals(local_index)).items():
        plan = json.loads(fields.get("plan", "{}"))
        if plan.get("bucket") != data_store.bucket or plan.get("endpoint") != data_store.endpoint:
            continue
        keys = {s[1] for s in plan.get("shards", []) if s[1]}
        status = fields.get("status")
        state = ("running" if "_lease" in fields else
                 "published" if status == "published" else "resumable")
        live = state == "running" or (state == "resumable" and not forget)
        if live:
            protected |= keys
        elif state == "resumable":
            dropped.append(pkey)
        report.journals.append({"promotion": pkey[:16], "kind": plan.get("kind", "promotion"),
                                "name": plan.get("name"),
                                "state": state if live or state == "published" else "forgotten",
                                "shards": len(keys)})
    async for rec in client.list_records(DATASET_COLLECTION):
        storage = rec.get("value", {}).get("storage", {})
        if isinstance(storage, dict) and storage.get("bucket") == data_store.bucket:
            protected |= {s.get("key") for s in storage.get("shards", []) if isinstance(s, dict)}
    for entry in await local_index.list_entries():
        for url in entry.data_urls:
            if url_kind(url) == "s3" and parse_s3_url(url).bucket == data_store.bucket:
                protected.add(parse_s3_url(url).key)
    report.uploads = [{"key": u["Key"], "upload_id": u["UploadId"],
                       "initiated": str(u.get("Initiated", ""))}
                      for u in uploads if u["Key"] not in protected]
    report.objects = [{"key": k, "size": size} for k, (size, _) in sorted(objects.items())
                      if k not in protected]
    report.kept = len(objects) - len(report.objects)
    if remove:
        async with anyio.create_task_group() as tg:
            for u in report.uploads:
                tg.start_soon(data_store.abort_multipart, u["key"], u["upload_id"])
        if report.objects:
            await data_store.delete_keys([o["key"] for o in report.objects])
        aborted = {u["upload_id"] for u in report.uploads}
        left = [u for u in await data_store.list_multipart_uploads(where)
                if u["UploadId"] in aborted]
        if left:  # an abort is logged, not raised, where it runs after another failure
            raise StorageError(f"cleanup could not abort {len(left)} upload(s), e.g. "
                               f"{data_store.url(left[0]['Key'])}")
        for pkey in dropped:
            await forget_journal(local_index, pkey)
        report.removed = True
    return report
