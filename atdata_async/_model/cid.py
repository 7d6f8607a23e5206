"""Entry CIDs exactly as atdata computes them (pure).

DAG-CBOR of ``{"schema_ref": ..., "data_urls": [...]}`` -> sha256 -> CIDv1 (codec dag-cbor
0x71, multihash sha2-256 0x12) -> base32 lower with the ``b`` multibase prefix.
Only the value shapes an entry CID needs are encoded: str, int, list, dict.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

_DAG_CBOR = 0x71
_SHA2_256 = 0x12


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | extra]) + n.to_bytes(size, "big")
    raise ValueError("integer too large for CBOR")


def dag_cbor(value: Any) -> bytes:
    """Canonical DAG-CBOR: map keys sorted by encoded length, then bytewise."""
    if isinstance(value, bool) or value is None:
        return bytes([0xF5 if value is True else 0xF4 if value is False else 0xF6])
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, list | tuple):
        return _head(4, len(value)) + b"".join(dag_cbor(v) for v in value)
    if isinstance(value, dict):
        items = sorted((dag_cbor(k), dag_cbor(v)) for k, v in value.items())
        items.sort(key=lambda kv: len(kv[0]))
        return _head(5, len(items)) + b"".join(k + v for k, v in items)
    raise TypeError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def cid_for(value: Any) -> str:
    """The base32 CIDv1 of a value's DAG-CBOR encoding."""
    digest = hashlib.sha256(dag_cbor(value)).digest()
    raw = bytes([1, _DAG_CBOR, _SHA2_256, len(digest)]) + digest
    return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")


def entry_cid(schema_ref: str, data_urls: list[str]) -> str:
    """The CID that names a local dataset entry (name and metadata are not part of it)."""
    return cid_for({"schema_ref": schema_ref, "data_urls": list(data_urls)})
