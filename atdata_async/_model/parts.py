"""Multipart planning (pure): how a byte range splits into S3 parts."""

from __future__ import annotations

import re
from typing import NamedTuple

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_SINGLE_COPY = 5 * 1024 * MIB  # CopyObject / PutObject limit
_MULTIPART_ETAG = re.compile(r'"?[0-9a-fA-F]{32}-(\d+)"?')


class Part(NamedTuple):
    number: int  # 1-based, as S3 wants it
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def copy_range(self) -> str:
        """The ``CopySourceRange`` header value (inclusive end)."""
        return f"bytes={self.start}-{self.end - 1}"


def part_size_for(size: int, preferred: int, minimum: int = MIN_PART_SIZE) -> int:
    """The smallest allowed part size >= ``preferred`` that keeps ``size`` in 10,000 parts."""
    part = max(preferred, minimum)
    while -(-size // part) > MAX_PARTS:
        part *= 2
    if part > MAX_PART_SIZE:
        raise ValueError(f"an object of {size} bytes cannot be split into S3 parts")
    return part


def plan_parts(size: int, preferred: int, minimum: int = MIN_PART_SIZE) -> list[Part]:
    """Split ``size`` bytes into consecutive parts (the last may be smaller)."""
    part = part_size_for(size, preferred, minimum)
    return [
        Part(i + 1, start, min(start + part, size)) for i, start in enumerate(range(0, size, part))
    ] or [Part(1, 0, 0)]


def part_size_of_etag(size: int, etag: str | None, preferred: int,
                      minimum: int = MIN_PART_SIZE) -> int | None:
    """The part size an object of ``size`` bytes was most likely uploaded with, read off
    its multipart ETag ("<md5 of the parts' md5s>-N"): a copy cut the same way gets the
    same ETag, which proves it holds the same bytes without reading it back. Every part
    but the last has one size P, so N = ceil(size / P): ``preferred`` (our own insert's)
    if it fits, else of the whole-MiB sizes that fit the one with the largest power-of-two
    factor (tools cut 8, 16 or 64 MiB). None: no multipart ETag, or nothing fits."""
    match = _MULTIPART_ETAG.fullmatch(etag or "")
    if not match or size <= 0:
        return None
    count = int(match.group(1))
    if not 1 <= count <= MAX_PARTS:
        return None
    if count == 1:
        return max(size, minimum)
    if preferred >= minimum and -(-size // preferred) == count:
        return preferred
    low = max(-(-size // count), minimum)  # the smallest P with ceil(size / P) <= N
    high = (size - 1) // (count - 1)  # the largest P with ceil(size / P) >= N
    first, last = -(-low // MIB), high // MIB  # in MiB
    for bit in range(max(last, 1).bit_length(), -1, -1):
        step = 1 << bit
        candidate = -(-first // step) * step
        if candidate <= last:
            return candidate * MIB
    return None
