"""The one process-wide BlockingPortal behind the sync facade.

An anyio event loop runs in a daemon thread; every facade call is ``portal.call`` on it,
so every async resource (S3 client, redis pool, httpx client) lives on that loop.
At interpreter exit, resources registered with ``close_at_exit`` are closed on the loop.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

R = TypeVar("R")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
# Held strongly (by id: a core need not be hashable): a facade object dropped without
# close() would otherwise leave what its core opened on the loop (an S3 client shared
# through s3_store) unclosed until the interpreter's end, which warns "Unclosed client
# session"; close() lets go of it.
_closers: dict[int, Any] = {}
CLEANUP_WAIT = 60.0
"""Seconds an interrupted facade call waits for its cancelled task to clean up."""


def get_portal() -> BlockingPortal:
    """The running portal, started on first use."""
    global _portal
    with _lock:
        if _portal is None:
            _portal = _start()
            atexit.register(_shutdown)
        return _portal


def _start() -> BlockingPortal:
    ready = threading.Event()
    box: list[BlockingPortal] = []

    async def serve() -> None:
        async with BlockingPortal() as portal:
            box.append(portal)
            ready.set()
            await portal.sleep_until_stopped()

    thread = threading.Thread(target=anyio.run, args=(serve,), name="atdata-async-portal",
                              daemon=True)
    thread.start()
    ready.wait()
    return box[0]


def call(fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
    """Run ``await fn(*args, **kwargs)`` on the portal's loop and return its result.

    A KeyboardInterrupt (or any exception) raised in the waiting thread cancels the task
    and waits for its cleanup (shielded multipart aborts) before propagating, so Ctrl-C
    in a sync script leaves nothing behind.
    """
    finished = threading.Event()

    async def run() -> R:
        try:
            return await fn(*args, **kwargs)
        finally:
            finished.set()

    future = get_portal().start_task_soon(run)
    try:
        return future.result()
    except BaseException:
        if future.cancel():
            finished.wait(CLEANUP_WAIT)
        raise


def close_at_exit(resource: Any) -> None:
    """Remember an object with ``async aclose()`` to close on the loop at exit."""
    _closers[id(resource)] = resource


def _shutdown() -> None:
    global _portal
    portal = _portal
    if portal is None:
        return

    async def close_all() -> None:
        for resource in list(_closers.values()):
            with contextlib.suppress(Exception):
                await resource.aclose()

    try:
        portal.call(close_all)
        portal.call(portal.stop)
    except RuntimeError:
        pass
    _portal = None


def blocking(method: Callable[..., Any]) -> Callable[..., Any]:
    """A blocking twin of an async method or async generator, with the same signature.

    Arguments that are facade objects are passed on as their async cores; an async
    generator's items come back as a list.
    """
    if inspect.isasyncgenfunction(method):

        async def collect(*args: Any, **kwargs: Any) -> list[Any]:
            return [item async for item in method(*args, **kwargs)]

        target: Callable[..., Any] = collect
    else:
        target = method

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple(core_of(a) for a in args)
        kwargs = {k: core_of(v) for k, v in kwargs.items()}
        return call(target, self._core, *args, **kwargs)

    return wrapper


def blocking_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A blocking twin of a module-level coroutine function."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(core_of(a) for a in args)
        kwargs = {k: core_of(v) for k, v in kwargs.items()}
        return call(fn, *args, **kwargs)

    return wrapper


def core_of(value: Any) -> Any:
    """The async object behind a facade object (anything else unchanged)."""
    return getattr(value, "_core", value) if isinstance(value, Facade) else value


class Facade:
    """Base of facade classes: holds the async core and forwards attribute reads to it."""

    _core: Any
    _core_type: type

    def __init_subclass__(cls, core: type | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if core is None:
            return
        cls._core_type = core
        cls.__doc__ = core.__doc__
        for name, member in vars(core).items():
            if name.startswith("_") or name in vars(cls):
                continue
            if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
                setattr(cls, name, blocking(member))

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            self._facade_init(*args, **kwargs)

        cls.__init__ = functools.wraps(core.__init__)(__init__)  # type: ignore[misc]

    def _facade_init(self, *args: Any, **kwargs: Any) -> None:
        core = self._core_type(*(core_of(a) for a in args),
                               **{k: core_of(v) for k, v in kwargs.items()})
        object.__setattr__(self, "_core", core)
        if hasattr(core, "aclose"):
            close_at_exit(core)

    def __getattr__(self, name: str) -> Any:
        if name == "_core":
            raise AttributeError(name)
        return getattr(self._core, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._core, name, core_of(value))

    def __repr__(self) -> str:
        return repr(self._core)

    def close(self) -> None:
        """Release the core's connections (blocking ``aclose``)."""
        if hasattr(self._core, "aclose"):
            call(self._core.aclose)
            _closers.pop(id(self._core), None)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
