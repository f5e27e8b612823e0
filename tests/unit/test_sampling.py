from orchestrator.data.sampling import BatchPlan

import pytest


def plan(world, batch, accum=1, n=103, seed=3):
    return BatchPlan(num_examples=n, per_device_batch_size=batch, grad_accum_steps=accum, world_size=world, seed=seed)


def test_ranks_see_disjoint_shards_covering_the_global_batch():
    p = plan(world=2, batch=4, accum=2)
    for step in range(p.steps_per_epoch):
        r0 = [i for mb in p.micro_batches(0, step, 0) for i in mb]
        r1 = [i for mb in p.micro_batches(0, step, 1) for i in mb]
        assert not set(r0) & set(r1)
        assert len(r0) == len(r1) == 8


def test_two_workers_batch_b_see_what_one_worker_batch_2b_sees():
    two, one = plan(world=2, batch=4), plan(world=1, batch=8)
    assert two.steps_per_epoch == one.steps_per_epoch
    for step in range(one.steps_per_epoch):
        together = set(two.micro_batches(0, step, 0)[0]) | set(two.micro_batches(0, step, 1)[0])
        assert together == set(one.micro_batches(0, step, 0)[0])


def test_order_is_seeded_and_changes_per_epoch():
    assert plan(2, 4).epoch_order(0) == plan(2, 4).epoch_order(0)
    assert plan(2, 4).epoch_order(0) != plan(2, 4).epoch_order(1)
    assert plan(2, 4, seed=3).epoch_order(0) != plan(2, 4, seed=4).epoch_order(0)


def test_epoch_drops_only_the_partial_last_global_batch():
    p = plan(world=2, batch=5, n=103)
    assert p.steps_per_epoch == 10
    assert p.position(10) == (1, 0)
    assert p.position(13) == (1, 3)


def test_too_little_data_for_one_global_batch_says_so():
    p = plan(world=4, batch=32, n=100)
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        p.micro_batches(0, 0, 0)
