"""S3DataStore: the one place S3 is spoken to, and where botocore errors become ours.

One aiobotocore client per store, created lazily on the running event loop and closed with
the store. Retries are botocore's own ("standard" mode); nothing here loops around them.
Memory is bounded by ``max_concurrency x max(part_size, multipart_threshold)``: every
request that holds a buffer first takes a token from one CapacityLimiter for all shards.
Server-side copies (CopyObject, UploadPartCopy) hold no buffer: they take tokens from
their own limiter, ``max_server_copies`` (the server's latency, not our memory, is what
they wait on), paced like the buffers.
Copies of shards whose sha256 was recorded at insert hold no buffer at all: across
endpoints their bytes stream from the source's GET into the PutObject or UploadPart, so
their memory is a few socket buffers per request, whatever the shard's size. They take
tokens from a third limiter, ``max_streamed_copies``, paced the same way; ``max_memory``
counts each as ``STREAM_BUFFER`` (its chunk buffers), not as a whole part.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import datetime
import email.utils
import hashlib
import io
import logging
import os
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import anyio
import msgspec
from aiobotocore.session import AioSession
from botocore.auth import AUTH_TYPE_MAPS, S3SigV4Auth
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.loaders import JSONFileLoader, Loader

from .._errors import (
    ConfigurationError,
    ObjectNotFoundError,
    SourceChangedError,
    StorageError,
)
from .._model.pace import Pace, is_throttle
from .._model.parts import MAX_SINGLE_COPY, MIB, Part, part_size_of_etag, plan_parts
from .._model.progress import ProgressCallback, ProgressTracker
from .._model.redact import mask_key_id
from .._model.urls import S3Location, parse_s3_url
from .._model.validate import check_store_sizes, check_text, redact_userinfo, url_userinfo
from .s3_light import GET_BUFSIZE, LightRequests
from .streams import Pull, sha256_of_chunks
from .tasks import run_per_shard, single_error

log = logging.getLogger("atdata_async.s3")
# What max_memory counts for a streamed copy in flight: the GET's read buffer (aiohttp
# pauses the socket beyond it) and the chunk on its way into the PUT.
STREAM_BUFFER = 2 * GET_BUFSIZE

_REQUIRED_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The sha256 of the body being sent, when we already know it (computed off the event loop,
# or recorded at insert): the request is signed with it instead of botocore hashing the
# whole body again on the loop, and S3 refuses a body that does not match it.
_body_sha256: contextvars.ContextVar[str | None] = contextvars.ContextVar("body_sha256",
                                                                          default=None)
_KNOWN_SHA256_SIGNER = "s3v4-known-sha256"


class _KnownSha256Auth(S3SigV4Auth):
    """SigV4 for S3 whose payload hash is ``_body_sha256`` when set. botocore's own
    signer drops any X-Amz-Content-SHA256 given to it and reads the body to hash it."""

    def payload(self, request: Any) -> str:
        digest = _body_sha256.get()
        return digest if digest is not None else super().payload(request)


AUTH_TYPE_MAPS.setdefault(_KNOWN_SHA256_SIGNER, _KnownSha256Auth)


def _choose_known_sha256_signer(signature_version: Any = None, **_: Any) -> str | None:
    """Registered first, ahead of botocore's own choice (which would settle on s3v4)."""
    if signature_version in ("v4", "s3v4") and _body_sha256.get() is not None:
        return _KNOWN_SHA256_SIGNER
    return None


# Endpoint-rule parameters that S3's ruleset never reads (botocore passes them, so its own
# cache of resolved endpoints misses on every new key); tests/test_store.py checks the
# ruleset still does not refer to them.
_UNREAD_ENDPOINT_PARAMS = frozenset({"Key", "Prefix", "CopySource"})


def _lighten_requests(client: Any) -> None:
    """Per-request work botocore repeats for nothing, cut (a third of its CPU per small
    object, profiled on radosgw): the endpoint rules are evaluated for every object key
    (~2 ms), and the User-Agent is rebuilt twice per request. Both are cached per client
    by what they actually depend on. Private attributes, so each part is optional."""
    provider = getattr(getattr(client, "_ruleset_resolver", None), "_provider", None)
    if provider is not None and callable(getattr(provider, "resolve_endpoint", None)):
        resolve = provider.resolve_endpoint
        endpoints: dict[tuple[Any, ...], Any] = {}

        def resolve_endpoint(**params: Any) -> Any:
            key = tuple(sorted((k, v) for k, v in params.items()
                               if k not in _UNREAD_ENDPOINT_PARAMS))
            found = endpoints.get(key)
            if found is None:
                found = resolve(**params)
                if len(endpoints) < 256:
                    endpoints[key] = found
            return found

        provider.resolve_endpoint = resolve_endpoint
    creator = getattr(client, "_user_agent_creator", None)
    if creator is not None and callable(getattr(creator, "to_string", None)):
        from botocore.context import get_context

        build = creator.to_string
        agents: dict[tuple[str, ...], str] = {}

        def to_string() -> str:
            context = get_context()
            key = tuple(sorted(getattr(context, "features", ()) or ()))
            agent = agents.get(key)
            if agent is None:
                agent = agents[key] = build()
            return agent

        creator.to_string = to_string
    factory = getattr(getattr(client, "_endpoint", None), "_response_parser_factory", None)
    if factory is not None and callable(getattr(factory, "set_parser_defaults", None)):
        factory.set_parser_defaults(timestamp_parser=_parse_timestamp)


def _parse_timestamp(value: Any) -> Any:
    """S3's two timestamp forms (``Last-Modified: Tue, 01 Dec 2026 11:42:47 GMT`` and
    ISO 8601 in XML) without dateutil's general parser (~4% of the CPU of a small-object
    copy); anything else goes to botocore's. Same values and tzinfo as botocore's."""
    from botocore.utils import parse_timestamp
    from dateutil.tz import tzutc

    if isinstance(value, str):
        try:
            if value.endswith(" GMT"):
                parsed = email.utils.parsedate_to_datetime(value)
            elif value.endswith("Z"):
                parsed = datetime.datetime.fromisoformat(value)
            else:
                parsed = None
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None and parsed.utcoffset() == datetime.timedelta(0):
            return parsed.replace(tzinfo=tzutc())
    return parse_timestamp(value)


class _BufferReader:
    """A read-only file over a buffer, without copying it whole. botocore wraps a bytes
    body in a BytesIO, which aiohttp copies whole (getbuffer unshares it); an io.IOBase
    body aiohttp reads in 64 KiB hops through a worker thread and closes through one (a
    tenth of the CPU of a small upload). This one is no IOBase: aiohttp iterates it, 256
    KiB at a time, on the loop. Seekable, so botocore can hash it and rewind it to retry."""

    CHUNK = 256 * 1024

    def __init__(self, data: bytes | bytearray) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def __len__(self) -> int:
        return len(self._view)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._view[self._pos:self._pos + len(buffer)]
        buffer[:len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size: int | None = -1) -> bytes:
        left = len(self._view) - self._pos
        buffer = bytearray(left if size is None or size < 0 else min(size, left))
        return bytes(buffer[:self.readinto(buffer)])

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[memoryview]:
        while True:
            buffer = bytearray(min(self.CHUNK, len(self._view) - self._pos))
            n = self.readinto(buffer) if buffer else 0
            if not n:
                return
            yield memoryview(buffer)[:n]


class _StreamedBody:
    """A PutObject or UploadPart body that is another store's GetObject body (the whole
    object, or the range ``[start, start + size)``), passed through chunk by chunk as the
    socket hands it over: nothing is buffered or joined here, so memory is a few socket
    buffers whatever the size.

    aiohttp iterates it once per send, so every send (a botocore retry included) starts
    a fresh GET of the same version (If-Match); ``seek(0)`` is what botocore calls to
    rewind before a retry, and needs to do nothing. A failure of the GET side is kept in
    ``error``, to be raised instead of whatever the PUT side saw of it. With ``md5``,
    the bytes of the last send are md5-hashed on the way (a part's ETag is their md5:
    what S3 received can then be checked without a second read)."""

    def __init__(self, source: S3DataStore, url: str, size: int, etag: str | None,
                 start: int | None = None, md5: bool = False) -> None:
        self.source, self.url, self.size, self.etag = source, url, size, etag
        self.start = start
        self.want_md5 = md5
        self.md5: Any = None
        self.error: BaseException | None = None
        self._opened: aiohttp.ClientResponse | None = None
        self._loc: S3Location | None = None

    async def open(self) -> None:
        """The source's GET sent and answered before the PUT goes out (light path): a
        changed or missing source fails here, its retries are the source's own."""
        self.close()
        self.error = None
        light = self.source.light()
        assert light is not None
        loc = self._loc = self._loc or parse_s3_url(self.url)
        with self.source.errors("GetObject", self.url):
            self._opened = await self.source.light_call(
                "GetObject", lambda: light.get(loc.bucket, loc.key, self._get_headers()))

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()  # unread: the connection cannot be reused
            self._opened = None

    def _get_headers(self) -> dict[str, str]:
        headers = {"If-Match": _quoted(self.etag)} if self.etag else {}
        if self.start is not None:
            headers["Range"] = f"bytes={self.start}-{self.start + self.size - 1}"
        return headers

    def __len__(self) -> int:
        return self.size

    def read(self, *_: Any) -> bytes:
        """Only so botocore's validator takes this for a file: a blocking read of a
        body that is on its way from another server has no meaning."""
        raise io.UnsupportedOperation("a streamed body is read by iterating it")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        loc = parse_s3_url(self.url)
        extra = {"IfMatch": _quoted(self.etag)} if self.etag else {}
        if self.start is not None:
            extra["Range"] = f"bytes={self.start}-{self.start + self.size - 1}"
        md5 = self.md5 = hashlib.md5(usedforsecurity=False) if self.want_md5 else None
        self.error = None
        sent = 0
        try:
            opened, self._opened = self._opened, None
            with self.source.errors("GetObject", self.url):
                if opened is not None:
                    raw = opened
                else:
                    s3 = await self.source.client()
                    response = await s3.get_object(Bucket=loc.bucket, Key=loc.key, **extra)
                    raw = response["Body"].__wrapped__  # the aiohttp response, bare
                try:
                    while chunk := await raw.content.readany():
                        sent += len(chunk)
                        if sent > self.size:
                            break
                        if md5 is not None:
                            md5.update(chunk)
                        yield chunk
                finally:
                    raw.release()
            if sent != self.size:
                raise _ShortBody(f"GetObject {self.url}: got {sent} bytes, expected "
                                 f"{self.size} (the object changed while read?)")
        except Exception as exc:
            self.error = exc
            raise

    def cut(self) -> bool:
        """Whether the last send failed because the source's body was cut short (worth
        sending again: the next send reads the range afresh)."""
        error = self.error
        while error is not None:
            if isinstance(error, (*_BODY_CUT, _ShortBody)):
                return True
            error = error.__cause__
        return False

    def check(self, etag: str, target: str) -> None:
        """The ETag S3 gave the part against the md5 of what was sent (when the ETag is
        an md5 at all: it is not under SSE-KMS, for one)."""
        etag = etag.strip('"')
        if self.md5 is not None and _MD5_HEX.fullmatch(etag) and \
                etag != self.md5.hexdigest():
            raise StorageError(f"{target}: S3 stored other bytes than were sent (ETag "
                               f"{etag}, md5 of the body {self.md5.hexdigest()})")


class _ShortBody(StorageError):
    """A streamed source body that ended before its announced size."""


_MD5_HEX = re.compile(r"[0-9a-f]{32}")
# S3's answers to a Content-MD5 that is not the md5 of the body it received
_MD5_REFUSED = ("BadDigest", "InvalidDigest")
# Sent as the payload hash of a streamed part: its sha256 cannot be known before it is
# sent (only the whole shard's is recorded); the part's md5 is checked against its ETag.
_UNSIGNED = "UNSIGNED-PAYLOAD"


def _hash_into(hasher: Any, data: bytes) -> str:
    """Feed the running object hash and return the body's own sha256 (in a worker thread)."""
    hasher.update(data)
    return hashlib.sha256(data).hexdigest()


_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                ConnectionClosedError)
# A response body cut short (the connection dropped, a timeout, fewer bytes than announced):
# the read resumes from the byte it reached instead of failing the shard.
_BODY_CUT = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ResponseStreamingError,
             IncompleteReadError, ReadTimeoutError, TimeoutError, ConnectionError)
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_PRECONDITION_CODES = {"PreconditionFailed", "412"}
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}


@dataclass(frozen=True)
class S3Credentials:
    """Where and as whom to talk to S3. The secret never appears in the repr, the access
    key id only masked (``AKIA...WXYZ``: enough to tell two apart, not to use one)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    endpoint: str | None = None
    region: str | None = None
    session_token: str | None = field(default=None, repr=False)  # temporary credentials

    def __repr__(self) -> str:
        return (f"S3Credentials(access_key_id={mask_key_id(self.access_key_id)!r}, "
                f"endpoint={self.endpoint!r}, region={self.region!r})")

    @classmethod
    def load(cls, source: Mapping[str, str] | str | os.PathLike[str]) -> S3Credentials:
        """From a dict or a ``.env`` file with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ..."""
        if isinstance(source, Mapping):
            values, origin = dict(source), "credentials"
        else:
            values, origin = _read_env_file(Path(source)), str(source)
        missing = [k for k in _REQUIRED_KEYS if not values.get(k)]
        if missing:
            raise ConfigurationError(f"{origin} is missing {', '.join(missing)}")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT",
                    "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise ConfigurationError(f"{origin}: {key} must be a string")
        endpoint = values.get("AWS_ENDPOINT") or values.get("AWS_ENDPOINT_URL") or None
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"AWS_ENDPOINT must be an http(s) URL, got {redact_userinfo(endpoint)!r}")
        if endpoint is not None and url_userinfo(endpoint):
            # It would be logged by botocore and published in storageS3 records.
            raise ConfigurationError(f"AWS_ENDPOINT must not carry credentials "
                                     f"(user:password@host): {redact_userinfo(endpoint)!r}; "
                                     "S3 authenticates with the access key")
        return cls(
            access_key_id=values["AWS_ACCESS_KEY_ID"],
            secret_access_key=values["AWS_SECRET_ACCESS_KEY"],
            endpoint=endpoint.rstrip("/") if endpoint else None,
            region=values.get("AWS_REGION") or values.get("AWS_DEFAULT_REGION") or None,
            session_token=values.get("AWS_SESSION_TOKEN") or None,
        )


def _read_env_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read credentials file {path}: {exc.strerror}") from None
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class ShardUpload:
    """What one uploaded or copied shard became. ``verified``: it went up in one PUT that
    carried the sha256 of the very buffer we sent (S3 refuses a mismatch), so no read-back
    is needed."""

    url: str
    size: int
    sha256: str | None
    etag: str | None = None
    verified: bool = False


class UploadLog(Protocol):
    """Who remembers a shard's multipart upload (the promotion journal): the upload to
    continue (``upload_id``, ``part_size``, ``parts`` = number -> ETag), told of each
    step so that a rerun can continue it."""

    upload_id: str | None
    part_size: int | None
    parts: dict[int, str]

    def opened(self, upload_id: str, part_size: int) -> None: ...
    def part(self, number: int, etag: str) -> None: ...
    def closed(self) -> None: ...


class _MsgspecJSONFileLoader(JSONFileLoader):
    """botocore's model files decoded by msgspec: its ``json.loads`` with an OrderedDict
    hook is most of a fresh process's first client (the S3 model and the endpoint
    rules are ~2 MB of JSON)."""

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as fp:
            return msgspec.json.decode(fp.read())


class _ServiceNames:
    """What botocore's ``list_available_services`` answers, checked one name at a time:
    botocore lists every service's folder (~400) to learn whether ``s3`` is one."""

    def __init__(self, loader: _Loader, type_name: str) -> None:
        self._loader, self._type = loader, type_name

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and "/" not in name and any(
            self._loader.file_loader.exists(os.path.join(base, name, version, self._type))
            for base in self._loader.search_paths if os.path.isdir(os.path.join(base, name))
            for version in os.listdir(os.path.join(base, name)))

    def __iter__(self) -> Iterator[str]:  # only for botocore's UnknownServiceError message
        return iter(Loader.list_available_services(self._loader, self._type))


class _Loader(Loader):
    """botocore's loader, cheaper to start (speed, #10); its cache keeps what it read."""

    FILE_LOADER_CLASS = _MsgspecJSONFileLoader

    def list_available_services(self, type_name: str) -> Any:
        return _ServiceNames(self, type_name)


_shared_session: AioSession | None = None


def _session() -> AioSession:
    """One aiobotocore session per process (not aioboto3's, which costs boto3's import
    and nothing the store uses): its loader caches the S3 model, so a second store's
    client costs milliseconds instead of a second read of the model files."""
    global _shared_session
    if _shared_session is None:
        _shared_session = AioSession()
        _shared_session.register_component("data_loader", _Loader())
    return _shared_session


# The store a request is made for (set by ``S3DataStore.errors``), so that a client
# shared by several stores still counts each store's own requests.
_calling_store: contextvars.ContextVar[S3DataStore | None] = contextvars.ContextVar(
    "calling_store", default=None)


def _count_request(request: Any = None, **_: Any) -> None:
    store = _calling_store.get()
    if store is not None:
        store.request_count += 1
        if request is not None and request.method == "PUT" and request.body is not None:
            store._paced(int(request.headers.get("Content-Length") or 0))


def _watch_answer(response: Any = None, **_: Any) -> None:
    """Every answer (before botocore decides on a retry): SlowDown and 503 slow the
    calling store down."""
    store = _calling_store.get()
    if store is None or not response:
        return
    http, parsed = response
    code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    if is_throttle(getattr(http, "status_code", None), code):
        store._throttled()


@dataclass
class _SharedClient:
    client: Any
    stack: contextlib.AsyncExitStack
    users: int = 0
    light: LightRequests | None = None  # the light request path on its session


# Server-side copies in flight by default (s5cmd's default too: 256 workers). On radosgw,
# 1,024 x 1 MiB CopyObjects: 2.75-2.90 s at 256 against 3.09-3.33 s at 32, with less CPU
# on both sides (0.55 vs 0.70 s ours, 3.8 vs 4.2 s the gateway's: more requests per wake-up
# of each), docs/benchmarks.md. A copy holds a connection and no buffer.
SERVER_COPIES = 256
# Streamed copies (GET -> PUT across endpoints) in flight by default: rclone's --transfers
# is 16, and 24 or 32 measured no better on radosgw (docs/benchmarks.md).
STREAMED_COPIES = 16


def copies_within_open_files(soft_limit: int | None = None) -> int:
    """How many server-side copies (one connection each) fit in a quarter of the
    process's soft limit on open files (``RLIMIT_NOFILE``, or ``soft_limit``), at least 8;
    unbounded where there is no limit (or no ``resource`` module)."""
    unbounded = 1 << 30
    if soft_limit is None:
        try:
            import resource
        except ImportError:  # pragma: no cover  (Windows)
            return unbounded
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            return unbounded
    if soft_limit < 0:
        return unbounded
    return max(8, soft_limit // 4)

_ADDRESSING_STYLES = ("path", "virtual", "auto")


# One client per (event loop, endpoint, account, client settings), shared by the stores
# that use it: creating one costs 0.05-0.1 s and its own connection pool.
_clients: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], _SharedClient]] = (
    weakref.WeakKeyDictionary())
_clients_lock: weakref.WeakKeyDictionary[Any, anyio.Lock] = weakref.WeakKeyDictionary()


class S3DataStore:
    """WebDataset shards in one S3 bucket, reached with one lazily created client."""

    def __init__(
        self,
        credentials: Mapping[str, str] | str | os.PathLike[str],
        *,
        bucket: str,
        part_size: int = 16 * MIB,
        multipart_threshold: int = 32 * MIB,
        max_concurrency: int = 8,
        min_part_size: int = 5 * MIB,
        max_attempts: int = 5,
        copy_multipart_threshold: int = MAX_SINGLE_COPY,
        copy_part_size: int = 128 * MIB,
        max_memory: int | None = None,
        adaptive: bool = True,
        max_server_copies: int = SERVER_COPIES,
        max_streamed_copies: int = STREAMED_COPIES,
        light_requests: bool = True,
        addressing_style: str = "path",
        signed_payload: bool | None = None,
    ) -> None:
        check_text("bucket", bucket)
        if addressing_style not in _ADDRESSING_STYLES:
            raise ConfigurationError(f"addressing_style must be one of {_ADDRESSING_STYLES}, "
                                     f"got {addressing_style!r}")
        if not bucket or "/" in bucket:
            raise ConfigurationError(f"bucket must be a bare bucket name, got {bucket!r}")
        check_store_sizes(part_size=part_size, multipart_threshold=multipart_threshold,
                          min_part_size=min_part_size,
                          copy_multipart_threshold=copy_multipart_threshold,
                          copy_part_size=copy_part_size, max_concurrency=max_concurrency,
                          max_attempts=max_attempts, max_server_copies=max_server_copies,
                          max_streamed_copies=max_streamed_copies)
        if not isinstance(credentials, Mapping | str | os.PathLike):
            raise ConfigurationError("credentials must be a dict, or the path of a .env file, "
                                     f"got {type(credentials).__name__}")
        self.credentials = S3Credentials.load(credentials)
        self.bucket = bucket
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.max_concurrency = max_concurrency
        self.min_part_size = min_part_size
        self.max_attempts = max_attempts
        self.copy_multipart_threshold = min(copy_multipart_threshold, MAX_SINGLE_COPY)
        self.copy_part_size = copy_part_size
        self.max_memory = max_memory
        # The pace: concurrency adjusted to the endpoint's answers and throughput (never
        # above max_concurrency, nor above what max_memory allows for buffers).
        self.pace = Pace(max_concurrency) if adaptive else None
        # each copy in flight holds a connection: at most a quarter of the process's open
        # files (macOS's default soft limit is 256, less than the default 256 copies)
        self.max_server_copies = max_server_copies = min(max_server_copies,
                                                         copies_within_open_files())
        # server-side copies: their own pace, halved on the same throttling answers
        self.copy_pace = Pace(max_server_copies) if adaptive else None
        self._copies: anyio.CapacityLimiter | None = None
        # streamed copies (GET passed through to the PUT): their own pace and tokens too
        self.max_streamed_copies = max_streamed_copies
        self.stream_pace = Pace(max_streamed_copies) if adaptive else None
        self._streams: anyio.CapacityLimiter | None = None
        # Small-object copies (GET -> PUT across endpoints) and HEADs signed and sent
        # without botocore's layers (``s3_light.py``); False: every request is botocore's.
        self.light_requests = light_requests
        self.addressing_style = addressing_style
        # A streamed single PUT (light path) whose source ETag recorded at insert is an
        # md5 goes out as UNSIGNED-PAYLOAD with that md5 as Content-MD5, as rclone's do:
        # the server checks the md5 it computes anyway instead of hashing every body a
        # second time (radosgw: ~1.2 s of its CPU per GiB). No weaker: insert's server
        # checked the sha256-signed body and gave it that md5 as ETag, the GET is If-Match
        # that ETag, and the answer's ETag is compared too (``_light_stream_put``).
        # Without such an ETag it is signed with the recorded sha256. An answer with
        # another ETag is read back and hashed (right bytes: the destination's ETags are
        # no md5s). None: that rule, and a refused md5 (BadDigest: a source ETag that is
        # no md5) is sent again signed; either makes the store sign from then on. True:
        # always signed; False: the rule without the signed fallback.
        self.signed_payload = signed_payload
        self._md5_refused = False  # None: a BadDigest answer turned unsigned PUTs off
        self._client: Any = None
        self._light: LightRequests | None = None
        self._shared: tuple[Any, tuple[Any, ...]] | None = None  # (loop, key) while held
        self._buffers: anyio.CapacityLimiter | None = None
        self.request_count = 0  # HTTP requests sent, retries included

    def __repr__(self) -> str:
        endpoint = self.credentials.endpoint or "aws"
        return f"S3DataStore(bucket={self.bucket!r}, endpoint={endpoint!r})"

    @property
    def endpoint(self) -> str | None:
        return self.credentials.endpoint

    @property
    def region(self) -> str | None:
        return self.credentials.region

    def url(self, key: str) -> str:
        return S3Location(self.bucket, key).url

    # -- lifecycle ---------------------------------------------------------------------

    async def client(self) -> Any:
        """The S3 client for this store's endpoint and account, created on first use on
        the running loop and shared with every other store of the same endpoint,
        account and settings on that loop (closed when the last of them closes)."""
        if self._client is None:
            loop = asyncio.get_running_loop()
            key = self._client_key()
            lock = _clients_lock.setdefault(loop, anyio.Lock())
            async with lock:
                if self._client is None:
                    per_loop = _clients.setdefault(loop, {})
                    shared = per_loop.get(key)
                    if shared is None:
                        shared = per_loop[key] = await self._open_client()
                    shared.users += 1
                    self._client, self._shared = shared.client, (loop, key)
                    self._light = shared.light
        return self._client

    def light(self) -> LightRequests | None:
        """The light request path, when on and usable (known once ``client()`` ran)."""
        return self._light if self.light_requests else None

    async def light_call(self, operation: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """``attempt()`` (one request of the light path) until it succeeds or the client's
        own retry policy gives up: the one retry loop of the light path, botocore's
        decisions and delays (so its quota, and the pace watching every answer). Call it
        inside ``errors()``: that is where what it raises is translated."""
        light = self._light
        assert light is not None
        context: dict[str, Any] = {}
        tries = 1
        while True:
            self.request_count += 1
            try:
                result = await attempt()
            except (ClientError, BotoCoreError) as exc:
                delay = await light.retry_delay(operation, tries, context, exc)
                if delay is None:
                    raise
            else:
                await light.succeeded(operation, context, 200)
                return result
            await anyio.sleep(delay)
            tries += 1

    def _client_key(self) -> tuple[Any, ...]:
        creds = self.credentials
        return (creds.endpoint, creds.region, creds.access_key_id, creds.secret_access_key,
                creds.session_token, self.max_attempts, self._pool_size(),
                self.addressing_style)

    def _pool_size(self) -> int:
        # a buffered copy may hold two connections per buffer token (GET and PUT), a
        # streamed one two per stream token; a server-side copy one per copy token
        return max(10, 2 * self.max_concurrency + 2 * self.max_streamed_copies
                   + self.max_server_copies)

    async def _open_client(self) -> _SharedClient:
        creds = self.credentials
        config = Config(
            # total_max_attempts counts the first try; botocore's "max_attempts" would
            # mean retries (max_attempts=5 gave 6 attempts).
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            max_pool_connections=self._pool_size(),
            connect_timeout=10,
            read_timeout=120,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": self.addressing_style},
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            _session().create_client(
                "s3",
                endpoint_url=creds.endpoint,
                aws_access_key_id=creds.access_key_id,
                aws_secret_access_key=creds.secret_access_key,
                aws_session_token=creds.session_token,
                region_name=creds.region or "us-east-1",
                config=config,
                # no TLS on a plain-http endpoint, so no CA bundle to load for it (~0.02 s
                # of a fresh process); None keeps botocore's default (AWS_CA_BUNDLE, certifi)
                verify=False if (creds.endpoint or "").lower().startswith("http://") else None,
            )
        )
        _lighten_requests(client)
        client.meta.events.register("before-send.s3", _count_request)
        client.meta.events.register("needs-retry.s3", _watch_answer)
        for operation in ("PutObject", "UploadPart"):
            client.meta.events.register_first(f"choose-signer.s3.{operation}",
                                              _choose_known_sha256_signer)
        light = None
        if LightRequests.usable(client):
            light = LightRequests(client, creds.access_key_id, creds.secret_access_key,
                                  creds.session_token)
        return _SharedClient(client, stack, light=light)

    def shares_account_with(self, other: S3DataStore) -> bool:
        """True when a server-side copy from ``other`` to this store is possible."""
        return self.credentials == other.credentials

    def buffers(self) -> anyio.CapacityLimiter:
        """Tokens for requests in flight, each holding at most a part-sized buffer (bounds
        memory: ``max_memory`` / the largest buffer, at most ``max_concurrency``), as
        many as the pace allows now."""
        if self._buffers is None:
            self._buffers = anyio.CapacityLimiter(self._tokens())
        return self._buffers

    def copy_slots(self) -> anyio.CapacityLimiter:
        """Tokens for server-side copy requests in flight (no buffer held: not bounded
        by ``max_concurrency`` or ``max_memory``), as many as their pace allows now."""
        if self._copies is None:
            self._copies = anyio.CapacityLimiter(self._copy_tokens())
        return self._copies

    def _copy_tokens(self) -> int:
        return self.copy_pace.limit if self.copy_pace is not None else self.max_server_copies

    def _copied(self, nbytes: int) -> None:
        """A server-side copy finished: its bytes are the copy pace's throughput."""
        self._sent(self.copy_pace, self.copy_slots, self._copy_tokens, nbytes)

    def stream_slots(self) -> anyio.CapacityLimiter:
        """Tokens for streamed copy requests in flight (a GET passed through to a PUT:
        each holds ``STREAM_BUFFER``, not a part), as many as their pace and
        ``max_memory`` allow now. Once used, the buffers' share of ``max_memory`` is what
        the streams leave."""
        if self._streams is None:
            self._streams = anyio.CapacityLimiter(self._stream_tokens())
            if self._buffers is not None:
                self._buffers.total_tokens = self._tokens()
        return self._streams

    def stream_memory_tokens(self) -> int:
        """How many streamed copies may be in flight within ``max_memory``: at most
        half of it, so buffers keep the other half."""
        if self.max_memory is None:
            return self.max_streamed_copies
        return max(1, min(self.max_streamed_copies, self.max_memory // 2 // STREAM_BUFFER))

    def _stream_tokens(self) -> int:
        paced = (self.stream_pace.limit if self.stream_pace is not None
                 else self.max_streamed_copies)
        return max(1, min(paced, self.stream_memory_tokens()))

    def _streamed(self, nbytes: int) -> None:
        """A streamed copy request was sent: its bytes are the stream pace's throughput."""
        self._sent(self.stream_pace, self.stream_slots, self._stream_tokens, nbytes)

    def memory_tokens(self) -> int:
        """How many requests may hold a buffer at once within ``max_memory`` (less what
        the streamed copies may hold, once this store has streamed)."""
        if self.max_memory is None:
            return self.max_concurrency
        largest = max(self.part_size, self.multipart_threshold)
        budget = self.max_memory
        if self._streams is not None:
            budget -= self.stream_memory_tokens() * STREAM_BUFFER
        return max(1, min(self.max_concurrency, budget // largest))

    def _tokens(self) -> int:
        paced = self.pace.limit if self.pace is not None else self.max_concurrency
        return max(1, min(paced, self.memory_tokens()))

    def _lanes(self) -> tuple[tuple[str, Pace | None, Callable[[], anyio.CapacityLimiter],
                                    Callable[[], int]], ...]:
        """Each kind of request in flight: its name, pace, slots and token count now."""
        return (("concurrency", self.pace, self.buffers, self._tokens),
                ("server-side copies", self.copy_pace, self.copy_slots, self._copy_tokens),
                ("streamed copies", self.stream_pace, self.stream_slots, self._stream_tokens))

    def _throttled(self) -> None:
        """A throttling answer (SlowDown, 503): every kind's pace halves, and its slots."""
        for what, pace, slots, tokens in self._lanes():
            if pace is None:
                continue
            before = pace.limit
            if pace.throttled(time.monotonic()) != before:
                log.info("%s throttles: %s %d -> %d", self.endpoint or "S3", what, before,
                         pace.limit)
                slots().total_tokens = tokens()

    @staticmethod
    def _sent(pace: Pace | None, slots: Callable[[], anyio.CapacityLimiter],
              tokens: Callable[[], int], nbytes: int) -> None:
        """``nbytes`` went out under ``pace``: its throughput; its slots follow its limit."""
        if pace is not None:
            before = pace.limit
            if pace.transferred(nbytes, time.monotonic()) != before:
                slots().total_tokens = tokens()

    def _paced(self, nbytes: int) -> None:
        self._sent(self.pace, self.buffers, self._tokens, nbytes)

    async def aclose(self) -> None:
        """Let go of the client (closed when no other store uses it); the store can be
        used again afterwards."""
        held, self._shared, self._client = self._shared, None, None
        if held is None:
            return
        loop, key = held
        per_loop = _clients.get(loop, {})
        shared = per_loop.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del per_loop[key]
            await shared.stack.aclose()

    async def __aenter__(self) -> S3DataStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the error seam ----------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self, operation: str, target: str) -> Iterator[None]:
        """Translate botocore failures of ``operation`` on ``target`` into StorageError
        (and count the requests made inside as this store's)."""
        calling = _calling_store.set(self)
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = err.get("Message") or code
            if code == "NoSuchBucket":
                raise ObjectNotFoundError(
                    f"{operation} {target}: bucket {self.bucket!r} does not exist", code=code
                ) from exc
            if code in _NOT_FOUND_CODES:
                raise ObjectNotFoundError(f"{operation} {target}: not found", code=code) from exc
            if code in _PRECONDITION_CODES:
                raise SourceChangedError(
                    f"{operation} {target}: the object changed (it no longer has the "
                    f"ETag this read expected)", code=code) from exc
            if code in _AUTH_CODES:
                raise StorageError(
                    f"{operation} {target}: S3 refused the credentials "
                    f"(access key id {mask_key_id(self.credentials.access_key_id)}): {detail}",
                    code=code,
                ) from exc
            message = f"{operation} {target}: {status} {code}: {detail}"
            raise StorageError(message, code=code) from exc
        except _UNREACHABLE as exc:
            where = self.credentials.endpoint or "AWS S3"
            raise StorageError(f"{operation} {target}: cannot reach {where}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{operation} {target}: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:  # what aiobotocore lets through
            where = self.credentials.endpoint or "AWS S3"
            raise StorageError(f"{operation} {target}: {where}: {type(exc).__name__}: "
                               f"{exc}") from exc
        finally:
            _calling_store.reset(calling)

    # -- objects -----------------------------------------------------------------------

    async def head(self, url: str) -> dict[str, Any]:
        """ContentLength and ETag (and VersionId when the bucket has versions) at least."""
        loc = parse_s3_url(url)
        s3 = await self.client()
        light = self.light()
        with self.errors("HeadObject", url):
            if light is None:
                return await s3.head_object(Bucket=loc.bucket, Key=loc.key)
            response = await self.light_call(
                "HeadObject", lambda: light.get(loc.bucket, loc.key, {}, "HeadObject"))
            response.release()
        headers = response.headers
        head: dict[str, Any] = {"ContentLength": int(headers.get("Content-Length", 0)),
                                "ETag": headers.get("ETag", "")}
        if headers.get("x-amz-version-id"):
            head["VersionId"] = headers["x-amz-version-id"]
        return head

    async def size_of(self, url: str) -> int:
        return int((await self.head(url))["ContentLength"])

    async def get_bytes(self, url: str, byte_range: tuple[int, int] | None = None,
                        if_match: str | None = None) -> bytes:
        """The object's bytes, or ``[start, end)`` of them (a bytearray, filled in place).

        With ``if_match`` (an ETag) S3 answers 412 if the object is another version now:
        consecutive ranges then come from one version, or fail with SourceChangedError.
        A body cut short is resumed from the byte it reached, on the same version (the
        ETag of the first response, and its VersionId when the bucket has versions),
        up to ``max_attempts`` responses in all.
        """
        loc = parse_s3_url(url)
        s3 = await self.client()
        start = byte_range[0] if byte_range else 0
        end = byte_range[1] if byte_range else None
        buffer: bytearray | None = None
        filled = 0
        etag, version = if_match, None
        for attempt in range(1, self.max_attempts + 1):
            extra: dict[str, str] = {}
            if byte_range or filled:
                last = "" if end is None else str(end - 1)
                extra["Range"] = f"bytes={start + filled}-{last}"
            if etag:
                extra["IfMatch"] = _quoted(etag)
            if version:
                extra["VersionId"] = version
            with self.errors("GetObject", url):
                response = await s3.get_object(Bucket=loc.bucket, Key=loc.key, **extra)
            length = int(response["ContentLength"])
            if buffer is None:
                # Fill one buffer of the announced size: body.read() would hold the chunks
                # and their join at once (twice the object in memory).
                buffer = bytearray(length)
                etag = etag or etag_of(response) or None
                version = response.get("VersionId") or None
                if version == "null":
                    version = None
            elif filled + length != len(buffer):
                raise StorageError(f"GetObject {url}: a resumed read announced {length} "
                                   f"bytes, {len(buffer) - filled} were missing")
            try:
                body = response["Body"]
                async with body:
                    async for chunk in body.iter_chunks(1 << 20):
                        if filled + len(chunk) > len(buffer):
                            raise StorageError(f"GetObject {url}: more bytes than announced")
                        buffer[filled:filled + len(chunk)] = chunk
                        filled += len(chunk)
            except _BODY_CUT as exc:
                if attempt == self.max_attempts:
                    raise StorageError(f"GetObject {url}: the body was cut at byte "
                                       f"{start + filled} {attempt} times: "
                                       f"{type(exc).__name__}: {exc}") from exc
                log.info("GetObject %s: body cut at byte %d (%s); resuming", url,
                         start + filled, type(exc).__name__)
                continue
            if filled == len(buffer):
                break
            log.info("GetObject %s: body ended at byte %d of %d; resuming", url,
                     start + filled, start + len(buffer))
        assert buffer is not None
        if filled != len(buffer):
            raise StorageError(f"GetObject {url}: got {filled} of {len(buffer)} bytes")
        return buffer  # type: ignore[return-value]  # a bytearray is bytes-like

    async def open_object(self, url: str) -> Pull:
        """A puller of the object's part-sized ranges (None at the end), all of the
        version the HEAD made here saw. Each pull is one request under a buffer token,
        so pulls may come from any task (a blocking reader's hops to the loop do)."""
        head = await self.head(url)
        size, etag = int(head["ContentLength"]), etag_of(head)
        parts = iter(plan_parts(size, self.part_size, 1) if size else ())

        async def pull() -> bytes | None:
            part = next(parts, None)
            if part is None:
                return None
            async with self.buffers():
                return await self.get_bytes(url, (part.start, part.end), etag)

        return pull

    async def sha256_of(self, url: str) -> tuple[str, int]:
        """Stream the object once and return (sha256 hex, size): memory is one part."""
        return await sha256_of_chunks(await self.open_object(url))

    async def put_bytes(self, key: str, data: bytes, sha256_hex: str | None = None) -> str:
        """PutObject. With ``sha256_hex`` (of ``data``) botocore does not hash the body
        again, and S3 refuses the object unless the bytes it received match it."""
        s3 = await self.client()
        url = self.url(key)
        extra = {}
        if sha256_hex is not None:
            extra["ChecksumAlgorithm"] = "SHA256"
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        reset = _body_sha256.set(sha256_hex)
        try:
            with self.errors("PutObject", url):
                response = await s3.put_object(Bucket=self.bucket, Key=key,
                                               Body=_BufferReader(data),
                                               ContentLength=len(data), **extra)
        finally:
            _body_sha256.reset(reset)
        return etag_of(response)

    async def delete(self, url: str, if_match: str | None = None) -> None:
        """DeleteObject; with ``if_match`` (an ETag) only while the key holds that
        version (else 412, a SourceChangedError; a server without conditional deletes
        deletes whatever is there)."""
        loc = parse_s3_url(url)
        s3 = await self.client()
        condition = {"IfMatch": _quoted(if_match)} if if_match else {}
        with self.errors("DeleteObject", url):
            await s3.delete_object(Bucket=loc.bucket, Key=loc.key, **condition)

    async def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (missing ones are fine), 1,000 per DeleteObjects request."""
        s3 = await self.client()
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            with self.errors("DeleteObjects", self.url(batch[0]["Key"])):
                response = await s3.delete_objects(Bucket=self.bucket,
                                                   Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StorageError(f"DeleteObjects {self.url(first.get('Key', ''))}: "
                                   f"{first.get('Code')}: {first.get('Message')} "
                                   f"({len(response['Errors'])} key(s) not deleted)")

    async def discard(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (missing ones are fine) under a shielded scope, to clean up
        after a failed batch; a failure is logged, never raised over the cause."""
        with anyio.CancelScope(shield=True):
            try:
                await self.delete_keys(keys)
            except Exception as exc:
                log.warning("could not delete %d object(s) under %s: %s", len(keys),
                            self.url(""), exc)

    async def list_multipart_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """Open (unfinished) multipart uploads in this bucket (under ``prefix``)."""
        s3 = await self.client()
        uploads: list[dict[str, Any]] = []
        marker: dict[str, str] = {}
        with self.errors("ListMultipartUploads", self.url(prefix)):
            while True:
                response = await s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix,
                                                           **marker)
                uploads.extend(response.get("Uploads", []))
                if not response.get("IsTruncated"):
                    return uploads
                marker = {"KeyMarker": response["NextKeyMarker"],
                          "UploadIdMarker": response["NextUploadIdMarker"]}

    async def list_objects(self, prefix: str,
                           limit: int | None = None) -> dict[str, tuple[int, str]]:
        """key -> (size, ETag) of every object under ``prefix`` (1,000 per request); with
        ``limit``, stops after the page that passes that many (the rest unlisted)."""
        s3 = await self.client()
        found: dict[str, tuple[int, str]] = {}
        token: dict[str, str] = {}
        with self.errors("ListObjectsV2", self.url(prefix)):
            while True:
                response = await s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **token)
                for obj in response.get("Contents", []):
                    found[obj["Key"]] = (int(obj["Size"]), etag_of(obj))
                if not response.get("IsTruncated") or (limit is not None
                                                       and len(found) >= limit):
                    return found
                token = {"ContinuationToken": response["NextContinuationToken"]}

    async def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        """part number -> (ETag, size) of an open upload's finished parts."""
        s3 = await self.client()
        parts: dict[int, tuple[str, int]] = {}
        marker: dict[str, int] = {}
        with self.errors("ListParts", self.url(key)):
            while True:
                response = await s3.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                               **marker)
                for part in response.get("Parts", []):
                    parts[int(part["PartNumber"])] = (part["ETag"], int(part["Size"]))
                if not response.get("IsTruncated"):
                    return parts
                marker = {"PartNumberMarker": int(response["NextPartNumberMarker"])}

    # -- uploads -----------------------------------------------------------------------

    async def upload_file(
        self, path: str | os.PathLike[str], key: str, tracker: ProgressTracker | None = None,
        log: UploadLog | None = None,
    ) -> ShardUpload:
        """Upload a local file byte for byte, hashing it on the way."""
        size = os.path.getsize(path)
        async with await anyio.open_file(path, "rb") as source:

            async def read(n: int) -> bytes:
                return await source.read(n)

            return await self.upload_stream(read, size, key, tracker, log=log)

    async def upload_stream(
        self,
        read: Callable[[int], Awaitable[bytes]],
        size: int,
        key: str,
        tracker: ProgressTracker | None = None,
        known_sha256: str | None = None,
        log: UploadLog | None = None,
        skip: Callable[[int], Awaitable[None]] | None = None,
    ) -> ShardUpload:
        """Upload ``size`` bytes pulled from ``read(n)``; multipart above the threshold.

        Parts are read (and hashed) in order, then sent concurrently; each part in
        flight holds a buffer token. A failed or cancelled upload is aborted. A single
        PUT of bytes whose sha256 is already known (``known_sha256``) is not hashed
        again: S3 itself refuses the body unless it matches that digest.

        With ``log``, the multipart upload is reported as it goes, and the one ``log``
        names is continued: its listed parts that the log also knows are kept, their
        bytes passed over with ``skip(n)``. Only with ``known_sha256`` (the object's
        digest cannot be computed without the kept bytes) and ``skip``.
        """
        url = self.url(key)
        hasher = hashlib.sha256()
        if size <= self.multipart_threshold:
            async with self.buffers():
                data = await read(size)
                _check_length(url, data, size)
                digest = known_sha256
                if digest is None:
                    await anyio.to_thread.run_sync(hasher.update, data)
                    digest = hasher.hexdigest()
                etag = await self.put_bytes(key, data, digest)
            if tracker:
                tracker.add_bytes(size)
            return ShardUpload(url, size, digest, etag, verified=True)

        parts = plan_parts(size, self.part_size, self.min_part_size)
        etags: dict[int, str] = {}
        resumable = known_sha256 is not None and skip is not None
        async with self.resumable_upload(key, parts, log, resumable) as (upload_id, kept):
            etags.update(kept)
            with single_error():
                async with anyio.create_task_group() as tg:
                    for part in parts:
                        if part.number in kept:
                            assert skip is not None
                            await skip(part.size)
                            if tracker:
                                tracker.add_bytes(part.size)
                            continue
                        token = object()
                        await self.buffers().acquire_on_behalf_of(token)
                        try:
                            data = await read(part.size)
                            _check_length(url, data, part.size)
                            digest = await anyio.to_thread.run_sync(_hash_into, hasher, data)
                        except BaseException:
                            self.buffers().release_on_behalf_of(token)
                            raise
                        tg.start_soon(self._send_part, key, upload_id, part.number, data,
                                      digest, token, etags, tracker, log)
            etag = await self.complete_multipart(key, upload_id, etags)
        # continued: the kept parts were read from the same source version (If-Match)
        # in an earlier run, so the object's digest is the one known beforehand
        return ShardUpload(url, size, known_sha256 if kept else hasher.hexdigest(), etag)

    async def _send_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        data: bytes | _StreamedBody,
        digest: str | None,
        token: object,
        etags: dict[int, str],
        tracker: ProgressTracker | None,
        log: UploadLog | None = None,
    ) -> None:
        """UploadPart of a buffer (signed with its sha256 ``digest``) or of a streamed
        source range (unsigned payload, its md5 checked against the part's ETag; a part
        whose source body was cut is sent again, up to ``max_attempts`` times)."""
        try:
            s3 = await self.client()
            streamed = isinstance(data, _StreamedBody)
            target = f"UploadPart {number}"
            for attempt in range(1, self.max_attempts + 1):
                reset = _body_sha256.set(digest if digest is not None else _UNSIGNED)
                try:
                    with self.errors(target, self.url(key)):
                        response = await s3.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id,
                            PartNumber=number, ContentLength=len(data),
                            Body=data if streamed else _BufferReader(data))
                    break
                except Exception:
                    if not streamed or data.error is None:
                        raise
                    if not data.cut() or attempt == self.max_attempts:
                        raise data.error from None  # the GET failed: say that, not the PUT
                    log.info("%s of %s: the source body was cut (%s); sending it again",
                             target, self.url(key), type(data.error).__name__)
                finally:
                    _body_sha256.reset(reset)
            if streamed:
                data.check(response["ETag"], f"{target} {self.url(key)}")
                self._streamed(len(data))
            etags[number] = response["ETag"]
            if log is not None:
                log.part(number, response["ETag"])
            if tracker:
                tracker.add_bytes(len(data))
        finally:
            slots = self.stream_slots() if isinstance(data, _StreamedBody) else self.buffers()
            slots.release_on_behalf_of(token)

    async def complete_multipart(self, key: str, upload_id: str, etags: dict[int, str]) -> str:
        """The completed object's ETag. Some radosgw versions answer with an empty one:
        then a HEAD reads it (a journal that recorded "" could never match a listing,
        and every rerun would send the shard again)."""
        s3 = await self.client()
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        with self.errors("CompleteMultipartUpload", self.url(key)):
            response = await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        etag = etag_of(response)
        if not etag:
            etag = etag_of(await self.head(self.url(key)))
        return etag

    @contextlib.asynccontextmanager
    async def multipart_upload(self, key: str) -> AsyncIterator[str]:
        """An open multipart upload's id, aborted (shielded) if the body fails or is
        cancelled. The create call is shielded too: a cancellation landing after the
        request left would lose the id of an upload S3 already opened, orphaning it."""
        s3 = await self.client()
        with anyio.CancelScope(shield=True), self.errors("CreateMultipartUpload", self.url(key)):
            upload_id = (await s3.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"]
        try:
            yield upload_id
        except BaseException:
            await self.abort_multipart(key, upload_id)
            raise

    @contextlib.asynccontextmanager
    async def resumable_upload(
        self, key: str, parts: Sequence[Part], log: UploadLog | None, resumable: bool = True,
    ) -> AsyncIterator[tuple[str, dict[int, str]]]:
        """(upload id, kept parts) of the upload ``log`` names when it can be trusted, else
        of a new one (the old aborted); reported to ``log``, aborted if the body fails.

        Trusted: same part size, still open, and each kept part listed by ListParts with
        the ETag the log recorded and its planned size (a part not journaled is resent).
        """
        upload_id, kept = None, {}
        if log is not None and log.upload_id is not None:
            planned = {p.number: p.size for p in parts}
            same_layout = log.part_size == (parts[0].size if parts else 0)
            if resumable and same_layout:
                try:
                    listed = await self.list_parts(key, log.upload_id)
                except ObjectNotFoundError:  # NoSuchUpload: aborted or completed meanwhile
                    listed = None
                if listed is not None:
                    upload_id = log.upload_id
                    kept = {n: e for n, (e, sz) in listed.items()
                            if log.parts.get(n) == e and planned.get(n) == sz}
            if upload_id is None:
                await self.abort_multipart(key, log.upload_id)
                log.closed()
        if upload_id is None:
            s3 = await self.client()
            with anyio.CancelScope(shield=True), \
                    self.errors("CreateMultipartUpload", self.url(key)):
                upload_id = (await s3.create_multipart_upload(Bucket=self.bucket,
                                                              Key=key))["UploadId"]
            if log is not None:
                log.upload_id, log.parts = upload_id, {}
                log.opened(upload_id, parts[0].size if parts else 0)
        elif log is not None:
            log.parts = dict(kept)
        try:
            yield upload_id, kept
        except BaseException:
            await self.abort_multipart(key, upload_id)
            if log is not None:
                log.closed()
            raise
        if log is not None:
            log.closed()

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort under a shielded scope; a failed abort is logged, never raised over the cause."""
        with anyio.CancelScope(shield=True):
            try:
                s3 = await self.client()
                with self.errors("AbortMultipartUpload", self.url(key)):
                    await s3.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                    UploadId=upload_id)
            except Exception as exc:  # keep the original error; say what was left behind
                log.warning("could not abort multipart upload %s of %s: %s",
                            upload_id, self.url(key), exc)

    async def upload_files(
        self,
        files: Sequence[tuple[str | os.PathLike[str], str]],
        progress: ProgressCallback | None = None,
    ) -> list[ShardUpload]:
        """Upload (path, key) pairs concurrently; all succeed or ShardTransferError."""
        sizes = [os.path.getsize(p) for p, _ in files]
        tracker = ProgressTracker(progress, len(files), sum(sizes))

        async def one(item: tuple[str | os.PathLike[str], str]) -> ShardUpload:
            return await self.upload_file(item[0], item[1], tracker)

        return await run_per_shard(
            [str(p) for p, _ in files], list(files), one, self.max_concurrency, tracker
        )


    # -- copies ------------------------------------------------------------------------

    async def copy_from(
        self, source: S3DataStore, src_url: str, key: str, size: int,
        tracker: ProgressTracker | None = None, known_sha256: str | None = None,
        source_etag: str | None = None, log: UploadLog | None = None,
    ) -> ShardUpload:
        """Copy an object into this store: server-side when the account is shared,
        else streamed through ranged GETs into a (multipart) upload, hashed on the way
        (or checked by S3 against ``known_sha256``, see ``upload_stream``). With
        ``source_etag`` the source must still be that version (else SourceChangedError)."""
        if self.shares_account_with(source):
            return await self.server_side_copy(src_url, key, size, tracker, source_etag, log)
        if known_sha256 is not None and 0 < size <= self.multipart_threshold:
            return await self.stream_copy(source, src_url, key, size, known_sha256,
                                          source_etag, tracker)
        if known_sha256 is not None and source_etag and size > 0:
            return await self.stream_parts_copy(source, src_url, key, size, known_sha256,
                                                source_etag, tracker, log)

        position = 0

        async def read(n: int) -> bytes:
            nonlocal position
            data = (await source.get_bytes(src_url, (position, position + n), source_etag)
                    if n else b"")
            position += n
            return data

        async def skip(n: int) -> None:
            nonlocal position
            position += n

        # a continued upload's kept parts must come from the version hashed at insert
        return await self.upload_stream(read, size, key, tracker, known_sha256, log,
                                        skip if source_etag else None)

    async def stream_copy(
        self, source: S3DataStore, src_url: str, key: str, size: int, sha256_hex: str,
        source_etag: str | None = None, tracker: ProgressTracker | None = None,
    ) -> ShardUpload:
        """One PutObject whose body is the source's GET body streamed straight through:
        memory is a few socket buffers whatever the shard's size, and nothing is hashed
        here. The request carries the recorded sha256 as its checksum and is signed with
        it, so S3 refuses the object unless the bytes are the ones inserted; on the light
        path it goes unsigned with the recorded ETag as Content-MD5 instead when that
        ETag is an md5 (``signed_payload``): checked by the server and against its answer."""
        s3 = await self.client()
        await source.client()
        url = self.url(key)
        body = _StreamedBody(source, src_url, size, source_etag)
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        if self.light() is not None and source.light() is not None:
            async with self.stream_slots():
                etag = await self._light_stream_put(key, body, size, sha256_hex, checksum)
            if tracker:
                tracker.add_bytes(size)
            return ShardUpload(url, size, sha256_hex, etag, verified=True)
        reset = _body_sha256.set(sha256_hex)
        try:
            async with self.stream_slots():
                for attempt in range(1, self.max_attempts + 1):
                    try:
                        with self.errors("PutObject", url):
                            response = await s3.put_object(
                                Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
                        self._streamed(size)
                        break
                    except Exception:
                        if body.error is None:
                            raise
                        if not body.cut() or attempt == self.max_attempts:
                            raise body.error from None  # the GET failed: say that
                        log.info("PutObject %s: the source body was cut (%s); sending it "
                                 "again", url, type(body.error).__name__)
        finally:
            _body_sha256.reset(reset)
        if tracker:
            tracker.add_bytes(size)
        return ShardUpload(url, size, sha256_hex, etag_of(response), verified=True)

    async def _light_stream_put(self, key: str, body: _StreamedBody, size: int,
                                sha256_hex: str, checksum: str) -> str:
        """The PutObject of ``stream_copy`` on the light path. Each attempt first opens
        the source's GET (its own retries, its errors: a changed source fails before any
        PUT), then streams it into the PUT; a PUT refused, or cut because the source
        body was, is tried again as the destination's retry policy decides."""
        light = self._light
        assert light is not None
        url = self.url(key)

        md5 = self._content_md5(body.etag)

        async def attempt() -> Any:
            await body.open()
            headers = {"x-amz-checksum-sha256": checksum,
                       "x-amz-sdk-checksum-algorithm": "SHA256"}
            if md5 is not None:
                headers["Content-MD5"] = md5
            try:
                return await light.put(self.bucket, key, headers,
                                       sha256_hex if md5 is None else _UNSIGNED, body, size)
            except BaseException:
                body.close()
                if body.error is not None and not body.cut():
                    raise body.error from None  # the GET failed for good: say that
                raise

        try:
            with self.errors("PutObject", url):
                try:
                    response = await self.light_call("PutObject", attempt)
                except ClientError as exc:
                    if md5 is None or self.signed_payload is not None or \
                            exc.response.get("Error", {}).get("Code") not in _MD5_REFUSED:
                        raise
                    # the recorded ETag is not the body's md5 after all (SSE-C/KMS), or
                    # the body was damaged on its way: signed, the sha256 decides
                    log.warning("PutObject %s: %s to the source ETag's Content-MD5; this "
                                "store signs its streamed PUTs from now on", url,
                                exc.response["Error"]["Code"])
                    self._md5_refused, md5 = True, None
                    response = await self.light_call("PutObject", attempt)
            self._streamed(size)  # sent: the pace's throughput, as on botocore's path
        except StorageError:
            if body.error is not None:  # the source's body was cut every time
                raise body.error from None
            raise
        etag = etag_of(response.headers)
        if md5 is not None and etag != (body.etag or "").strip('"'):
            # other bytes than the recorded md5's (a server that ignores Content-MD5 lets
            # them through: moto does), or this server's ETags are no md5s (SSE-KMS):
            # the bytes read back decide
            await self._read_back(url, etag, sha256_hex,
                                  f"PutObject {url}: ETag {etag}, the source version's md5 "
                                  f"{body.etag}")
            if self.signed_payload is None and not self._md5_refused:
                log.warning("PutObject %s: ETag %s is not the body's md5 (read back: the "
                            "bytes are right); this store signs its streamed PUTs from now "
                            "on", url, etag)
                self._md5_refused = True
        return etag

    async def _read_back(self, url: str, etag: str, sha256_hex: str, what: str) -> None:
        """A copy whose ETag does not prove its bytes: read it back and hash it. Other
        bytes than the recorded sha256's fail the shard and are deleted (not left for a
        rerun or a reader to take): only the object this copy wrote, If-Match its ETag,
        so a good copy another run put there since stays."""
        landed, _ = await self.sha256_of(url)
        if landed != sha256_hex:
            with anyio.CancelScope(shield=True), contextlib.suppress(StorageError):
                await self.delete(url, if_match=etag or None)
            raise StorageError(f"{what}: S3 stored other bytes than the source's (read "
                               f"back, sha256 {landed}, recorded {sha256_hex})")

    def _content_md5(self, recorded_etag: str | None) -> str | None:
        """The Content-MD5 a streamed PUT goes out with, unsigned (None: signed with the
        recorded sha256 instead): the md5 that the ETag recorded at insert is, if it is
        one (see ``signed_payload``)."""
        if self.signed_payload or (self.signed_payload is None and self._md5_refused):
            return None
        return _md5_of_etag(recorded_etag)

    async def stream_parts_copy(
        self, source: S3DataStore, src_url: str, key: str, size: int, sha256_hex: str,
        source_etag: str, tracker: ProgressTracker | None = None,
        log: UploadLog | None = None,
    ) -> ShardUpload:
        """A multipart upload whose parts are ranged GETs of the source streamed straight
        into UploadPart: each part in flight holds a stream token and only socket-sized
        chunks, so memory does not grow with the part or the shard.

        Every range is read from the version recorded at insert (If-Match
        ``source_etag``), whose sha256 is ``sha256_hex``; each part's md5 is checked
        against the ETag S3 gives it. That proves S3 stored what was sent, not that what
        was sent is what insert stored (a range damaged on its way from the source is
        hashed as it arrived): the completed object's ETag must be the recorded one (the
        parts are cut as the recorded ETag says insert cut them, ``part_size_of_etag``:
        the md5 of the same parts' md5s), or else the object is read back and its sha256
        must be the recorded one. A journaled upload (``log``) is continued like a
        buffered one."""
        url = self.url(key)
        # cut as insert cut it, so that the ETags agree and nothing is read back
        layout = part_size_of_etag(size, source_etag, self.part_size,
                                   self.min_part_size) or self.part_size
        parts = plan_parts(size, layout, self.min_part_size)
        etags: dict[int, str] = {}
        async with self.resumable_upload(key, parts, log) as (upload_id, kept):
            etags.update(kept)
            if tracker:
                tracker.add_bytes(sum(p.size for p in parts if p.number in kept))
            with single_error():
                async with anyio.create_task_group() as tg:
                    for part in parts:
                        if part.number in kept:
                            continue
                        token = object()
                        await self.stream_slots().acquire_on_behalf_of(token)
                        body = _StreamedBody(source, src_url, part.size, source_etag,
                                             start=part.start, md5=True)
                        tg.start_soon(self._send_part, key, upload_id, part.number, body,
                                      None, token, etags, tracker, log)
            etag = await self.complete_multipart(key, upload_id, etags)
        if etag != source_etag.strip('"'):  # another layout, or an ETag of no md5s
            await self._read_back(url, etag, sha256_hex,
                                  f"{url}: a range damaged on its way from the source?")
        return ShardUpload(url, size, sha256_hex, etag, verified=True)

    async def server_side_copy(
        self, src_url: str, key: str, size: int, tracker: ProgressTracker | None = None,
        source_etag: str | None = None, log: UploadLog | None = None,
    ) -> ShardUpload:
        """CopyObject, or parallel UploadPartCopy ranges above the copy threshold;
        conditional on ``source_etag`` (CopySourceIfMatch) when given. Each request
        takes a copy token (``copy_slots``), not a buffer token."""
        src = parse_s3_url(src_url)
        s3 = await self.client()
        url = self.url(key)
        copy_source = {"Bucket": src.bucket, "Key": src.key}
        condition = {"CopySourceIfMatch": _quoted(source_etag)} if source_etag else {}
        if size <= self.copy_multipart_threshold:
            light = self.light()
            async with self.copy_slots():
                with self.errors("CopyObject", f"{src_url} -> {url}"):
                    if light is None:
                        response = await s3.copy_object(Bucket=self.bucket, Key=key,
                                                        CopySource=copy_source, **condition)
                        etag = etag_of(response.get("CopyObjectResult", {}))
                    else:  # ~1 ms less client CPU a copy: what 1,024 small shards wait on
                        extra = ({"x-amz-copy-source-if-match": condition["CopySourceIfMatch"]}
                                 if condition else {})
                        etag = await self.light_call("CopyObject", lambda: light.copy(
                            self.bucket, key, src.bucket, src.key, dict(extra)))
            self._copied(size)
            if tracker:
                tracker.add_bytes(size)
            return ShardUpload(url, size, None, etag)
        parts = plan_parts(size, self.copy_part_size, self.min_part_size)
        etags: dict[int, str] = {}

        async def copy_part(upload_id: str, part: Any) -> None:
            async with self.copy_slots():
                with self.errors(f"UploadPartCopy {part.number}", url):
                    response = await s3.upload_part_copy(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part.number,
                        CopySource=copy_source, CopySourceRange=part.copy_range, **condition)
            self._copied(part.size)
            etags[part.number] = response["CopyPartResult"]["ETag"]
            if log is not None:
                log.part(part.number, etags[part.number])
            if tracker:
                tracker.add_bytes(part.size)

        async with self.resumable_upload(key, parts, log) as (upload_id, kept):
            etags.update(kept)
            if tracker:
                tracker.add_bytes(sum(p.size for p in parts if p.number in kept))
            with single_error():
                async with anyio.create_task_group() as tg:
                    for part in parts:
                        if part.number not in kept:
                            tg.start_soon(copy_part, upload_id, part)
            etag = await self.complete_multipart(key, upload_id, etags)
        return ShardUpload(url, size, None, etag)


def etag_of(response: Mapping[str, Any]) -> str:
    """An S3 response's ETag without its quotes ("" when absent)."""
    return str(response.get("ETag", "")).strip('"')


def _md5_of_etag(etag: str | None) -> str | None:
    """Content-MD5 of the object version ``etag`` names, when that ETag is its md5 (one
    PUT, no SSE-KMS: 32 hex digits; a multipart ETag is not)."""
    bare = (etag or "").strip('"')
    return base64.b64encode(bytes.fromhex(bare)).decode() if _MD5_HEX.fullmatch(bare) else None


def _quoted(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def _check_length(url: str, data: bytes, expected: int) -> None:
    if len(data) != expected:
        raise StorageError(f"{url}: source changed while reading ({len(data)} of {expected} bytes)")
