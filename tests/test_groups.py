"""Grouping a cluster's shard copies (pure planning, no I/O)."""

from __future__ import annotations

from atdata_async._model.groups import (
    MAX_GROUP,
    PREFETCH,
    group_size,
    plan_groups,
    shards_in_flight,
)


def test_group_size_gives_every_worker_several_groups_and_stays_bounded():
    assert group_size(256, 1) == 64
    assert group_size(256, 2) == 32
    assert group_size(256, 4) == 16
    assert group_size(3, 4) == 1 and group_size(0, 2) == 1
    assert group_size(100_000, 2) == MAX_GROUP
    assert group_size(256, 1, cap=8) == 8


def test_plan_groups_cuts_consecutive_whole_groups_in_order():
    assert plan_groups([0, 2, 3, 5, 7], 2) == [(0, 2), (3, 5), (7,)]
    assert plan_groups([], 4) == []
    groups = plan_groups(list(range(256)), group_size(256, 2))
    assert len(groups) == 8 and sum(groups, ()) == tuple(range(256))


def test_shards_in_flight_queues_a_group_per_worker_beyond_the_running_one():
    assert shards_in_flight(8, 2) == 8 * 2 * PREFETCH  # one shard per task: as before
    assert shards_in_flight(8, 1, 64) == 64 * PREFETCH
    assert shards_in_flight(1, 2, 1) == 4
