"""Multipart planning (pure): how a byte range splits into S3 parts."""

from __future__ import annotations

from typing import NamedTuple

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
MAX_SINGLE_COPY = 5 * 1024 * MIB  # CopyObject / PutObject limit


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
