"""The validation edge (pure): every public entry point checks its arguments here first.

Why one module: a wrong type or range found deep inside (after a schema record was
written, or as an AttributeError from a helper) is both a stray remote write and a raw
error. Every check raises ValidationError (a ValueError) or FieldTypeError (a TypeError
too), each naming the parameter or record field, before any I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .._errors import FieldTypeError, ValidationError

# ATProto integers are 64-bit in the data model, but the reference PDS (JavaScript)
# refuses integers beyond Number.MAX_SAFE_INTEGER when it encodes a record as CBOR.
MAX_RECORD_INT = 2**53 - 1
MAX_STORED_INT = 2**63 - 1  # msgpack in Redis: a signed 64-bit integer
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 100_000
MAX_CONCURRENCY = 1024
MIB = 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * MIB  # S3: a part (and a single PUT or CopyObject) is at most 5 GiB
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# C0 controls, DEL and C1 controls; lines may keep tab and newlines where text is free.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_EXCEPT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(field: str, value: Any, *, minimum: int = 0, maximum: int = MAX_RECORD_INT,
              optional: bool = False) -> int | None:
    """An integer (not a bool) in ``[minimum, maximum]``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldTypeError(field, f"must be an integer, got {_type_name(value)}")
    if not minimum <= value <= maximum:
        raise ValidationError(field, f"must be between {minimum} and {maximum}, got {value}")
    return value


def check_number(field: str, value: Any, *, minimum: float = 0.0,
                 maximum: float = math.inf) -> float:
    """A finite (or +inf when allowed) real number in range; bools refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldTypeError(field, f"must be a number, got {_type_name(value)}")
    if math.isnan(value) or not minimum <= value <= maximum:
        raise ValidationError(field, f"must be between {minimum} and {maximum}, got {value}")
    return value


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldTypeError(field, f"must be True or False, got {_type_name(value)}")
    return value


def check_text(field: str, value: Any, *, optional: bool = False, multiline: bool = False,
               nonempty: bool = False) -> str | None:
    """A string that can go into a lexicon string: valid UTF-8 (no lone surrogates) and
    no control characters (``multiline`` keeps tab, CR and LF)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FieldTypeError(field, f"must be a string, got {_type_name(value)}")
    check_chars(field, value, multiline=multiline)
    if nonempty and not value.strip():
        raise ValidationError(field, "must not be empty")
    return value


def check_string(field: str, value: Any) -> str:
    """A str that encodes as UTF-8 (no lone surrogates); control characters allowed."""
    if not isinstance(value, str):
        raise FieldTypeError(field, f"must be a string, got {_type_name(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(field, f"holds a lone surrogate at position {exc.start}; "
                                     "it cannot be encoded as UTF-8") from None
    return value


def check_chars(field: str, value: str, *, multiline: bool = False) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(field, f"holds a lone surrogate at position {exc.start}; "
                                     "it cannot be encoded as UTF-8") from None
    pattern = _CONTROL_EXCEPT_WHITESPACE if multiline else _CONTROL
    found = pattern.search(value)
    if found:
        raise ValidationError(field, f"holds the control character {found.group()!r} at "
                                     f"position {found.start()}")


def check_tags(value: Any, field: str = "tags") -> list[str] | None:
    """A list (or tuple) of strings; a bare string would become one tag per letter."""
    if value is None:
        return None
    if isinstance(value, str | bytes | bytearray) or not isinstance(value, Sequence):
        raise FieldTypeError(field, f"must be a list of strings, got {_type_name(value)}")
    tags = list(value)
    for i, tag in enumerate(tags):
        check_text(f"{field}[{i}]", tag, nonempty=True)
    return tags


def url_userinfo(url: str) -> bool:
    """True when ``url`` carries ``user[:password]@`` before its host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return "@" in parts.netloc


def check_url(field: str, value: Any, *, schemes: Sequence[str] | None = None) -> str:
    """A URL (or local path) with no credentials inside and, if given, an allowed scheme."""
    check_text(field, value, nonempty=True)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (parses the port: "host:99999" raises here)
    except ValueError as exc:
        raise ValidationError(field, f"is not a valid URL ({exc}): {value!r}") from None
    if "@" in parts.netloc:
        raise ValidationError(field, "must not carry credentials (user:password@host); "
                                     f"got {redact_userinfo(value)!r}")
    if schemes is not None and parts.scheme.lower() not in schemes:
        raise ValidationError(field, f"must be a {'/'.join(schemes)} URL, got {value!r}")
    return value


def redact_userinfo(url: str) -> str:
    """``scheme://user:pw@host/...`` -> ``scheme://***@host/...`` (other URLs unchanged)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" not in netloc:
        return url
    return f"{scheme}://***@{netloc.rsplit('@', 1)[1]}{slash}{tail}"


def check_metadata(field: str, value: Any, *, for_record: bool) -> dict[str, Any] | None:
    """A JSON-able dict: str keys, bounded depth and size, integers in range.

    ``for_record``: it goes into an ATProto record (integers within what the PDS takes,
    strings free of control characters; floats are left to the lexicon check, which
    names them). Otherwise it goes to Redis as msgpack (64-bit integers, bytes allowed).
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise FieldTypeError(field, f"must be a dict, got {_type_name(value)}")
    maximum = MAX_RECORD_INT if for_record else MAX_STORED_INT
    size = [0]

    def walk(path: str, item: Any, depth: int) -> None:
        if depth > MAX_METADATA_DEPTH:
            raise ValidationError(path, f"nests deeper than {MAX_METADATA_DEPTH} levels")
        size[0] += 8
        if size[0] > 10 * MAX_METADATA_BYTES:
            raise ValidationError(field, "is far too large")
        if item is None or isinstance(item, bool):
            return
        if isinstance(item, int):
            if not -maximum - 1 <= item <= maximum:
                raise ValidationError(path, f"is an integer beyond +/-{maximum}")
            return
        if isinstance(item, float):
            if not for_record and not math.isfinite(item):
                raise ValidationError(path, f"is {item}; only finite numbers are stored")
            return
        if isinstance(item, str):
            size[0] += len(item)
            check_chars(path, item, multiline=True)
            return
        if isinstance(item, bytes | bytearray) and not for_record:
            size[0] += len(item)
            return
        if isinstance(item, Mapping):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise FieldTypeError(path, f"has a key of type {_type_name(key)}; "
                                               "keys must be strings")
                check_chars(f"{path} key", key)
                size[0] += len(key)
                walk(f"{path}.{key}", sub, depth + 1)
            return
        if isinstance(item, list | tuple):
            for i, sub in enumerate(item):
                walk(f"{path}[{i}]", sub, depth + 1)
            return
        raise FieldTypeError(path, f"holds a {_type_name(item)}, which is not JSON")

    walk(field, value, 1)
    if size[0] > 10 * MAX_METADATA_BYTES:
        raise ValidationError(field, "is far too large")
    return dict(value)


def check_concurrency(field: str, value: Any) -> int:
    """At least 1 (0 would wait forever for a free slot)."""
    return check_int(field, value, minimum=1, maximum=MAX_CONCURRENCY)  # type: ignore[return-value]


def check_store_sizes(*, part_size: Any, multipart_threshold: Any, min_part_size: Any,
                      copy_multipart_threshold: Any, copy_part_size: Any,
                      max_concurrency: Any, max_attempts: Any,
                      max_server_copies: Any = 1, max_streamed_copies: Any = 1) -> None:
    """S3DataStore's knobs within what S3 accepts (parts of 1 B..5 GiB, 10,000 at most;
    ``min_part_size`` below 5 MiB only for servers that allow smaller parts)."""
    check_int("min_part_size", min_part_size, minimum=1, maximum=MAX_PART_SIZE)
    # a preferred part size below the minimum is raised to it when parts are planned
    check_int("part_size", part_size, minimum=1, maximum=MAX_PART_SIZE)
    check_int("copy_part_size", copy_part_size, minimum=1, maximum=MAX_PART_SIZE)
    check_int("multipart_threshold", multipart_threshold, minimum=0, maximum=MAX_PART_SIZE)
    check_int("copy_multipart_threshold", copy_multipart_threshold, minimum=0,
              maximum=MAX_STORED_INT)
    check_concurrency("max_concurrency", max_concurrency)
    check_concurrency("max_server_copies", max_server_copies)
    check_concurrency("max_streamed_copies", max_streamed_copies)
    check_int("max_attempts", max_attempts, minimum=1, maximum=100)


def check_sha256(field: str, value: Any) -> str:
    if not isinstance(value, str) or not SHA256_HEX.match(value):
        raise ValidationError(field, f"is not a sha256 hex digest: {value!r:.80}")
    return value


def check_entry(entry: Any) -> None:
    """A LocalDatasetEntry's fields (it may come from hand-written Redis or a caller):
    the data URLs, and the checksums, sizes and ETags it claims per URL."""
    check_text("entry.name", entry.name, nonempty=True)
    check_text("entry.schema_ref", entry.schema_ref)
    urls = entry.data_urls
    if isinstance(urls, str | bytes) or not isinstance(urls, Sequence):
        raise FieldTypeError("entry.data_urls", f"must be a list of URLs, got {_type_name(urls)}")
    for i, url in enumerate(urls):
        check_url(f"entry.data_urls[{i}]", url, schemes=("s3", "http", "https", "file", ""))
    metadata = check_metadata("entry.metadata", entry.metadata, for_record=False) or {}
    for key, check in (("checksums", check_sha256), ("etags", _check_etag),
                       ("shard_sizes", _check_size)):
        claims = metadata.get(key)
        if claims is None:
            continue
        if not isinstance(claims, Mapping):
            raise FieldTypeError(f"entry.metadata.{key}", "must map each data URL to a value, "
                                 f"got {_type_name(claims)}")
        for url, claim in claims.items():
            check(f"entry.metadata.{key}[{url!r}]", claim)
    samples = metadata.get("num_samples")
    if samples is not None:
        check_int("entry.metadata.num_samples", samples)


def _check_etag(field: str, value: Any) -> None:
    check_text(field, value, nonempty=True)


def _check_size(field: str, value: Any) -> None:
    check_int(field, value)


def check_promotion_args(*, name: Any, description: Any, tags: Any, license: Any,
                         copy_prefix: Any, max_concurrency: Any = 1,
                         compute_checksums: Any = True, verify: Any = True,
                         max_server_copies: Any = 1, max_streamed_copies: Any = 1) -> None:
    """promote_to_atmosphere's and preview_promotion's own parameters."""
    check_text("name", name, optional=True, nonempty=True)
    check_text("description", description, optional=True, multiline=True)
    check_tags(tags)
    check_text("license", license, optional=True)
    check_text("copy_prefix", copy_prefix)
    if ".." in copy_prefix.split("/"):
        raise ValidationError("copy_prefix", "must not contain '..' segments")
    check_concurrency("max_concurrency", max_concurrency)
    check_concurrency("max_server_copies", max_server_copies)
    check_concurrency("max_streamed_copies", max_streamed_copies)
    check_bool("compute_checksums", compute_checksums)
    check_bool("verify", verify)


_UNSET = object()


def check_handles(*, entry: Any = _UNSET, local_index: Any = None, client: Any = None,
                  data_store: Any = None, progress: Any = None) -> None:
    """The objects a promotion is handed are of the right kind (else an AttributeError
    deep inside). ``data_store`` and ``progress`` may be None."""
    from .._backends.redis_index import LocalDatasetEntry, LocalIndex
    from .._backends.s3_store import S3DataStore
    from .._backends.xrpc import AtmosphereClient

    for field, value, kind, optional in (
            ("entry", entry, LocalDatasetEntry, entry is _UNSET),
            ("local_index", local_index, LocalIndex, False),
            ("client", client, AtmosphereClient, False),
            ("data_store", data_store, S3DataStore, True)):
        core = getattr(value, "_core", value)  # a sync facade object wraps its core twin
        if not (isinstance(core, kind) or (optional and (value is None or value is _UNSET))):
            raise FieldTypeError(field, f"must be a {kind.__name__}, got {_type_name(value)}")
    if progress is not None and not callable(progress):
        raise FieldTypeError("progress", f"must be callable, got {_type_name(progress)}")
