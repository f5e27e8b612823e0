"""Scheduler: which queued jobs start now, which wait (and why), which are rejected."""

from __future__ import annotations

import itertools
import random

from orchestrator.controller.scheduler import Plan, never_fits, plan, queue_order
from orchestrator.store.jobs import Candidate
from orchestrator.store.resources import Resources

BIG = Resources(cpus=64, gpus=8)   # a cluster capacity nothing in these tests outgrows by accident


_submitted = itertools.count(1)


def job(id, cpus=1.0, gpus=0.0, priority=0, seq=None, team=""):
    """A queued job; without `seq` it is submitted after every job made before it."""
    return Candidate(id, priority, seq if seq is not None else next(_submitted), Resources(cpus, gpus), team)


# --------------------------------------------------------------------------- order


def test_higher_priority_first_then_first_submitted_first():
    queued = [job("j1", priority=0, seq=1), job("j2", priority=5, seq=2), job("j3", priority=0, seq=3),
              job("j4", priority=5, seq=4), job("j5", priority=-1, seq=5)]
    assert [c.id for c in queue_order(queued)] == ["j2", "j4", "j1", "j3", "j5"]
    # plan follows the same order when everything fits
    p = plan(list(reversed(queued)), free=Resources(8), capacity=BIG)
    assert p.start == ("j2", "j4", "j1", "j3", "j5")
    assert p.blocked_by is None and p.reject == () and p.waiting == {}


# ----------------------------------------------------------------------- fitting


def test_several_small_jobs_start_together_and_use_up_the_free_resources():
    queued = [job("j1", cpus=1), job("j2", cpus=1), job("j3", cpus=2), job("j4", cpus=1)]
    p = plan(queued, free=Resources(4), capacity=BIG)
    assert p.start == ("j1", "j2", "j3")
    assert p.blocked_by == "j4"
    assert "j4" in p.waiting and "0 CPU free" in p.waiting["j4"]


def test_a_job_never_starts_on_partial_resources():
    p = plan([job("j1", cpus=4, gpus=2)], free=Resources(3, 2), capacity=BIG)
    assert p.start == () and p.blocked_by == "j1"
    p = plan([job("j1", cpus=4, gpus=2)], free=Resources(4, 1), capacity=BIG)
    assert p.start == () and p.blocked_by == "j1"
    p = plan([job("j1", cpus=4, gpus=2)], free=Resources(4, 2), capacity=BIG)
    assert p.start == ("j1",)


def test_both_gpus_and_cpus_must_fit():
    # plenty of CPUs, not enough GPUs
    p = plan([job("j1", cpus=1, gpus=2)], free=Resources(32, 1), capacity=BIG)
    assert p.start == ()
    assert "2 GPU" in p.waiting["j1"] and "1 GPU free" in p.waiting["j1"]
    # plenty of GPUs, not enough CPUs
    p = plan([job("j1", cpus=8, gpus=1)], free=Resources(4, 8), capacity=BIG)
    assert p.start == ()
    # GPUs are decremented too: the second 1-GPU job does not fit after the first
    p = plan([job("j1", cpus=1, gpus=1), job("j2", cpus=1, gpus=1)], free=Resources(8, 1), capacity=BIG)
    assert p.start == ("j1",) and p.blocked_by == "j2"


def test_fractional_resources_that_exactly_fill_the_cluster_fit():
    queued = [job(f"j{i}", cpus=0.1) for i in range(1, 11)]
    assert len(plan(queued, free=Resources(1.0), capacity=BIG).start) == 10


# ------------------------------------------------------------------ no overtaking


def test_a_big_head_job_that_does_not_fit_blocks_smaller_jobs_behind_it():
    queued = [job("j1", cpus=2), job("j2", cpus=8), job("j3", cpus=1), job("j4", cpus=1)]
    p = plan(queued, free=Resources(4), capacity=Resources(16))
    assert p.start == ("j1",)
    assert p.blocked_by == "j2"
    assert "j3" not in p.start and "j4" not in p.start
    assert "j2" in p.waiting


def test_a_job_bigger_than_the_cluster_is_rejected_and_blocks_nobody():
    queued = [job("huge", cpus=100, seq=1), job("j2", cpus=1), job("j3", cpus=2)]
    p = plan(queued, free=Resources(4), capacity=Resources(16, 2))
    assert p.start == ("j2", "j3")
    assert p.blocked_by is None
    assert [jid for jid, _ in p.reject] == ["huge"]
    reason = dict(p.reject)["huge"]
    assert "100 CPU" in reason and "16 CPU, 2 GPU" in reason
    assert "huge" not in p.waiting


def test_a_job_needing_more_gpus_than_the_cluster_has_is_rejected():
    reason = never_fits(Resources(1, 4), Resources(64, 2))
    assert reason is not None and "4 GPU" in reason and "2 GPU" in reason
    assert never_fits(Resources(64, 2), Resources(64, 2)) is None


def test_a_job_that_fits_the_cluster_but_not_the_free_resources_waits_instead_of_being_rejected():
    p = plan([job("j1", cpus=16)], free=Resources(2), capacity=Resources(16))
    assert p.reject == () and p.blocked_by == "j1"


# ------------------------------------------------------------------------- quotas


def test_a_team_at_its_quota_waits_while_another_teams_job_behind_it_starts():
    queued = [job("a1", cpus=2, team="alpha", seq=1), job("b1", cpus=2, team="beta", seq=2)]
    p = plan(queued, free=Resources(8), capacity=BIG,
             team_usage={"alpha": Resources(4)}, quotas={"alpha": Resources(4)})
    assert p.start == ("b1",)
    assert p.blocked_by is None
    assert "quota" in p.waiting["a1"] and "alpha" in p.waiting["a1"]


def test_team_usage_counts_the_jobs_it_already_runs():
    queued = [job("a1", cpus=2, team="alpha")]
    quotas = {"alpha": Resources(4)}
    assert plan(queued, Resources(8), BIG, team_usage={"alpha": Resources(2)}, quotas=quotas).start == ("a1",)
    held = plan(queued, Resources(8), BIG, team_usage={"alpha": Resources(3)}, quotas=quotas)
    assert held.start == () and "quota" in held.waiting["a1"]


def test_jobs_started_in_this_plan_count_against_the_quota():
    queued = [job("a1", cpus=2, team="alpha"), job("a2", cpus=2, team="alpha"), job("a3", cpus=2, team="alpha"),
              job("b4", cpus=2, team="beta")]
    p = plan(queued, Resources(16), BIG, quotas={"alpha": Resources(4)})
    assert p.start == ("a1", "a2", "b4")
    assert "quota" in p.waiting["a3"]


def test_gpu_quota_holds_back_a_job_with_free_gpus_in_the_cluster():
    p = plan([job("a1", cpus=1, gpus=1, team="alpha")], Resources(8, 8), BIG, quotas={"alpha": Resources(64, 1)},
             team_usage={"alpha": Resources(1, 1)})
    assert p.start == () and "quota" in p.waiting["a1"] and p.blocked_by is None


def test_a_job_bigger_than_its_teams_quota_is_rejected_not_kept_waiting_forever():
    p = plan([job("a1", cpus=1, gpus=2, team="alpha"), job("b1", cpus=1, team="beta")], Resources(8, 8), BIG,
             quotas={"alpha": Resources(64, 1)})
    assert p.start == ("b1",)
    (rejected, reason), = p.reject
    assert rejected == "a1" and "quota" in reason and "2 GPU" in reason


def test_teams_without_a_quota_are_unlimited():
    queued = [job(f"j{i}", cpus=1, team="alpha") for i in range(1, 5)]
    assert len(plan(queued, Resources(4), BIG, quotas={"beta": Resources(1)}).start) == 4


# ------------------------------------------------------------------------ ordered


def test_ordered_true_takes_the_queue_as_given():
    # Given in an order that is NOT priority order: with ordered=True it is not re-sorted.
    queued = [job("j1", cpus=1, priority=0, seq=1), job("j2", cpus=4, priority=9, seq=2)]
    assert plan(queued, Resources(4), BIG).start == ("j2",)
    as_given = plan(queued, Resources(4), BIG, ordered=True)
    assert as_given.start == ("j1",) and as_given.blocked_by == "j2"


def test_ordered_true_on_an_already_sorted_queue_matches_the_sorted_plan():
    queued = queue_order([job("j1", cpus=1, priority=1, seq=1), job("j2", cpus=2, priority=3, seq=2),
                          job("j3", cpus=3, priority=3, seq=3), job("j4", cpus=1, seq=4)])
    assert plan(queued, Resources(6), BIG, ordered=True) == plan(queued, Resources(6), BIG)


def test_an_empty_queue_starts_nothing():
    assert plan([], Resources(4), BIG) == Plan()


# --------------------------------------------------------------------- properties


def _random_case(rng: random.Random):
    capacity = Resources(float(rng.choice([4, 8, 16])), float(rng.choice([0, 1, 2, 4])))
    free = Resources(rng.uniform(0, capacity.cpus), float(rng.randint(0, int(capacity.gpus))))
    teams = ["", "alpha", "beta", "gamma"]
    queued = []
    for seq in range(1, rng.randint(0, 12) + 1):
        need = Resources(float(rng.choice([0.5, 1, 2, 3, 4, 8, 20])), float(rng.choice([0, 0, 1, 2, 5])))
        queued.append(Candidate(f"j{seq}", rng.randint(-1, 2), seq, need, rng.choice(teams)))
    rng.shuffle(queued)
    usage = {t: Resources(float(rng.randint(0, 4)), float(rng.randint(0, 2))) for t in teams if rng.random() < 0.5}
    quotas = {t: Resources(float(rng.randint(1, 8)), float(rng.randint(0, 3))) for t in teams if rng.random() < 0.4}
    return queued, free, capacity, usage, quotas


def test_random_queues_respect_free_resources_order_quotas_and_capacity():
    rng = random.Random(20240611)
    for case in range(400):
        queued, free, capacity, usage, quotas = _random_case(rng)
        p = plan(queued, free, capacity, team_usage=usage, quotas=quotas)
        by_id = {c.id: c for c in queued}
        ctx = f"case {case}: {queued} free={free} cap={capacity} usage={usage} quotas={quotas} -> {p}"

        # Started jobs fit in what was free, together.
        total = Resources()
        for jid in p.start:
            total = total + by_id[jid].need
        assert total.fits_in(free), ctx

        # A rejected job fits neither the cluster nor its team's quota; every rejection says why.
        rejected = dict(p.reject)
        for jid, reason in p.reject:
            need, quota = by_id[jid].need, quotas.get(by_id[jid].team)
            assert reason and (not need.fits_in(capacity) or (quota is not None and not need.fits_in(quota))), ctx

        # Started jobs are a prefix, in queue order, of the jobs neither rejected nor held by quota;
        # the next one (if any was looked at) is the blocker.
        quota_held = {jid for jid, why in p.waiting.items() if "quota" in why}
        eligible = [c.id for c in queue_order(queued) if c.id not in rejected and c.id not in quota_held]
        assert list(p.start) == eligible[:len(p.start)], ctx
        if p.blocked_by is not None:
            assert eligible[len(p.start)] == p.blocked_by, ctx
            assert not by_id[p.blocked_by].need.fits_in(free - total), ctx
        else:
            assert len(p.start) == len(eligible), ctx
            # Nothing was skipped: every job is started, rejected or held by its quota.
            assert set(p.start) | set(rejected) | quota_held == set(by_id), ctx

        # Starting a job never takes its team over its quota (a team may already be over it,
        # e.g. after the quota was lowered: then none of its jobs starts).
        for team, quota in quotas.items():
            used, started = usage.get(team, Resources()), False
            for jid in p.start:
                if by_id[jid].team == team:
                    used, started = used + by_id[jid].need, True
            assert used.fits_in(quota) or not started, ctx

        # A started job is never also rejected or waiting.
        assert not set(p.start) & (set(rejected) | set(p.waiting)), ctx
