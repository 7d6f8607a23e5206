"""The light request path: GET, PUT and HEAD of one object without botocore's layers.

A small-object copy across endpoints is two requests per shard, and botocore spends
~1.5 ms of CPU on each (serialising, a dozen event hooks, signing through generic
layers, parsing the answer into a dict): more than streaming the shard's MiB. Here a
request is signed by ``_model.sigv4`` and sent straight on the aiohttp session the
store's aiobotocore client already holds (same pool, TLS settings, timeouts).

Everything else stays botocore's, and so do the decisions this path must share with it:
- retries: each failed attempt is put to the client's own ``needs-retry`` handlers
  (botocore's standard policy with its retry quota, and the store's throttle watcher
  that paces the endpoint), so a backend still retries in one place and one way;
- errors: answers become botocore ``ClientError``s and aiohttp failures the botocore
  exceptions aiobotocore raises for them, so the store's one seam translates them;
- where a bucket lives: the scheme, host, path prefix (path or virtual-host style) and
  come from botocore itself (a presigned URL, once per bucket); the signing region is
  the one configured.
Credentials live in the Signer only; nothing here logs or raises with headers, and no
redirect is followed (botocore follows none either: a followed 3xx would carry the signed
headers, the session token among them, to wherever the answer points).
"""

from __future__ import annotations

import asyncio
import datetime
import html
import re
import socket
from collections.abc import AsyncIterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from yarl import URL

from .._model.sigv4 import EMPTY_SHA256, Signer, host_header, quote_key

_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_ETAG = re.compile(rb"<ETag>([^<]*)</ETag>")
_PROBE_KEY = "atdata-probe"
_AWS_HOST = re.compile(r"(^|\.)amazonaws\.com(\.cn)?$", re.IGNORECASE)
# Above this a PUT first asks the server whether it will take the body (Expect:
# 100-continue, one round trip): below it a refused body costs less than the wait (the
# AWS SDKs draw the line at 2 MiB too).
EXPECT_ABOVE = 2 * 1024 * 1024
# How much of a GET body aiohttp buffers before it stops reading the socket (its default,
# 64 KiB, pauses and resumes the transport many times per MiB a streamed copy forwards).
GET_BUFSIZE = 1024 * 1024


class Answer:
    """What botocore's retry checkers and the store's throttle watcher read of an answer."""

    __slots__ = ("headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str]) -> None:
        self.status_code, self.headers = status_code, headers


class AnswerError(ClientError):
    """An S3 error answer, as botocore would have raised it (``answer`` for the retry
    policy)."""

    def __init__(self, answer: Answer, code: str, message: str, operation: str) -> None:
        super().__init__({"Error": {"Code": code, "Message": message},
                          "ResponseMetadata": {"HTTPStatusCode": answer.status_code}},
                         operation)
        self.answer = answer


def foreign(exc: BaseException, url: str) -> BaseException:
    """An aiohttp failure as the botocore exception aiobotocore raises for it (so the
    retry policy and the store's seam see the same thing on both paths)."""
    if isinstance(exc, BotoCoreError | ClientError):
        return exc
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return ConnectionClosedError(endpoint_url=url, error=exc)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        if str(exc).lower().startswith("connect"):
            return ConnectTimeoutError(endpoint_url=url, error=exc)
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, aiohttp.ClientConnectionError | socket.gaierror):
        return EndpointConnectionError(endpoint_url=url, error=exc)
    if isinstance(exc, asyncio.TimeoutError):
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, Exception):
        return HTTPClientError(error=exc)
    return exc


class _Bucket:
    __slots__ = ("base", "host", "prefix", "signer")

    def __init__(self, base: URL, prefix: str, host: str, signer: Signer) -> None:
        self.base, self.prefix, self.host, self.signer = base, prefix, host, signer


class LightRequests:
    """Signed single-object requests on one aiobotocore client's session and policy."""

    def __init__(self, client: Any, access_key_id: str, secret_access_key: str,
                 session_token: str | None) -> None:
        self._client = client
        self._credentials = (access_key_id, secret_access_key, session_token)
        self._buckets: dict[str, _Bucket] = {}
        self._ops: dict[str, Any] = {}
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return "LightRequests()"

    @classmethod
    def usable(cls, client: Any) -> bool:
        """Whether this client's session can be borrowed (no proxy; the private parts of
        aiobotocore this relies on are there) and its endpoint is not AWS's own: AWS
        answers a request for a bucket of another region with a redirect, which botocore
        follows (and remembers) and this path, following none, could only refuse."""
        endpoint = getattr(client, "_endpoint", None)
        http = getattr(endpoint, "http_session", None)
        config = getattr(http, "_proxy_config", None)
        if not callable(getattr(http, "_get_session", None)) or config is None:
            return False
        host = getattr(endpoint, "host", "") or ""
        if _AWS_HOST.search(urlsplit(host).hostname or ""):
            return False
        return not config.proxy_url_for(host)

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = await self._client._endpoint.http_session._get_session(None)
        return self._http

    async def _bucket(self, bucket: str) -> _Bucket:
        """Where botocore would send a request for ``bucket``: read off a presigned URL
        (scheme, host, path or virtual-host prefix); signed for the configured region."""
        found = self._buckets.get(bucket)
        if found is None:
            url = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": _PROBE_KEY}, ExpiresIn=60)
            parts = urlsplit(url)
            if not parts.path.endswith("/" + _PROBE_KEY):
                raise HTTPClientError(error=ValueError("unexpected S3 URL layout"))
            region = self._client.meta.region_name  # as configured (a v2 presign has none)
            key_id, secret, token = self._credentials
            found = _Bucket(URL(f"{parts.scheme}://{parts.netloc}", encoded=True),
                            parts.path[:-len(_PROBE_KEY)],
                            host_header(parts.scheme, parts.hostname or "", parts.port),
                            Signer(key_id, secret, region, "s3", token))
            self._buckets[bucket] = found
        return found

    def _operation(self, name: str) -> Any:
        op = self._ops.get(name)
        if op is None:
            op = self._ops[name] = self._client.meta.service_model.operation_model(name)
        return op

    async def _signed(self, method: str, bucket: str, key: str, headers: dict[str, str],
                      payload_hash: str) -> tuple[URL, dict[str, str]]:
        where = await self._bucket(bucket)
        path = where.prefix + quote_key(key)
        headers["Host"] = where.host
        where.signer.sign(method, path, headers, payload_hash,
                          datetime.datetime.now(datetime.UTC))
        return where.base.with_path(path, encoded=True), headers  # no re-parse

    # -- the retry policy and the pace: the client's own handlers ------------------------

    async def retry_delay(self, operation: str, attempt: int, context: dict[str, Any],
                          error: BaseException) -> float | None:
        """Seconds to wait before another attempt, or None: botocore's standard policy
        (and quota) decides, and the store's throttle watcher sees every answer."""
        # botocore's region redirector rewrites botocore's own request and asks for a
        # retry: here there is none to rewrite, so it is told this one was redirected
        # already (a 3xx stays an error: the region is the one configured)
        context.setdefault("s3_redirect", {"redirected": True, "bucket": None, "params": {}})
        answer = getattr(error, "answer", None)
        response = (answer, error.response) if isinstance(error, ClientError) and \
            answer is not None else None
        responses = await self._client.meta.events.emit(
            f"needs-retry.s3.{operation}", response=response, endpoint=self._client._endpoint,
            operation=self._operation(operation), attempts=attempt,
            caught_exception=None if response is not None else error,
            request_dict={"context": context})
        return next((r for _, r in responses if r is not None), None)

    async def succeeded(self, operation: str, context: dict[str, Any], status: int) -> None:
        """botocore's after-call: gives back retry quota (what a success is owed)."""
        await self._client.meta.events.emit(
            f"after-call.s3.{operation}", http_response=Answer(status, {}), parsed={},
            model=self._operation(operation), context=context)

    # -- one attempt of each request ---------------------------------------------------

    async def _check(self, response: aiohttp.ClientResponse, operation: str) -> None:
        """Raise the S3 error an answer carries (its body read and released)."""
        if response.status < 300:
            return
        try:
            body = b"" if response.method == "HEAD" else await response.content.read(65536)
        finally:
            response.release()
        code = _CODE.search(body)
        message = _MESSAGE.search(body)
        raise AnswerError(Answer(response.status, response.headers),
                          code.group(1).decode() if code else str(response.status),
                          message.group(1).decode() if message else (response.reason or ""),
                          operation)

    async def get(self, bucket: str, key: str, headers: dict[str, str],
                  operation: str = "GetObject") -> aiohttp.ClientResponse:
        """One GET (or HEAD); the answer's body is the caller's to read and release."""
        method = "HEAD" if operation == "HeadObject" else "GET"
        url, signed = await self._signed(method, bucket, key, headers, EMPTY_SHA256)
        session = await self._session()
        try:
            response = await session.request(method, url, headers=signed,
                                             allow_redirects=False, read_bufsize=GET_BUFSIZE)
        except Exception as exc:
            raise foreign(exc, str(url)) from exc
        await self._check(response, operation)
        return response

    async def put(self, bucket: str, key: str, headers: dict[str, str], payload_hash: str,
                  body: AsyncIterable[bytes] | bytes, size: int) -> aiohttp.ClientResponse:
        """One PUT of ``size`` bytes; returns the (released) answer."""
        headers["Content-Length"] = str(size)
        if size > EXPECT_ABOVE:
            headers["Expect"] = "100-continue"
        url, signed = await self._signed("PUT", bucket, key, headers, payload_hash)
        session = await self._session()
        try:
            response = await session.request("PUT", url, headers=signed, data=body,
                                             allow_redirects=False)
        except Exception as exc:
            raise foreign(exc, str(url)) from exc
        await self._check(response, "PutObject")
        response.release()
        return response

    async def copy(self, bucket: str, key: str, source_bucket: str, source_key: str,
                   headers: dict[str, str]) -> str:
        """One CopyObject (a PUT with ``x-amz-copy-source``, no body): the new object's
        ETag (unquoted). S3 may answer 200 with an error in the body (the copy failed
        after the answer began): raised as botocore does, a 500 for the retry policy."""
        headers["x-amz-copy-source"] = quote(f"{source_bucket}/{source_key}", safe="-._~/")
        headers["Content-Length"] = "0"
        url, signed = await self._signed("PUT", bucket, key, headers, EMPTY_SHA256)
        session = await self._session()
        try:
            response = await session.request("PUT", url, headers=signed,
                                             allow_redirects=False)
        except Exception as exc:
            raise foreign(exc, str(url)) from exc
        await self._check(response, "CopyObject")
        try:
            body = await response.read()
        except Exception as exc:
            raise foreign(exc, str(url)) from exc
        finally:
            response.release()
        etag = _ETAG.search(body)
        if etag is None or b"<CopyObjectResult" not in body:
            code, message = _CODE.search(body), _MESSAGE.search(body)
            raise AnswerError(Answer(500, response.headers),
                              code.group(1).decode() if code else "InternalError",
                              message.group(1).decode() if message else "no copy result",
                              "CopyObject")
        return html.unescape(etag.group(1).decode()).strip('"')
