"""What is fixed before training: exchange points, shards, and the staleness rule."""

from __future__ import annotations

import numpy as np
import pytest

from chiron.core.errors import InputError
from chiron.enclave.distributed.schedule import ExchangeSchedule, StalenessGate, shard_indices


def test_rounds_start_at_step_zero_and_end_at_the_last_step():
    schedule = ExchangeSchedule(every=10, total_steps=36)
    assert schedule.rounds == 5
    assert [schedule.step_of(r) for r in range(schedule.rounds)] == [0, 10, 20, 30, 36]
    assert [s for s in range(37) if schedule.round_at(s) is not None] == [0, 10, 20, 30, 36]
    assert schedule.next_step(0) == 10 and schedule.next_step(30) == 36
    exact = ExchangeSchedule(every=12, total_steps=36)
    assert exact.rounds == 4 and exact.round_at(36) == exact.final_round == 3


def test_a_group_checkpoints_at_the_first_exchange_point_after_each_interval():
    """The same steps for every worker: exchange points, never step 0 or the last step."""
    schedule = ExchangeSchedule(every=10, total_steps=1014)
    due = [s for s in range(1015) if schedule.checkpoint_at(s, 200)]
    assert due == [200, 400, 600, 800, 1000]
    uneven = ExchangeSchedule(every=30, total_steps=170)
    assert [s for s in range(171) if uneven.checkpoint_at(s, 85)] == [90]
    # An interval shorter than the exchange interval: every exchange point but the last.
    assert [s for s in range(37) if schedule.checkpoint_at(s, 3)] == [10, 20, 30]
    assert not ExchangeSchedule(every=10, total_steps=36).checkpoint_at(36, 12)


def test_shards_are_disjoint_equal_and_the_same_every_time():
    train_index = np.arange(5, 108)
    shards = [shard_indices(train_index, worker=w, workers=3, seed=4) for w in (1, 2, 3)]
    assert {len(s) for s in shards} == {len(train_index) // 3}
    joined = np.concatenate(shards)
    assert len(set(joined.tolist())) == len(joined)
    assert set(joined.tolist()) <= set(train_index.tolist())
    again = shard_indices(train_index, worker=2, workers=3, seed=4)
    assert np.array_equal(again, shards[1])
    other_seed = shard_indices(train_index, worker=2, workers=3, seed=5)
    assert not np.array_equal(other_seed, shards[1])
    with pytest.raises(InputError):
        shard_indices(np.arange(2), worker=1, workers=3, seed=0)


def test_round_zero_and_the_last_round_wait_for_everyone():
    gate = StalenessGate(2, staleness=5, final_round=3)
    gate.submit(1, 0)
    assert gate.release() == []
    gate.submit(2, 0)
    assert gate.release() == [(1, 0), (2, 0)]
    for r in (1, 2, 3):
        gate.submit(1, r)
        released = gate.release()
        assert released == ([(1, r)] if r < 3 else [])
    assert not gate.finished
    for r in (1, 2, 3):
        gate.submit(2, r)
        released = gate.release()
    assert released == [(1, 3), (2, 3)]
    assert gate.finished


def test_no_worker_runs_more_than_the_staleness_bound_ahead():
    gate = StalenessGate(3, staleness=1, final_round=10)
    for worker in (1, 2, 3):
        gate.submit(worker, 0)
    assert len(gate.release()) == 3
    gate.submit(1, 1)
    assert gate.release() == [(1, 1)]  # the others are 1 round behind: allowed
    gate.submit(1, 2)
    assert gate.release() == []  # 2 rounds ahead of workers 2 and 3: held
    assert gate.waiting == (1,)
    gate.submit(2, 1)
    assert gate.release() == [(2, 1)]  # worker 3 still holds worker 1 back
    gate.submit(3, 1)
    assert gate.release() == [(1, 2), (3, 1)]


def test_with_staleness_zero_every_round_is_a_barrier():
    gate = StalenessGate(2, staleness=0, final_round=4)
    gate.submit(1, 0)
    gate.submit(2, 0)
    gate.release()
    gate.submit(2, 1)
    assert gate.release() == []
    gate.submit(1, 1)
    assert gate.release() == [(1, 1), (2, 1)]
