"""AtmosphereClient: an async XRPC client on httpx.

This module is the one place where HTTP and XRPC failures become library errors, and
the one place that retries: 429 waits for the advertised reset (bounded), 5xx and
transport errors back off with jitter for calls that are safe to repeat, and an
expired access token is refreshed (proactively before expiry, reactively on
``ExpiredToken``) and the call retried once.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from .._errors import (
    AuthError,
    ConfigurationError,
    ConflictError,
    RateLimitedError,
    RecordNotFoundError,
    ValidationError,
    XrpcError,
)
from .._model.lexicon import find_float
from .._model.redact import redact, remember_secret
from .._model.validate import check_int, check_number, check_text, check_url
from .identity import IdentityResolver
from .tasks import backoff

log = logging.getLogger("atdata_async.xrpc")

MAX_WRITES_PER_CALL = 200
_AUTH_ERRORS = {"AuthenticationRequired", "InvalidToken", "ExpiredToken", "AuthMissing",
                "AccountTakedown", "InvalidAppPassword"}
_NOT_FOUND_ERRORS = {"RecordNotFound", "RepoNotFound", "NotFound", "BlobNotFound",
                     "HandleNotFound", "CouldNotResolveHandle"}
_CONFLICT_ERRORS = {"InvalidSwap", "DuplicateCreate", "RecordAlreadyExists"}
# Procedures whose repetition after a lost response cannot change the outcome.
_REPEATABLE_PROCEDURES = {"com.atproto.repo.putRecord", "com.atproto.repo.deleteRecord",
                          "com.atproto.server.createSession"}
# Calls whose request carries a secret (a password, a refresh token): what the server
# answers is never quoted beyond the XRPC error name and a message scrubbed of it.
_AUTH_CALLS = {"com.atproto.server.createSession", "com.atproto.server.refreshSession",
               "com.atproto.server.createAppPassword", "com.atproto.server.createAccount"}
_RETRY_STATUSES = {500, 502, 503, 504}


@dataclass(frozen=True)
class RateLimit:
    """The PDS's last word on a rate limit (its ``ratelimit-*`` headers)."""

    limit: int
    remaining: int
    reset_at: float  # epoch seconds
    policy: str | None = None


def _rate_limit_of(response: httpx.Response) -> RateLimit | None:
    headers = response.headers
    try:
        return RateLimit(int(headers["ratelimit-limit"]), int(headers["ratelimit-remaining"]),
                         float(headers["ratelimit-reset"]), headers.get("ratelimit-policy"))
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Session:
    """A logged-in session. Tokens never appear in the repr."""

    did: str
    handle: str
    access_jwt: str = field(repr=False)
    refresh_jwt: str = field(repr=False)
    pds_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"did": self.did, "handle": self.handle, "accessJwt": self.access_jwt,
                "refreshJwt": self.refresh_jwt, "pdsUrl": self.pds_url}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        """A session exported by ``export_session``; ConfigurationError names what is
        missing or malformed (never a token's value)."""
        if not isinstance(data, dict):
            raise ConfigurationError(f"a session must be a dict, got {type(data).__name__}")
        for key in ("did", "handle", "accessJwt", "refreshJwt"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ConfigurationError(f"the session has no {key!r} string")
        pds_url = data.get("pdsUrl")
        if pds_url is not None:
            check_url("session.pdsUrl", pds_url, schemes=("http", "https"))
        remember_secret(data["accessJwt"])
        remember_secret(data["refreshJwt"])
        return cls(data["did"], data["handle"], data["accessJwt"], data["refreshJwt"],
                   pds_url)


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: only to refresh before it lapses)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _pds_from_did_doc(doc: Any) -> str | None:
    for service in (doc or {}).get("service", []) if isinstance(doc, dict) else []:
        if service.get("id", "").endswith("#atproto_pds") and service.get("serviceEndpoint"):
            return str(service["serviceEndpoint"]).rstrip("/")
    return None


class AtmosphereClient:
    """An ATProto account's client. ``await client.login(handle, app_password)``.

    ``on_session_change(session_dict)`` is called after login and every refresh so a
    script can persist tokens. Rate limits are waited out up to ``max_rate_limit_wait``
    seconds, else RateLimitedError (with ``reset_at``) is raised.
    """

    def __init__(
        self,
        base_url: str = "https://bsky.social",
        *,
        on_session_change: Callable[[dict[str, Any]], None] | None = None,
        max_rate_limit_wait: float = 60.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        refresh_margin: float = 60.0,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        plc_url: str | None = None,
        identity_ttl: float = 300.0,
    ) -> None:
        check_url("base_url", base_url, schemes=("http", "https"))
        if on_session_change is not None and not callable(on_session_change):
            raise ValidationError("on_session_change", "must be callable")
        check_number("max_rate_limit_wait", max_rate_limit_wait)
        check_int("max_retries", max_retries, maximum=100)
        check_number("backoff_base", backoff_base, maximum=3600)
        check_number("refresh_margin", refresh_margin, minimum=-math.inf)  # -inf: never early
        check_number("timeout", timeout, minimum=1e-3)
        self.base_url = base_url.rstrip("/")
        self.on_session_change = on_session_change
        self.max_rate_limit_wait = max_rate_limit_wait
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.refresh_margin = refresh_margin
        self.timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._session: Session | None = None
        self._refresh_lock: anyio.Lock | None = None
        self.request_count = 0
        # Who hosts other repos: shares this client's connections; see _identity.
        self.identity = IdentityResolver(plc_url=plc_url, ttl=identity_ttl, http=self._client,
                                         ask_pds=self._resolve_handle_here, timeout=timeout)
        # The ratelimit-* headers last seen per method: writers pace themselves with it.
        self.rate_limits: dict[str, RateLimit] = {}

    def __repr__(self) -> str:
        who = self._session.handle if self._session else "not logged in"
        return f"AtmosphereClient({self.base_url!r}, {who})"

    # -- session -----------------------------------------------------------------------

    @property
    def session(self) -> Session | None:
        return self._session

    @property
    def did(self) -> str:
        return self._require_session().did

    @property
    def handle(self) -> str:
        return self._require_session().handle

    @property
    def is_authenticated(self) -> bool:
        return self._session is not None

    @property
    def service_url(self) -> str:
        """Where requests go: the session's PDS when the DID document names one."""
        if self._session is not None and self._session.pds_url:
            return self._session.pds_url
        return self.base_url

    def _require_session(self) -> Session:
        if self._session is None:
            raise AuthError("(no call)", None, "NotLoggedIn",
                            "this AtmosphereClient is not logged in: call login() first")
        return self._session

    async def login(
        self,
        handle_or_did: str | None = None,
        app_password: str | None = None,
        *,
        session: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Log this client in with a password, or resume an exported session."""
        if session is not None:
            self._set_session(Session.from_dict(session))
            return self.export_session()
        if not handle_or_did or not app_password:
            raise AuthError("com.atproto.server.createSession", None, "InvalidRequest",
                            "login needs a handle (or DID) and an app password")
        check_text("handle_or_did", handle_or_did, nonempty=True)
        if not isinstance(app_password, str):
            raise ValidationError("app_password", "must be a string")  # its value unsaid
        remember_secret(app_password)
        body = await self._xrpc("com.atproto.server.createSession", procedure=True, auth=False,
                                json_body={"identifier": handle_or_did,
                                           "password": app_password})
        self._set_session(Session(body["did"], body["handle"], body["accessJwt"],
                                  body["refreshJwt"], _pds_from_did_doc(body.get("didDoc"))))
        return self.export_session()

    def export_session(self) -> dict[str, Any]:
        """The session as a dict to persist (it holds tokens: keep it private)."""
        return self._require_session().to_dict()

    def _set_session(self, session: Session) -> None:
        remember_secret(session.access_jwt)
        remember_secret(session.refresh_jwt)
        self._session = session
        if self.on_session_change is not None:
            self.on_session_change(session.to_dict())

    async def refresh_session(self) -> None:
        """Trade the refresh token for new tokens (one refresh at a time)."""
        if self._refresh_lock is None:
            self._refresh_lock = anyio.Lock()
        stale = self._require_session()
        async with self._refresh_lock:
            if self._session is not stale:  # someone else refreshed while we waited
                return
            body = await self._xrpc("com.atproto.server.refreshSession", procedure=True,
                                    auth=False, token=stale.refresh_jwt)
            self._set_session(Session(body["did"], body["handle"], body["accessJwt"],
                                      body["refreshJwt"],
                                      _pds_from_did_doc(body.get("didDoc")) or stale.pds_url))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AtmosphereClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the one request path ----------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout, transport=self._transport,
                                           headers={"user-agent": "atdata-async"})
        return self._http

    async def _xrpc(
        self,
        method: str,
        *,
        procedure: bool = False,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        auth: bool = True,
        token: str | None = None,
        service: str | None = None,
    ) -> Any:
        if service is not None and service.rstrip("/") != self.service_url:
            auth, token = False, None  # never send this account's tokens to another PDS
        repeatable = not procedure or method in _REPEATABLE_PROCEDURES
        refreshed = False
        attempt = 0
        while True:
            if auth:
                session = self._require_session()
                expiry = jwt_expiry(session.access_jwt)
                if (expiry is not None and expiry - time.time() < self.refresh_margin
                        and not refreshed):
                    await self.refresh_session()
                    refreshed = True
                token = self._require_session().access_jwt
            headers = {"authorization": f"Bearer {token}"} if token else {}
            if content_type:
                headers["content-type"] = content_type
            url = f"{(service or self.service_url).rstrip('/')}/xrpc/{method}"
            self.request_count += 1
            try:
                response = await self._client().request(
                    "POST" if procedure else "GET", url, params=_query(params),
                    json=json_body, content=content, headers=headers)
            except httpx.TransportError as exc:
                if repeatable and attempt < self.max_retries:
                    attempt += 1
                    await backoff(log, method, attempt, self.backoff_base, repr(exc))
                    continue
                raise XrpcError(method, None, type(exc).__name__,
                                redact(f"cannot reach {self.service_url}: "
                                       f"{str(exc) or repr(exc)}")) from exc
            limit = _rate_limit_of(response)
            if limit is not None:
                self.rate_limits[method] = limit
            if response.status_code == 200:
                return response.json() if response.content else {}
            error, message = _error_fields(response, secret_request=method in _AUTH_CALLS)
            if auth and error == "ExpiredToken" and not refreshed:
                await self.refresh_session()
                refreshed = True
                continue
            if response.status_code == 429:
                reset_at = _reset_at(response)
                wait = max(0.0, reset_at - time.time()) if reset_at else 1.0
                if wait <= self.max_rate_limit_wait and attempt < self.max_retries:
                    attempt += 1
                    log.info("%s rate limited; waiting %.1fs", method, wait)
                    await anyio.sleep(wait)
                    continue
                raise RateLimitedError(method, 429, error, message, reset_at=reset_at)
            if (response.status_code in _RETRY_STATUSES and repeatable
                    and attempt < self.max_retries):
                attempt += 1
                await backoff(log, method, attempt, self.backoff_base,
                              f"{response.status_code} {error}")
                continue
            raise _error_for(method, response.status_code, error, message)

    async def query(self, method: str, params: dict[str, Any] | None = None,
                    *, auth: bool = True, service: str | None = None) -> Any:
        """A GET XRPC call (safe to repeat); ``service`` sends it to another PDS,
        unauthenticated."""
        return await self._xrpc(method, params=params, auth=auth and self.is_authenticated,
                                service=service)

    async def procedure(self, method: str, body: Any = None) -> Any:
        """A POST XRPC call with a JSON body (refused before sending if it holds a float)."""
        found = find_float(body, "body")
        if found:
            raise ValidationError(found.removeprefix("body."),
                                  "is a float; ATProto records allow no floats")
        return await self._xrpc(method, procedure=True, json_body=body)

    # -- records -----------------------------------------------------------------------

    async def create_record(
        self, collection: str, record: dict[str, Any], *, rkey: str | None = None,
        validate: bool | None = None,
    ) -> dict[str, Any]:
        """Create a record; ``{uri, cid}``. Not repeated blindly after a 5xx."""
        body: dict[str, Any] = {"repo": self.did, "collection": collection, "record": record}
        if rkey is not None:
            body["rkey"] = rkey
        if validate is not None:
            body["validate"] = validate
        return await self.procedure("com.atproto.repo.createRecord", body)

    async def create_record_at(
        self, collection: str, rkey: str, record: dict[str, Any],
        matches: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Create a record at a deterministic ``rkey``, safe to retry: after a 5xx, a
        timeout or a conflict the key is read back, and a record found there (that
        ``matches(value)``) is reused; else the create is retried with backoff. Permanent
        errors (400, 403, 404...) are raised at once. ``{uri, cid, created}``."""
        attempt = 0
        while True:
            try:
                made = await self.create_record(collection, record, rkey=rkey)
                return {**made, "created": True}
            except XrpcError as exc:
                transient = exc.status is None or exc.status in _RETRY_STATUSES
                if not (transient or isinstance(exc, ConflictError)):
                    raise
                try:  # the create may have landed (a lost response), or a racer's did
                    found = await self.get_record(collection, rkey)
                except RecordNotFoundError:
                    found = None
                if found is not None:
                    if matches is not None and not matches(found.get("value", {})):
                        raise
                    return {"uri": found["uri"], "cid": found.get("cid"), "created": False}
                if not transient or attempt >= self.max_retries:
                    raise
                attempt += 1
                await backoff(log, "createRecord", attempt, self.backoff_base,
                              f"{exc.status} {exc.error}")

    async def put_record(
        self, collection: str, rkey: str, record: dict[str, Any], *,
        swap_record: str | None = None, validate: bool | None = None,
    ) -> dict[str, Any]:
        """Create or replace the record at ``rkey``; ``swap_record`` guards a CID."""
        body: dict[str, Any] = {"repo": self.did, "collection": collection, "rkey": rkey,
                                "record": record}
        if swap_record is not None:
            body["swapRecord"] = swap_record
        if validate is not None:
            body["validate"] = validate
        return await self.procedure("com.atproto.repo.putRecord", body)

    async def get_record(self, collection: str, rkey: str, *, repo: str | None = None,
                         service: str | None = None) -> dict[str, Any]:
        """``{uri, cid, value}``; RecordNotFoundError (a KeyError) when missing.
        ``service``: the PDS to ask (the repo's own, see ``resolve_pds``)."""
        return await self.query("com.atproto.repo.getRecord",
                                {"repo": repo or self.did, "collection": collection,
                                 "rkey": rkey}, service=service)

    async def delete_record(self, collection: str, rkey: str) -> None:
        await self.procedure("com.atproto.repo.deleteRecord",
                             {"repo": self.did, "collection": collection, "rkey": rkey})

    async def list_records(
        self, collection: str, *, repo: str | None = None, page_size: int = 100,
        service: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record of a collection, following the cursor to the end."""
        cursor = None
        while True:
            params = {"repo": repo or self.did, "collection": collection,
                      "limit": min(100, page_size), "cursor": cursor}
            page = await self.query("com.atproto.repo.listRecords", params, service=service)
            for record in page.get("records", []):
                yield record
            cursor = page.get("cursor")
            if not cursor or not page.get("records"):
                return

    async def apply_writes(self, writes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply writes in atomic chunks of at most 200; returns each write's result."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(writes), MAX_WRITES_PER_CALL):
            chunk = list(writes[start:start + MAX_WRITES_PER_CALL])
            body = await self.procedure("com.atproto.repo.applyWrites",
                                        {"repo": self.did, "writes": chunk})
            results.extend(body.get("results", []))
        return results

    async def upload_blob(self, data: bytes, content_type: str = "application/octet-stream"
                          ) -> dict[str, Any]:
        """Upload bytes; returns the blob ref to put in a record."""
        body = await self._xrpc("com.atproto.repo.uploadBlob", procedure=True, content=data,
                                content_type=content_type)
        return body["blob"]

    async def resolve_handle(self, handle: str) -> str:
        body = await self.query("com.atproto.identity.resolveHandle", {"handle": handle})
        return str(body["did"])

    async def _resolve_handle_here(self, handle: str) -> str:
        body = await self.query("com.atproto.identity.resolveHandle", {"handle": handle},
                                auth=False)
        return str(body.get("did")) if isinstance(body, dict) else ""

    async def resolve_pds(self, repo: str) -> str:
        """The PDS hosting ``repo`` (a handle or DID): this client's own for its own
        repo, else resolved through the handle and the DID document (cached)."""
        if self.is_authenticated and repo in (self.did, self.handle):
            return self.service_url
        return await self.identity.pds_for(repo)

    async def describe_repo(self, repo: str | None = None) -> dict[str, Any]:
        return await self.query("com.atproto.repo.describeRepo", {"repo": repo or self.did})


def _query(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    return {k: v for k, v in params.items() if v is not None}


def _error_fields(response: httpx.Response,
                  secret_request: bool = False) -> tuple[str | None, str | None]:
    """The XRPC ``error`` and ``message`` of a failed call, as short scrubbed strings.

    After a call whose body held a secret (``secret_request``), only a JSON ``error``
    name and ``message`` are kept, with every remembered secret masked: a server that
    echoes the request (an HTML error page, a debugging proxy) cannot put the password
    into our exception.
    """
    try:
        body = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        if kind.startswith("text/html") or response.text.lstrip()[:1] == "<":
            # a web page, not an XRPC error: the URL is most likely not a PDS
            return None, (f"{response.url.host} answered with a web page ({kind or 'html'}), "
                          "not XRPC: is this URL a PDS?")
        if secret_request:
            return None, response.reason_phrase or f"HTTP {response.status_code}"
        return None, redact(response.text[:200].strip()) or response.reason_phrase
    if not isinstance(body, dict):
        return None, None
    error, message = body.get("error"), body.get("message")
    error = redact(error[:100]) if isinstance(error, str) else None
    message = redact(message[:500]) if isinstance(message, str) else None
    if secret_request and message is not None and _echoes_request(response, message):
        message = "(the server's message quoted the request; not shown)"
    return error, message


def _echoes_request(response: httpx.Response, message: str) -> bool:
    """True when ``message`` repeats a value of the JSON request body (e.g. a password
    that was not remembered as a secret yet)."""
    try:
        sent = json.loads(response.request.content or b"{}")
    except (ValueError, RuntimeError):
        return True
    values = [v for k, v in (sent.items() if isinstance(sent, dict) else [])
              if k in ("password", "token", "refreshJwt") and isinstance(v, str) and v]
    return any(v in message or json.dumps(v)[1:-1] in message for v in values)


def _reset_at(response: httpx.Response) -> float | None:
    """When a 429 ends, as epoch seconds (``ratelimit-reset``, else ``retry-after``)."""
    reset = response.headers.get("ratelimit-reset")
    if reset and reset.isdigit():
        return float(reset)
    retry_after = response.headers.get("retry-after")
    if retry_after and retry_after.isdigit():
        return time.time() + float(retry_after)
    return None


def _error_for(method: str, status: int, error: str | None, message: str | None) -> XrpcError:
    if error in _AUTH_ERRORS or status == 401:
        return AuthError(method, status, error, message)
    if error in _NOT_FOUND_ERRORS:
        return RecordNotFoundError(method, status, error, message)
    if error in _CONFLICT_ERRORS or status == 409:
        return ConflictError(method, status, error, message)
    return XrpcError(method, status, error, message)
