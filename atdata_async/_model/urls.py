"""URL helpers: brace expansion and s3:// parsing (pure)."""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import urlsplit

from .._errors import ConfigurationError

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..009}`` ranges (zero padding kept) and ``{a,b}`` lists, left to right."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    if ".." in body:
        lo, hi = body.split("..", 1)
        if not (lo.isdigit() and hi.isdigit()):
            raise ConfigurationError(f"bad brace range {{{body}}} in {pattern!r}")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [head + c + rest for c in choices for rest in expand_braces(tail)]


class S3Location(NamedTuple):
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket/key`` -> (bucket, key); anything else is a ConfigurationError."""
    parts = urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise ConfigurationError(f"not an s3://bucket/key URL: {url!r}")
    return S3Location(parts.netloc, key)


def url_kind(url: str) -> str:
    """One of ``s3``, ``http``, ``file`` (local paths and file:// URLs)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        return "s3"
    if scheme in ("http", "https"):
        return "http"
    if scheme in ("", "file"):
        return "file"
    raise ConfigurationError(f"unsupported URL scheme {scheme!r} in {url!r}")


def local_path(url: str) -> str:
    """The filesystem path of a local path or ``file://`` URL."""
    return urlsplit(url).path if url.startswith("file://") else url
