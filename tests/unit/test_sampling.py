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


def test_positions_walk_the_same_steps_as_step_indices():
    from orchestrator.data.sampling import DataPosition

    p = plan(world=2, batch=5, n=103)
    pos = DataPosition()
    for step in range(35):
        epoch, k = p.position(step)
        assert (pos.epoch, pos.offset) == (epoch, k * p.global_batch)
        assert p.micro_batches_at(pos, 1) == p.micro_batches(epoch, k, 1)
        pos = p.advance(pos)


def test_a_position_resharded_to_one_worker_keeps_every_later_example():
    from orchestrator.data.sampling import DataPosition

    two, one = plan(world=2, batch=4, n=101), plan(world=1, batch=4, accum=2, n=101)
    pos = DataPosition(0, 3 * two.global_batch)  # saved by the 2-worker run after 3 steps
    for _ in range(20):
        together = sorted(i for r in (0, 1) for mb in two.micro_batches_at(pos, r) for i in mb)
        assert together == sorted(i for mb in one.micro_batches_at(pos, 0) for i in mb)
        assert two.advance(pos) == one.advance(pos)
        pos = two.advance(pos)


def test_a_position_with_no_room_left_moves_to_the_next_epoch():
    from orchestrator.data.sampling import DataPosition

    p = plan(world=1, batch=10, n=25)
    assert p.advance(DataPosition(0, 10)) == DataPosition(1, 0)
    assert p.normalise(DataPosition(2, 20)) == DataPosition(3, 0)
    assert p.micro_batches_at(DataPosition(0, 13), 0)[0] == p.epoch_order(0)[13:23]
