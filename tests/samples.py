"""Sample types and shard writers shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import webdataset as wds
from numpy.typing import NDArray

import atdata_async


@atdata_async.packable
class FeatureSample:
    features: NDArray
    label: int


@atdata_async.packable
class RichSample:
    image: NDArray[np.uint8]
    maybe: NDArray | None
    legacy_opt: Optional[NDArray]  # noqa: UP045 (the spelling is the point)
    caption: str
    score: float
    ok: bool
    raw: bytes
    tags: list[str]


def write_shards(directory: Path, shards: int, per_shard: int, dim: int = 128,
                 stem: str = "shard") -> list[Path]:
    """Write ``shards`` tar files of FeatureSamples with keys 000000.. (seeded data)."""
    rng = np.random.default_rng(0)
    paths = []
    n = 0
    for s in range(shards):
        path = directory / f"{stem}-{s:06d}.tar"
        with wds.writer.TarWriter(str(path)) as sink:
            for _ in range(per_shard):
                sample = FeatureSample(rng.standard_normal(dim).astype(np.float32), n % 10)
                sink.write({**sample.as_wds, "__key__": f"{n:06d}"})
                n += 1
        paths.append(path)
    return paths
