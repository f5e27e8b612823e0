"""Batches made ahead on a thread are the loop's own batches; step sums stay on the device."""

from __future__ import annotations

import pytest
import torch

from orchestrator.data.collate import collate
from orchestrator.data.sampling import BatchPlan, DataPosition
from orchestrator.training.feed import BatchFeed, loss_units
from orchestrator.training.tallies import StepTallies


def rows(n: int):
    return [{"input_ids": list(range(1, 3 + i % 5)), "labels": [-100] + list(range(2, 3 + i % 5))} for i in range(n)]


def direct(plan: BatchPlan, position: DataPosition, rank: int, data, steps: int):
    out = []
    for _ in range(steps):
        position = plan.normalise(position)
        out.append((position.epoch, [collate([data[i] for i in idx], 0) for idx in plan.micro_batches_at(position, rank)]))
        position = plan.advance(position)
    return out


@pytest.mark.parametrize("start", [0, 5])
def test_feed_gives_the_batches_the_loop_would_make_across_epochs(start):
    data = rows(13)
    plan = BatchPlan(len(data), 2, 2, 2, seed=3, shuffle=True)
    position = DataPosition()
    for _ in range(start):  # a resumed run starts mid-epoch
        position = plan.advance(plan.normalise(position))
    feed = BatchFeed(plan, position, 1, data, 0, pin=False)
    try:
        for epoch, batches in direct(plan, position, 1, data, 9):  # 13 rows / 8 per step: several epochs
            got = feed.next()
            assert got.epoch == epoch and len(got.batches) == len(batches) == 2
            for a, b in zip(got.batches, batches):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            assert got.loss_units == sum(loss_units(b) for b in batches)
            assert got.tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    finally:
        feed.close()
    assert not feed._thread.is_alive()


def test_a_bad_row_surfaces_in_the_loop_not_in_the_thread():
    data = rows(4)
    data[2] = {"input_ids": [], "labels": []}
    data[3] = {"labels": [1]}  # no input_ids: collate fails
    plan = BatchPlan(len(data), 4, 1, 1, seed=0, shuffle=False)
    feed = BatchFeed(plan, DataPosition(), 0, data, 0, pin=False)
    try:
        with pytest.raises(KeyError):
            feed.next()
    finally:
        feed.close()


def test_tallies_sum_a_step_and_count_tokens_since_the_run_began():
    tallies = StepTallies(torch.device("cpu"), tokens_before=100)
    assert float(tallies.units(7)) == 7.0
    tallies.end_step(torch.tensor(3.5), tokens=20, stop_asked=False)
    assert not tallies.stop_requested()
    tallies.end_step(torch.tensor(1.25), tokens=30, stop_asked=True)
    assert tallies.stop_requested()
    assert tallies.step_loss_sum() == 1.25
    assert tallies.tokens() == 150
