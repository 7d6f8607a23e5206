"""A promotion subprocess for kill tests: ``python -m tests.promote_child ARGS...`` runs
``atdata-async ARGS...`` with the tests' small parts; with STALL_AFTER=N every upload
request after the N-th hangs (so the parent can SIGKILL it mid-copy); with
STOP_BEFORE_COMPLETE=1 it SIGSTOPs itself before its first fenced CompleteMultipartUpload
(a stall past its lease), and once continued that call runs shielded to its end."""

from __future__ import annotations

import os
import signal
import sys

import anyio

from atdata_async import cli
from atdata_async._backends import s3_store as _store
from atdata_async._pipeline import fence as _fence

PART = int(os.environ.get("TEST_PART", 256 * 1024))
STALL_AFTER = int(os.environ.get("STALL_AFTER", "0"))
_sent = 0
_init = _store.S3DataStore.__init__


def small_parts(self, *args, **kw):
    kw.update(part_size=PART, multipart_threshold=2 * PART, min_part_size=PART,
              copy_multipart_threshold=4 * PART, copy_part_size=PART)
    _init(self, *args, **kw)


async def _gate() -> None:
    global _sent
    _sent += 1
    if STALL_AFTER and _sent > STALL_AFTER:
        print(f"stalled after {STALL_AFTER} uploads", file=sys.stderr, flush=True)
        await anyio.sleep(3600)


def gated(method):
    async def wrapper(self, *args, **kw):
        await _gate()
        return await method(self, *args, **kw)
    return wrapper


def stop_before_complete(method):
    stopped = []

    async def wrapper(self, *args, **kw):
        if not stopped:
            stopped.append(True)
            print("stopping before CompleteMultipartUpload", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            with anyio.CancelScope(shield=True):  # the fence decides, not a cancellation
                return await method(self, *args, **kw)
        return await method(self, *args, **kw)
    return wrapper


_store.S3DataStore.__init__ = small_parts
_store.S3DataStore.put_bytes = gated(_store.S3DataStore.put_bytes)
_store.S3DataStore._send_part = gated(_store.S3DataStore._send_part)

if os.environ.get("STOP_BEFORE_COMPLETE"):
    _fence.FencedStore.complete_multipart = stop_before_complete(
        _fence.FencedStore.complete_multipart)

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
