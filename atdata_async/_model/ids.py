"""ATProto identifiers (pure): at-uris, record keys, TIDs."""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import NamedTuple

from .._errors import ConfigurationError

_AT_URI = re.compile(r"^at://([^/?#]+)/([a-zA-Z][a-zA-Z0-9.-]*[a-zA-Z0-9])/([^/?#]+)$")
_RKEY = re.compile(r"^[A-Za-z0-9._:~-]{1,512}$")
_TID_CHARS = "234567abcdefghijklmnopqrstuvwxyz"
_TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")


class AtUri(NamedTuple):
    repo: str
    collection: str
    rkey: str

    def __str__(self) -> str:
        return f"at://{self.repo}/{self.collection}/{self.rkey}"


def parse_at_uri(uri: str, collection: str | None = None) -> AtUri:
    """``at://repo/collection/rkey``; a malformed URI or another collection is a ValueError."""
    match = _AT_URI.match(uri) if isinstance(uri, str) else None
    if match is None:
        raise ConfigurationError(f"not a record at-uri (at://repo/collection/rkey): {uri!r}")
    parsed = AtUri(*match.groups())
    if collection is not None and parsed.collection != collection:
        raise ConfigurationError(f"{uri} is a {parsed.collection} record, not {collection}")
    return parsed


def is_record_key(rkey: str) -> bool:
    return bool(_RKEY.match(rkey)) and rkey not in (".", "..")


def record_key_from(text: str) -> str:
    """A valid record key made from arbitrary text (invalid characters become '_')."""
    key = re.sub(r"[^A-Za-z0-9._:~-]", "_", text)[:512]
    return key if is_record_key(key) else f"k{key}"


_tid_lock = threading.Lock()
_last_tid_us = 0
_CLOCK_ID = secrets.randbelow(1024)


def tid_from(microseconds: int, clock_id: int = _CLOCK_ID) -> str:
    """The 13-character sortable TID for a timestamp (µs since epoch) and clock id."""
    value = (microseconds << 10) | (clock_id & 0x3FF)
    return "".join(_TID_CHARS[(value >> (5 * i)) & 31] for i in reversed(range(13)))


def next_tid() -> str:
    """A fresh TID, strictly increasing within this process."""
    global _last_tid_us
    with _tid_lock:
        now = max(time.time_ns() // 1000, _last_tid_us + 1)
        _last_tid_us = now
    return tid_from(now)


def is_tid(value: str) -> bool:
    return bool(_TID.match(value))


# -- identities: DIDs, handles and DID documents (pure) ---------------------------------

_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_HANDLE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_did(value: str) -> bool:
    return isinstance(value, str) and len(value) <= 2048 and bool(_DID.match(value))


def is_handle(value: str) -> bool:
    return isinstance(value, str) and len(value) <= 253 and bool(_HANDLE.match(value))


def did_web_url(did: str, scheme: str = "https") -> str:
    """Where a did:web's document lives: ``did:web:host%3Aport[:path...]``."""
    from urllib.parse import unquote

    parts = did.removeprefix("did:web:").split(":")
    host = unquote(parts[0])
    if not host or "/" in host or "@" in host:
        raise ConfigurationError(f"not a did:web: {did!r}")
    path = "/".join(unquote(p) for p in parts[1:])
    return f"{scheme}://{host}/{path}/did.json" if path else \
        f"{scheme}://{host}/.well-known/did.json"


def handles_of(doc: dict) -> list[str]:
    """The handles a DID document claims (``alsoKnownAs: at://handle``), lower case."""
    aka = doc.get("alsoKnownAs") if isinstance(doc, dict) else None
    return [a.removeprefix("at://").lower() for a in aka or []
            if isinstance(a, str) and a.startswith("at://")]


def service_url_allowed(url: str, *, allow_http: bool = False) -> bool:
    """A PDS endpoint we may send requests to: https, or plain http to a loopback host
    (a local development PDS) or when asked; never credentials, a query or a fragment."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        return False
    if not host or parts.username or parts.password or parts.query or parts.fragment:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and (allow_http or host.lower() in _LOOPBACK)


def pds_endpoint_of(doc: dict, did: str) -> str | None:
    """The ``#atproto_pds`` service endpoint of ``did``'s document (None if it has none)."""
    if not isinstance(doc, dict):
        return None
    for service in doc.get("service") or []:
        if not isinstance(service, dict):
            continue
        sid, endpoint = service.get("id"), service.get("serviceEndpoint")
        if sid in ("#atproto_pds", f"{did}#atproto_pds") and isinstance(endpoint, str):
            return endpoint.rstrip("/")
    return None
