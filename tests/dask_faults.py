"""Fault injection on Dask workers (a WorkerPlugin, pickled by reference: workers import
it from this package). ``StallOnce``: the first worker to start more than ``after``
upload parts writes its pid to ``flag`` and then hangs every part it sends, so the test
can SIGKILL it mid-copy; a worker started after that (the nanny's restart) runs clean."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from distributed.diagnostics.plugin import WorkerPlugin

from atdata_async._backends import s3_store as _store


class StallOnce(WorkerPlugin):
    name = "atdata-stall-once"

    def __init__(self, flag: str, after: int, sent_log: str) -> None:
        self.flag, self.after, self.sent_log = flag, after, sent_log

    def setup(self, worker) -> None:
        self._original = original = _store.S3DataStore._send_part
        plugin, state = self, {"started": 0, "stalled": Path(self.flag).exists()}

        async def send_part(store, key, upload_id, number, data, *args, **kw):
            state["started"] += 1  # parts start together (streamed): count starts, not ends
            if not state["stalled"] and state["started"] > plugin.after:
                try:
                    fd = os.open(plugin.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    state["stalled"] = "me"
            if state["stalled"] == "me":
                await anyio.sleep(3600)
            await original(store, key, upload_id, number, data, *args, **kw)
            with open(plugin.sent_log, "a") as f:
                f.write(f"{key} {number}\n")

        _store.S3DataStore._send_part = send_part

    def teardown(self, worker) -> None:
        _store.S3DataStore._send_part = self._original


class SlowParts(WorkerPlugin):
    """Every upload part a worker sends waits ``delay`` seconds first (a slow network),
    so that a test can kill the coordinator while the workers are still copying."""

    name = "atdata-slow-parts"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def setup(self, worker) -> None:
        self._original = original = _store.S3DataStore._send_part
        delay = self.delay

        async def send_part(store, *args, **kw):
            await anyio.sleep(delay)
            await original(store, *args, **kw)

        _store.S3DataStore._send_part = send_part

    def teardown(self, worker) -> None:
        _store.S3DataStore._send_part = self._original


class Gate(WorkerPlugin):
    """Per run (the epoch of the task's fence): after ``after`` upload parts a run's tasks
    on a worker have started, write ``{folder}/waiting-{epoch}`` and hold every further
    part until ``{folder}/open-{epoch}`` (or ``open-all``) exists. Lets a test line up a
    stale task and a rerun's task on the same upload, in the order it wants."""

    name = "atdata-gate"

    def __init__(self, folder: str, after: int) -> None:
        self.folder, self.after = folder, after

    def setup(self, worker) -> None:
        from atdata_async._pipeline.fence import current_fence

        self._original = original = _store.S3DataStore._send_part
        folder, after, started = Path(self.folder), self.after, {}

        async def send_part(store, *args, **kw):
            fence = current_fence.get()
            if fence is not None:
                n = started[fence.epoch] = started.get(fence.epoch, 0) + 1
                if n > after:
                    (folder / f"waiting-{fence.epoch}").touch()
                    try:
                        while not ((folder / f"open-{fence.epoch}").exists()
                                   or (folder / "open-all").exists()):
                            await anyio.sleep(0.02)
                    except BaseException:  # the part's buffer token: released by the send
                        store.buffers().release_on_behalf_of(args[5])
                        raise
            await original(store, *args, **kw)

        _store.S3DataStore._send_part = send_part

    def teardown(self, worker) -> None:
        _store.S3DataStore._send_part = self._original


class FailOnce(WorkerPlugin):
    """The first upload part sent on any worker (the one that creates ``flag``) fails
    with a StorageError; every other part goes through."""

    name = "atdata-fail-once"

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def setup(self, worker) -> None:
        from atdata_async._errors import StorageError

        self._original = original = _store.S3DataStore._send_part
        flag = self.flag

        async def send_part(store, key, upload_id, number, data, digest, token, *args):
            try:
                fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return await original(store, key, upload_id, number, data, digest, token,
                                      *args)
            os.write(fd, key.encode())
            os.close(fd)
            store.buffers().release_on_behalf_of(token)
            raise StorageError(f"UploadPart {number} of {key}: injected failure")

        _store.S3DataStore._send_part = send_part

    def teardown(self, worker) -> None:
        _store.S3DataStore._send_part = self._original
