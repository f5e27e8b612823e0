"""Which queued jobs start now: a pure function of the queue, free resources and quotas.

- Order: higher priority first, then submission order (FIFO within a priority).
- A job starts only when all it needs (CPUs and GPUs of all its workers) is free.
- No overtaking: when the first job in order does not fit, the jobs behind it wait too, even
  smaller ones, so a large job is never starved by a stream of small ones. Jobs held back
  only by their team's quota do not block anyone.
- A job that needs more than the whole cluster is rejected with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from orchestrator.store.jobs import Candidate
from orchestrator.store.resources import Resources


MAX_REASONS = 100  # waiting reasons kept per plan


@dataclass(frozen=True)
class Plan:
    start: tuple[str, ...] = ()
    reject: tuple[tuple[str, str], ...] = ()      # (job id, reason)
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why it waits (up to the blocker)
    blocked_by: str | None = None                 # every job after this one waits behind it


def queue_order(queued: Iterable[Candidate]) -> list[Candidate]:
    return sorted(queued, key=lambda c: (-c.priority, c.seq))


def never_fits(need: Resources, capacity: Resources) -> str | None:
    """Why a job can never run on this cluster, or None."""
    if need.fits_in(capacity):
        return None
    return f"needs {need} but the whole cluster has {capacity}; lower resources.workers or its CPUs/GPUs per worker"


def plan(queued: Iterable[Candidate], free: Resources, capacity: Resources,
         team_usage: Mapping[str, Resources] | None = None,
         quotas: Mapping[str, Resources] | None = None, ordered: bool = False) -> Plan:
    """The jobs to start now (in order), the ones to reject, and why the others wait.
    `ordered`: `queued` is already in queue order (the controller keeps it so)."""
    usage = dict(team_usage or {})
    quotas = quotas or {}
    start: list[str] = []
    reject: list[tuple[str, str]] = []
    waiting: dict[str, str] = {}
    for job in (queued if ordered else queue_order(queued)):
        reason = never_fits(job.need, capacity)
        if reason:
            reject.append((job.id, reason))
            continue
        quota = quotas.get(job.team)
        if quota is not None and not job.need.fits_in(quota):
            reject.append((job.id, f"needs {job.need} but team {job.team or '(none)'}'s quota is {quota}"))
            continue
        if quota is not None and not (usage.get(job.team, Resources()) + job.need).fits_in(quota):
            if len(waiting) < MAX_REASONS:  # a deep queue held by quotas: the first ones say enough
                waiting[job.id] = f"team {job.team or '(none)'} would exceed its quota of {quota}"
            continue
        if job.need.fits_in(free):
            start.append(job.id)
            free = free - job.need
            usage[job.team] = usage.get(job.team, Resources()) + job.need
        else:
            waiting[job.id] = f"waits for {job.need} ({free} free)"
            # Nothing behind it may start (no overtaking), so the rest need not be looked at.
            return Plan(tuple(start), tuple(reject), waiting, blocked_by=job.id)
    return Plan(tuple(start), tuple(reject), waiting)
