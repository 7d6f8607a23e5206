"""Fencing a run's multipart uploads: a store that completes or aborts an upload only
while the run's epoch still holds the promotion (see docs/scale-out.md, Fencing)."""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from .._backends.s3_store import S3DataStore
from .._errors import AtdataError
from .journal import holds_epoch, stale_run

if TYPE_CHECKING:
    from .._backends.redis_index import LocalIndex

log = logging.getLogger("atdata_async.executor")


@dataclass(frozen=True)
class Fence:
    """The run a worker's current task belongs to: its journal and epoch."""

    index: LocalIndex
    promotion: str
    epoch: int

    async def holds(self) -> bool:
        return await holds_epoch(self.index, self.promotion, self.epoch)


current_fence: contextvars.ContextVar[Fence | None] = contextvars.ContextVar(
    "atdata_async_fence", default=None)


class FencedStore(S3DataStore):
    """A worker's store: completes or aborts a multipart upload only while the task's
    run still holds the promotion's epoch (a store shared by a worker's tasks; the
    task's fence is in ``current_fence``)."""

    async def complete_multipart(self, key: str, upload_id: str, etags: dict[int, str]) -> str:
        fence = current_fence.get()
        if fence is not None and not await fence.holds():
            raise stale_run(fence.promotion, fence.epoch, f"completing the upload of {key}")
        return await super().complete_multipart(key, upload_id, etags)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        fence = current_fence.get()
        if fence is not None:
            with anyio.CancelScope(shield=True):
                try:
                    ours = await fence.holds()
                except AtdataError as exc:
                    log.warning("not aborting upload %s of %s: cannot check the epoch: %s",
                                upload_id, key, exc)
                    return
            if not ours:
                log.info("not aborting upload %s of %s: epoch %d is stale (a newer run "
                         "owns it)", upload_id, key, fence.epoch)
                return
        await super().abort_multipart(key, upload_id)
