"""Shard copies batched for a cluster: one task per group of shards (pure, no I/O).

A task through a Dask scheduler costs a few ms of CPU (submit, pickle, the scheduler's
transitions, the worker's state machine, the result's trip back) whatever the shard's
size; one per group of shards pays that once per group. Each shard inside stays its own
idempotent unit (its deterministic key, its journal fields, its outcome), so retries and
resume still work per shard.
"""

from __future__ import annotations

from collections.abc import Sequence

GROUPS_PER_WORKER = 4  # every worker still gets several: short tail, a killed worker's
MAX_GROUP = 64         # group is rerun from the journal (its finished shards skipped)
PREFETCH = 2           # groups at the cluster per worker: the next one already queued


def group_size(shards: int, workers: int, cap: int | None = None) -> int:
    """How many shards one task carries: about GROUPS_PER_WORKER groups per worker,
    at most MAX_GROUP (and ``cap``), at least 1."""
    size = -(-max(0, shards) // (max(1, workers) * GROUPS_PER_WORKER))
    return max(1, min(size, MAX_GROUP, cap if cap is not None else MAX_GROUP))


def plan_groups(indices: Sequence[int], size: int) -> list[tuple[int, ...]]:
    """``indices`` in order, cut into consecutive groups of ``size`` (the last shorter):
    the coordinator's shards reach the cluster in index order, so the groups of a
    window of shards in flight are whole."""
    size = max(1, size)
    return [tuple(indices[k:k + size]) for k in range(0, len(indices), size)]


def shards_in_flight(max_concurrency: int, workers: int, size: int = 1) -> int:
    """Shards the coordinator keeps at the cluster: PREFETCH x workers x the larger of
    max_concurrency (a depth per worker) and one group."""
    return max(1, max_concurrency, size) * max(1, workers) * PREFETCH
