"""Records from others are untrusted input (pure): what a published record may make a
reader touch, and how its text may reach a terminal.

A reader of someone else's record reads only ``https://`` (``http://`` when asked),
``s3://`` and the author's blobs; never a local path or ``file://``. An S3 record's
bucket and endpoint are the record's: a store passed by the reader must be that very
bucket at that very endpoint (never its own bucket silently swapped in), and without a
store the shards are read anonymously over HTTP from the record's endpoint.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from .._errors import UntrustedSourceError
from .lexicon import StorageBlobs, StorageExternal, StorageHttp, StorageS3

if TYPE_CHECKING:
    from .._backends.s3_store import S3DataStore

_BUCKET_DNS = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class RedirectPolicy:
    """Where an HTTP redirect may lead: the same host (and port), or one listed in
    ``hosts``; plain http only with ``allow_http``."""

    allow_http: bool = False
    hosts: frozenset[str] = frozenset()

    def check(self, shard: str, origin: str, target: str) -> None:
        """Raise UntrustedSourceError unless a redirect from ``origin`` to ``target`` is
        allowed (``shard`` names the shard in the message)."""
        src, dst = urlsplit(origin), urlsplit(target)
        if dst.scheme not in ("https", "http") or (dst.scheme == "http"
                                                    and not self.allow_http):
            raise UntrustedSourceError(f"{shard}: refused a redirect to {_show(target)} "
                                       f"(only https{' or http' if self.allow_http else ''})")
        if _netloc(src) != _netloc(dst) and (dst.hostname or "").lower() not in self.hosts \
                and _netloc(dst) not in self.hosts:
            raise UntrustedSourceError(
                f"{shard}: refused a redirect to another host, {dst.hostname} (allow it "
                f"with allow_redirects_to=[{dst.hostname!r}])")


def _netloc(parts: Any) -> str:
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return f"{(parts.hostname or '').lower()}:{port}"


def _show(url: str) -> str:
    return printable(url)[:200]


def web_url_allowed(url: str, allow_http: bool) -> bool:
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and allow_http)


def _check_web(url: str, allow_http: bool) -> str:
    if not isinstance(url, str) or not web_url_allowed(url, allow_http):
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        why = ("a local file" if scheme in ("", "file") else
               "plain http (pass allow_http=True to read it)" if scheme == "http" else
               f"the {scheme!r} scheme")
        raise UntrustedSourceError(f"the record names {_show(str(url))}: a published dataset "
                                   f"is read only from https, s3 or blobs, not {why}")
    return url


def _origin(endpoint: str | None) -> tuple[str, str, int | None, str] | None:
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/")


def anonymous_s3_url(bucket: str, key: str, endpoint: str | None, region: str | None) -> str:
    """A plain GET URL for an object: path style on a given endpoint, AWS's virtual host
    (or path style for bucket names that are not DNS labels) otherwise."""
    path = quote(key, safe="/~")
    if endpoint is not None:
        return f"{endpoint.rstrip('/')}/{quote(bucket, safe='')}/{path}"
    host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
    if _BUCKET_DNS.match(bucket):
        return f"https://{bucket}.{host}/{path}"
    return f"https://{host}/{quote(bucket, safe='')}/{path}"


def check_store(bucket: str, endpoint: str | None, region: str | None,
                store: S3DataStore) -> None:
    """The reader's store must be the record's bucket at the record's endpoint."""
    where = endpoint or "AWS S3"
    if store.bucket != bucket or _origin(store.endpoint) != _origin(endpoint):
        raise UntrustedSourceError(
            f"the record's shards are in bucket {bucket!r} at {_show(where)}, but the store "
            f"passed is bucket {store.bucket!r} at {store.endpoint or 'AWS S3'}: pass a store "
            f"for that bucket and endpoint, or none to read them anonymously")
    if region and store.region and region != store.region:
        raise UntrustedSourceError(f"the record's bucket {bucket!r} is in region {region!r}, "
                                   f"the store passed is for {store.region!r}")


@dataclass(frozen=True)
class ShardSource:
    """One shard of a record, as a reader will fetch it: ``read_url`` (s3:// through the
    checked store, else https/http), and the sha256 the record claims (or None)."""

    url: str
    read_url: str
    sha256: str | None


def record_sources(entry: Any, *, store: S3DataStore | None = None,
                   allow_http: bool = False) -> list[ShardSource]:
    """What reading ``entry`` (an AtmosphereDatasetEntry) may fetch, checked; raises
    UntrustedSourceError for anything a record must not make a reader touch."""
    storage, sums = entry.storage, entry.checksums
    out: list[ShardSource] = []

    def s3(url: str, bucket: str, key: str, endpoint: str | None, region: str | None) -> None:
        if endpoint is not None:
            _check_web(endpoint, allow_http)
            if urlsplit(endpoint).username or urlsplit(endpoint).password:
                raise UntrustedSourceError("the record's S3 endpoint carries credentials")
        if store is not None:
            check_store(bucket, endpoint, region, store)
            out.append(ShardSource(url, f"s3://{bucket}/{key}", sums.get(url)))
        else:
            out.append(ShardSource(url, anonymous_s3_url(bucket, key, endpoint, region),
                                   sums.get(url)))

    if isinstance(storage, StorageS3):
        for shard in storage.shards:
            url = f"s3://{storage.bucket}/{shard.key}"
            s3(url, storage.bucket, shard.key, storage.endpoint, storage.region)
    elif isinstance(storage, StorageHttp):
        for shard in storage.shards:
            out.append(ShardSource(shard.url, _check_web(shard.url, allow_http),
                                   sums.get(shard.url)))
    elif isinstance(storage, StorageExternal):
        for url in storage.urls:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is not None and parts.scheme == "s3" and parts.netloc and parts.path:
                s3(url, parts.netloc, parts.path.lstrip("/"), None, None)
            else:
                out.append(ShardSource(url, _check_web(url, allow_http), sums.get(url)))
    elif isinstance(storage, StorageBlobs):
        did = entry.uri.removeprefix("at://").split("/", 1)[0]
        if not entry.pds_url or not did.startswith("did:"):
            raise UntrustedSourceError("blob shards are read from the author's PDS: get the "
                                       "entry through AtmosphereIndex.get_dataset")
        for url in entry.data_urls:
            cid = url.removeprefix("blob:")
            query = urlencode({"did": did, "cid": cid})
            out.append(ShardSource(url, f"{entry.pds_url}/xrpc/com.atproto.sync.getBlob?"
                                        f"{query}", sums.get(url)))
    else:
        raise UntrustedSourceError(f"unknown storage {type(storage).__name__} in the record")
    if not out:
        raise UntrustedSourceError("the record names no shards")
    return out


def redirect_policy(allow_http: bool, hosts: Collection[str]) -> RedirectPolicy:
    return RedirectPolicy(allow_http, frozenset(h.lower() for h in hosts))


# -- text for a terminal -----------------------------------------------------------------

_BIDI = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
         "\u2069", "\u200e", "\u200f", "\u061c"}


def printable(text: Any) -> str:
    """``text`` without control characters (ESC, CR, BEL, C1, bidi overrides), which a
    record could use to rewrite or hide what a terminal shows; newlines and tabs become
    spaces (a record must not forge lines of the output)."""
    return "".join(" " if c in "\n\t" else "" if c in _BIDI or unicodedata.category(c) == "Cc"
                   else c for c in str(text))
