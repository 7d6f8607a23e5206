"""A fault-injecting HTTP/1.1 reverse proxy on 127.0.0.1, for tests and the soak benchmark.

Put it in front of moto S3 or the PDS and tell it what to break:

    proxy = FaultProxy(moto.url).start()
    proxy.add(Fault("cut", method="GET", path=r"/bucket/", after=1000))   # cut a body
    proxy.add(Fault("status", path=r"createRecord", status=502))           # never forwarded
    proxy.add(Fault("lose", path=r"createRecord"))      # forwarded, its answer replaced by 502
    proxy.add(Fault("reset", path=r"applyWrites"))      # the connection dropped, no answer
    proxy.add(Fault("headers", path=r"applyWrites", headers={"ratelimit-remaining": "0"}))
    proxy.add(Fault("body", method="POST", path=r"uploadId=",
                    replace=(rb"<ETag>[^<]*</ETag>", b"<ETag></ETag>")))  # an answer rewritten
    proxy.add(Fault("status", method="PUT", status=503, payload=SLOW_DOWN, times=None,
                    inflight=4))  # S3 throttling: SlowDown beyond 4 requests in flight
    proxy.add(Fault("tamper", method="PUT", replace=(rb"^.", b"X")))  # a request body
                                        # changed on its way (same length), then forwarded
    proxy.add(Fault("delay", method="PUT", seconds=0.3, times=None))  # .peak: most at once

Each fault fires ``times`` times (None: always), after letting ``skip`` matches pass.
Requests are forwarded one per upstream connection (``Connection: close``), so a fault
never poisons a kept-alive connection. ``proxy.seen`` lists (method, path, fault kind),
``proxy.headers`` each request's headers (names lower-cased) in the same order.
It runs its own event loop in a daemon thread, so sync and async tests can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Fault:
    kind: str  # status | lose | cut | reset | headers | delay | body | tamper
    method: str | None = None
    path: str = ""
    status: int = 502
    after: int = 0  # cut: body bytes sent before the cut
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # delay
    replace: tuple[bytes, bytes] | None = None  # body: (regex, replacement) on the answer,
    # tamper: on the request's body (the first match; keep its length)
    payload: bytes | None = None  # status: the answer's body (default: a JSON error)
    inflight: int | None = None  # fire only while more requests than this are in flight
    times: int | None = 1
    skip: int = 0
    on_fire: Callable[[], None] | None = None  # run in the proxy's thread as it fires
    # (after the upstream answered, for the kinds that forward)
    fired: int = 0
    active: int = 0  # requests this fault fired on that are not answered yet
    peak: int = 0  # the most of them at once (a concurrency count, not a timing)

    def matches(self, method: str, path: str, inflight: int = 0) -> bool:
        if self.method is not None and method != self.method:
            return False
        if not re.search(self.path, path):
            return False
        if self.inflight is not None and inflight <= self.inflight:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return self.times is None or self.fired < self.times


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, str | None]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._inflight = 0  # requests read and not yet answered
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def count(self, method: str | None = None, path: str = "") -> int:
        """Requests seen (faulted or not) whose method and path match."""
        with self._lock:
            return sum(1 for m, p, _ in self.seen
                       if (method is None or m == method) and re.search(path, p))

    def sent(self, method: str | None = None, path: str = "") -> list[dict[str, str]]:
        """The headers of the requests seen whose method and path match, in order."""
        with self._lock:
            return [h for (m, p, _), h in zip(self.seen, self.headers, strict=True)
                    if (method is None or m == method) and re.search(path, p)]

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()
            async with self._server:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._server.serve_forever()
            for task in list(self._handlers):  # connections still open: end them here
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        try:
            loop.run_until_complete(serve())
        finally:
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one client connection ---------------------------------------------------------

    def _pick(self, method: str, path: str, headers: list[tuple[str, str]]) -> Fault | None:
        with self._lock:
            self.headers.append({k.lower(): v for k, v in headers})
            fault = next((f for f in self.faults if f.matches(method, path, self._inflight)),
                         None)
            if fault is not None:
                fault.fired += 1
                fault.active += 1
                fault.peak = max(fault.peak, fault.active)
            self.seen.append((method, path, fault.kind if fault else None))
        return fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # held here: asyncio keeps a connection's task only through its transport, so a
        # task whose client went away mid-request was collected pending (a warning that
        # failed whichever test the collection fell in)
        task = asyncio.current_task()
        self._handlers.add(task)  # type: ignore[arg-type]
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)  # type: ignore[arg-type]

    async def _one_request(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        request_line = await reader.readline()
        if not request_line.strip():
            return False
        method, path, _ = request_line.decode("latin-1").split(" ", 2)
        headers: list[tuple[str, str]] = []
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        lower = {k.lower(): v for k, v in headers}
        if lower.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if "chunked" in lower.get("transfer-encoding", "").lower():
            raise RuntimeError("faultproxy does not forward chunked request bodies")
        body = await reader.readexactly(int(lower.get("content-length", "0") or 0))
        with self._lock:
            self._inflight += 1
        try:
            return await self._answer(request_line, method, path, headers, body, writer)
        finally:
            with self._lock:
                self._inflight -= 1

    async def _answer(self, request_line: bytes, method: str, path: str,
                      headers: list[tuple[str, str]], body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        fault = self._pick(method, path, headers)
        try:
            return await self._answer_with(fault, request_line, method, path, headers, body,
                                           writer)
        finally:
            if fault is not None:
                with self._lock:
                    fault.active -= 1

    async def _answer_with(self, fault: Fault | None, request_line: bytes, method: str,
                           path: str, headers: list[tuple[str, str]], body: bytes,
                           writer: asyncio.StreamWriter) -> bool:
        kind = fault.kind if fault else None
        if kind == "delay":
            await asyncio.sleep(fault.seconds)  # type: ignore[union-attr]
        if fault is not None and fault.on_fire is not None and kind in ("status", "reset"):
            fault.on_fire()
        if kind == "status":
            writer.write(_response(fault.status,  # type: ignore[union-attr]
                                   fault.payload or  # type: ignore[union-attr]
                                   b'{"error":"InjectedFault","message":"injected"}',
                                   fault.headers))  # type: ignore[union-attr]
            await writer.drain()
            return False
        if kind == "reset" and fault is not None:
            _abort(writer)
            return False
        if kind == "tamper" and fault is not None and fault.replace is not None:
            body = re.sub(fault.replace[0], fault.replace[1], body, count=1, flags=re.DOTALL)
        forwarded = [(k, v) for k, v in headers
                     if k.lower() not in ("connection", "expect", "keep-alive")]
        head = request_line + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in forwarded)
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host,
                                                             self.upstream_port)
        try:
            up_writer.write(head + b"Connection: close\r\n\r\n" + body)
            await up_writer.drain()
            raw = await up_reader.read()
        finally:
            up_writer.close()
        if fault is not None and fault.on_fire is not None:
            fault.on_fire()
        if kind == "lose":
            writer.write(_response(fault.status, b'{"error":"InjectedFault","message":"lost"}'))  # type: ignore[union-attr]
            await writer.drain()
            return False
        head_end = raw.find(b"\r\n\r\n") + 4
        response_head, response_body = raw[:head_end], raw[head_end:]
        if kind == "headers" and fault is not None:
            response_head = _override_headers(response_head, fault.headers)
        if kind == "body" and fault is not None and fault.replace is not None:
            response_body = re.sub(fault.replace[0], fault.replace[1], response_body)
            response_head = _override_headers(response_head,
                                              {"Content-Length": str(len(response_body))})
        if kind == "cut" and fault is not None:
            writer.write(response_head + response_body[:fault.after])
            await writer.drain()
            writer.close()  # flushed, then FIN: the client sees a body cut short
            return False
        writer.write(response_head + response_body)
        await writer.drain()
        return False  # upstream was asked to close: so do we


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _override_headers(head: bytes, override: dict[str, str]) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    names = {k.lower() for k in override}
    kept = [lines[0]] + [ln for ln in lines[1:] if ln and ln.split(":", 1)[0].lower() not in names]
    kept += [f"{k}: {v}" for k, v in override.items()]
    return ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1")


def _abort(writer: asyncio.StreamWriter) -> None:
    """Drop the connection at once (an RST where the platform allows it)."""
    transport = writer.transport
    if hasattr(transport, "abort"):
        transport.abort()
    else:
        writer.close()
