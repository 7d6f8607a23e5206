"""AWS Signature Version 4 for S3 requests (pure: hashing only, the clock is passed in).

The store's light request path (``_backends/s3_light.py``) signs its GET/PUT/HEAD of one
object here instead of going through botocore's request pipeline: botocore rebuilds the
canonical request through several generic layers per request (a tenth of the CPU of a
small-object copy); this builds the same string directly, and derives the signing key once
per day instead of four HMACs per request. tests/test_s3_light.py checks the canonical
request and the signature against botocore's ``S3SigV4Auth`` on fixed inputs.

S3 flavour: the path is signed as sent (already percent-encoded, never normalised or
encoded twice), and the payload hash is given (the sha256 recorded at insert,
``UNSIGNED-PAYLOAD``, or the empty body's), never computed here.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import quote

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# What botocore leaves out of the signed headers (a proxy may change them in transit).
_UNSIGNED_HEADERS = frozenset({"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id",
                               "authorization"})


def quote_key(key: str) -> str:
    """An object key as S3 paths carry it (botocore's encoding: ``/`` and ``~`` kept)."""
    return quote(key, safe="/~")


def host_header(scheme: str, host: str, port: int | None) -> str:
    """The Host value botocore signs: lowercase, the port only when not the default."""
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        return f"{host}:{port}"
    return host


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(str(v), safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(method: str, path: str, query: str, headers: Mapping[str, str],
                      payload_hash: str) -> tuple[str, str]:
    """(canonical request, signed header names) of a request whose ``headers`` are the
    ones sent (names in any case; ``host`` among them)."""
    signed: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower not in _UNSIGNED_HEADERS:
            signed[lower] = " ".join(str(value).split())
    names = sorted(signed)
    block = "".join(f"{n}:{signed[n]}\n" for n in names)
    names_text = ";".join(names)
    return f"{method.upper()}\n{path}\n{query}\n{block}\n{names_text}\n{payload_hash}", names_text


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


class Signer:
    """SigV4 with one set of credentials for one region and service. The secret (and the
    session token) never appear in the repr; signing keys are kept per day."""

    __slots__ = ("_keys", "_secret", "access_key_id", "region", "service", "session_token")

    def __init__(self, access_key_id: str, secret_access_key: str, region: str,
                 service: str = "s3", session_token: str | None = None) -> None:
        self.access_key_id = access_key_id
        self._secret = secret_access_key
        self.region = region
        self.service = service
        self.session_token = session_token
        self._keys: dict[str, bytes] = {}

    def __repr__(self) -> str:
        from .redact import mask_key_id

        return (f"Signer(access_key_id={mask_key_id(self.access_key_id)!r}, "
                f"region={self.region!r}, service={self.service!r})")

    def _key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = f"AWS4{self._secret}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            if len(self._keys) > 2:
                self._keys.clear()
            self._keys[day] = key
        return key

    def sign(self, method: str, path: str, headers: dict[str, str], payload_hash: str,
             now: datetime.datetime, query: str = "") -> dict[str, str]:
        """``headers`` (with ``Host``) completed in place with X-Amz-Date,
        X-Amz-Content-SHA256, X-Amz-Security-Token and Authorization; returned."""
        stamp = timestamp(now)
        headers["X-Amz-Date"] = stamp
        headers["X-Amz-Content-SHA256"] = payload_hash
        if self.session_token:
            headers["X-Amz-Security-Token"] = self.session_token
        request, names = canonical_request(method, path, query, headers, payload_hash)
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        to_sign = (f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n"
                   f"{hashlib.sha256(request.encode()).hexdigest()}")
        signature = hmac.digest(self._key(stamp[:8]), to_sign.encode(), "sha256").hex()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key_id}/{scope}, "
                                    f"SignedHeaders={names}, Signature={signature}")
        return headers
