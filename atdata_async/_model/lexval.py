"""A small validator driven by lexicon documents (pure): the rules of ``@atproto/lexicon``
for the types the ``science.alt.dataset`` lexicons use, applied to a record's JSON form.

The documents are the ones atdata 0.7.0b1 ships, kept unmodified in ``lexicons/``, so the
rules we check before a write are the network's own and cannot drift from ours. The
reference validator judges the same records in the test suite.

Checked: object (required), string (const, enum, maxLength / minLength in UTF-8 bytes,
maxGraphemes, formats datetime / uri / at-uri / did / nsid / tid / record-key), integer
(const, enum, minimum, maximum), boolean, bytes (``{"$bytes": base64}``, length), array
(item count, items), ref, union (``$type``, closed or open), unknown (an object), blob,
cid-link. ``knownValues`` is open by definition (any string of the right length passes).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

LEXICON_DIR = Path(__file__).resolve().parent.parent / "lexicons"


class LexiconViolation(Exception):
    """A value breaks a lexicon rule; ``path`` is where (``storage.shards[3].key``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def lexicon_files(root: Path = LEXICON_DIR) -> Iterator[Path]:
    return iter(sorted(root.rglob("*.json")))


@functools.cache
def lexicons() -> dict[str, dict[str, Any]]:
    """Every lexicon document we ship, by NSID."""
    docs = {}
    for path in lexicon_files():
        doc = json.loads(path.read_text())
        if doc.get("lexicon") == 1 and isinstance(doc.get("id"), str):
            docs[doc["id"]] = doc
    return docs


def get_def(ref: str, base: str | None = None) -> tuple[str, dict[str, Any]]:
    """(full ref, definition) for ``nsid``, ``nsid#name`` or ``#name`` (relative to base)."""
    if ref.startswith("#"):
        if base is None:
            raise KeyError(ref)
        ref = base.split("#", 1)[0] + ref
    nsid, _, name = ref.partition("#")
    doc = lexicons().get(nsid)
    if doc is None or (name or "main") not in doc["defs"]:
        raise KeyError(f"no lexicon definition {ref!r}")
    return f"{nsid}#{name or 'main'}", doc["defs"][name or "main"]


def validate_record(collection: str, value: Any) -> None:
    """Raise LexiconViolation unless ``value`` (record JSON) is a valid ``collection``."""
    full, main = get_def(collection)
    if main.get("type") != "record":
        raise KeyError(f"{collection} is not a record lexicon")
    if not isinstance(value, dict):
        raise LexiconViolation("record", "must be an object")
    if value.get("$type") != collection:
        raise LexiconViolation("$type", f"must be {collection!r}")
    _validate(main["record"], value, "", full)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _validate(d: dict[str, Any], value: Any, path: str, base: str) -> None:
    kind = d.get("type")
    where = path or "record"
    if kind == "ref":
        full, target = get_def(d["ref"], base)
        _validate(target, value, path, full)
    elif kind == "union":
        _union(d, value, where, base)
    elif kind == "object":
        _object(d, value, path, base)
    elif kind == "array":
        if not isinstance(value, list):
            raise LexiconViolation(where, "must be an array")
        if "maxLength" in d and len(value) > d["maxLength"]:
            raise LexiconViolation(where, f"has {len(value)} elements; the lexicon allows "
                                          f"at most {d['maxLength']}")
        if "minLength" in d and len(value) < d["minLength"]:
            raise LexiconViolation(where, f"must have at least {d['minLength']} element(s)")
        for i, item in enumerate(value):
            _validate(d["items"], item, _join(path, i), base)
    elif kind == "string":
        _string(d, value, where)
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise LexiconViolation(where, "must be an integer")
        _const_enum(d, value, where)
        if "minimum" in d and value < d["minimum"]:
            raise LexiconViolation(where, f"must be at least {d['minimum']}")
        if "maximum" in d and value > d["maximum"]:
            raise LexiconViolation(where, f"must be at most {d['maximum']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise LexiconViolation(where, "must be a boolean")
        _const_enum(d, value, where)
    elif kind == "bytes":
        data = _bytes(value, where)
        if "maxLength" in d and len(data) > d["maxLength"]:
            raise LexiconViolation(where, f"is {len(data)} bytes; the lexicon allows "
                                          f"{d['maxLength']}")
        if "minLength" in d and len(data) < d["minLength"]:
            raise LexiconViolation(where, f"must be at least {d['minLength']} bytes")
    elif kind == "unknown":
        if not isinstance(value, dict):
            raise LexiconViolation(where, "must be an object")
    elif kind == "blob":
        _blob(d, value, where)
    elif kind == "cid-link":
        if not (isinstance(value, dict) and set(value) == {"$link"}
                and isinstance(value["$link"], str)):
            raise LexiconViolation(where, 'must be a CID link {"$link": ...}')
    else:
        raise LexiconViolation(where, f"cannot be checked: lexicon type {kind!r}")


def _object(d: dict[str, Any], value: Any, path: str, base: str) -> None:
    if not isinstance(value, dict):
        raise LexiconViolation(path or "record", "must be an object")
    nullable = set(d.get("nullable", ()))
    required = set(d.get("required", ()))
    for key, prop in (d.get("properties") or {}).items():
        if key not in value:
            if key in required and "default" not in prop:
                raise LexiconViolation(_join(path, key), "is required")
            continue
        if value[key] is None and key in nullable:
            continue
        _validate(prop, value[key], _join(path, key), base)


def _union(d: dict[str, Any], value: Any, where: str, base: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("$type"), str):
        raise LexiconViolation(where, 'must be an object with a "$type"')
    wanted = value["$type"] if "#" in value["$type"] else f"{value['$type']}#main"
    for ref in d.get("refs", ()):
        full, target = get_def(ref, base)
        if full == wanted:
            _validate(target, value, "" if where == "record" else where, full)
            return
    if d.get("closed"):
        raise LexiconViolation(where, f"$type must be one of {', '.join(d['refs'])}")


def _const_enum(d: dict[str, Any], value: Any, where: str) -> None:
    if "const" in d and value != d["const"]:
        raise LexiconViolation(where, f"must be {d['const']!r}")
    if "enum" in d and value not in d["enum"]:
        raise LexiconViolation(where, f"must be one of {d['enum']}")


def _string(d: dict[str, Any], value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise LexiconViolation(where, "must be a string")
    _const_enum(d, value, where)
    size = len(value.encode("utf-8"))
    if "maxLength" in d and size > d["maxLength"]:
        raise LexiconViolation(where, f"is {size} bytes of UTF-8; the lexicon allows "
                                      f"{d['maxLength']}")
    if "minLength" in d and size < d["minLength"]:
        raise LexiconViolation(where, f"must be at least {d['minLength']} bytes")
    if "maxGraphemes" in d or "minGraphemes" in d:
        count = grapheme_count(value)
        if "maxGraphemes" in d and count > d["maxGraphemes"]:
            raise LexiconViolation(where, f"is {count} characters; the lexicon allows "
                                          f"{d['maxGraphemes']}")
        if "minGraphemes" in d and count < d["minGraphemes"]:
            raise LexiconViolation(where, f"must be at least {d['minGraphemes']} characters")
    fmt = d.get("format")
    if fmt is not None:
        check = _FORMATS.get(fmt)
        if check is not None and not check(value):
            raise LexiconViolation(where, f"must be a valid {fmt}, got {value[:80]!r}")


def grapheme_count(text: str) -> int:
    """User-perceived characters, approximately: combining marks, joiners, variation
    selectors and skin-tone modifiers join the character before them."""
    count, join_next = 0, False
    for ch in text:
        joins = (unicodedata.combining(ch) or ch in "\u200d\ufe0e\ufe0f"
                 or "\U0001f3fb" <= ch <= "\U0001f3ff")
        if not (joins or join_next):
            count += 1
        join_next = ch == "\u200d"
    return count


def _bytes(value: Any, where: str) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict) and set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
        try:
            return decode_b64(value["$bytes"])
        except (binascii.Error, ValueError):
            raise LexiconViolation(where, "is not valid base64") from None
    raise LexiconViolation(where, 'must be bytes ({"$bytes": base64} in JSON)')


def encode_b64(data: bytes) -> str:
    """ATProto's ``$bytes`` form: standard base64 alphabet, no padding."""
    return base64.b64encode(data).decode().rstrip("=")


def decode_b64(text: str) -> bytes:
    """Base64 with or without padding (the PDS writes none; some clients add it)."""
    text = text.rstrip("=")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _blob(d: dict[str, Any], value: Any, where: str) -> None:
    ok = (isinstance(value, dict) and value.get("$type") == "blob"
          and isinstance(value.get("ref"), dict) and isinstance(value["ref"].get("$link"), str)
          and isinstance(value.get("mimeType"), str) and isinstance(value.get("size"), int))
    if not ok:
        raise LexiconViolation(where, 'must be a blob {"$type": "blob", "ref", "mimeType", '
                                      '"size"}')
    if "maxSize" in d and value["size"] > d["maxSize"]:
        raise LexiconViolation(where, f"is {value['size']} bytes; at most {d['maxSize']}")
    accept = d.get("accept")
    if accept and not any(_mime_matches(a, value["mimeType"]) for a in accept):
        raise LexiconViolation(where, f"mimeType {value['mimeType']!r} is not one of {accept}")


def _mime_matches(pattern: str, mime: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return mime.startswith(pattern[:-1])
    return pattern == mime


# -- string formats (atproto's syntax rules, as strict as the reference or stricter) -----

_DATETIME = re.compile(
    r"^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\.[0-9]{1,20})?"
    r"(Z|[+-][0-2][0-9]:[0-5][0-9])$")
_URI = re.compile(r"^\w+:(?://)?[^\s/][^\s]*$")
_AT_URI = re.compile(r"^at://[^/?#\s]+(/[^/?#\s]+(/[^/?#\s]+)?)?/?(\?[^#\s]*)?(#[^\s]*)?$")
_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
_NSID = re.compile(r"^[a-zA-Z]([a-zA-Z0-9-]{0,62})?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,62})?)+$")
_TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
_RKEY = re.compile(r"^[A-Za-z0-9._:~-]{1,512}$")


def _is_datetime(value: str) -> bool:
    if not _DATETIME.match(value) or value.endswith("-00:00"):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_FORMATS = {
    "datetime": _is_datetime,
    "uri": lambda v: len(v) <= 8192 and bool(_URI.match(v)),
    "at-uri": lambda v: len(v) <= 8192 and bool(_AT_URI.match(v)),
    "did": lambda v: len(v) <= 2048 and bool(_DID.match(v)),
    "nsid": lambda v: len(v) <= 317 and bool(_NSID.match(v)),
    "tid": lambda v: bool(_TID.match(v)),
    "record-key": lambda v: bool(_RKEY.match(v)) and v not in (".", ".."),
}
