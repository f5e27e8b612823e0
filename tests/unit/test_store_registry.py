"""Adapter registry: version numbering, lineage, gated promotion with compare-and-swap on the
head, manual promote/rollback, the event history, and persistence in the SQLite file."""

from __future__ import annotations

import pytest

from orchestrator.store.jobs import SQLiteJobStore
from orchestrator.store.registry import Registry, RegistryError


def rec(tag: str) -> dict:
    return {"artifacts": {"adapter": f"/adapters/{tag}"}}


@pytest.fixture
def reg(store):
    return Registry(store)


def add(reg, name="a", parent=None, tag=None, job_id=None):
    return reg.register(name, rec(tag or f"{name}-{parent}"), parent, run_dir=f"/runs/{name}", job_id=job_id)


def promoted(reg, name, parent, expected_head):
    """Register a version of `name` and promote it through the gates."""
    v = add(reg, name, parent)
    return reg.judge(name, v.version, True, "all gates passed", [], expected_head=expected_head)


def event_tuples(reg, name):
    return [(e["action"], e["from_version"], e["to_version"]) for e in reg.events(name)]


# ----------------------------------------------------------------------- register


def test_versions_number_from_one_per_name_independently(reg):
    a1 = add(reg, "a")
    b1 = add(reg, "b")
    a2 = add(reg, "a", parent=1)
    a3 = add(reg, "a", parent=2)
    b2 = add(reg, "b", parent=1)
    assert [v.version for v in (a1, a2, a3)] == [1, 2, 3]
    assert [v.version for v in (b1, b2)] == [1, 2]
    assert [v.version for v in reg.versions("a")] == [1, 2, 3]
    assert [v.version for v in reg.versions("b")] == [1, 2]
    assert reg.names() == ["a", "b"]
    assert (a1.verdict, a1.reason, a1.parent) == ("registered", "", None)
    assert (a3.parent, a3.run_dir, a3.adapter) == (2, "/runs/a", "/adapters/a-2")
    assert reg.head("a") is None


def test_register_with_a_missing_parent_is_refused_and_writes_nothing(reg):
    add(reg, "a")
    with pytest.raises(RegistryError, match="no version 5"):
        add(reg, "a", parent=5)
    # a parent of another name does not count
    with pytest.raises(RegistryError, match="adapter b has no version 1"):
        add(reg, "b", parent=1)
    assert [v.version for v in reg.versions("a")] == [1]
    assert reg.versions("b") == []
    assert event_tuples(reg, "a") == [("register", None, 1)]
    assert event_tuples(reg, "b") == []


def test_register_event_names_the_job_or_the_run_dir(reg):
    add(reg, "a", job_id="a-1234")
    add(reg, "a")
    assert [e["reason"] for e in reg.events("a")] == ["job a-1234", "run /runs/a"]


def test_get_of_an_unknown_version_or_name_says_so(reg):
    add(reg, "a")
    with pytest.raises(RegistryError, match="adapter a has no version 2"):
        reg.get("a", 2)
    with pytest.raises(RegistryError, match="no adapter named 'zzz'; known: a"):
        reg.get("zzz", 1)


# -------------------------------------------------------------------------- judge


def test_judge_promote_with_the_right_expected_head_moves_the_head(reg):
    add(reg, "a")
    gates = [{"gate": "target", "passed": True}]
    v1 = reg.judge("a", 1, True, "all 1 gates passed", gates, expected_head=None)
    assert (v1.verdict, v1.reason) == ("promoted", "all 1 gates passed")
    assert v1.record["gates"] == gates
    assert v1.record["artifacts"] == {"adapter": "/adapters/a-None"}
    assert reg.head("a").version == 1

    add(reg, "a", parent=1)
    v2 = reg.judge("a", 2, True, "ok", [], expected_head=1)
    assert v2.verdict == "promoted"
    assert reg.head("a").version == 2
    assert event_tuples(reg, "a")[-1] == ("promote", 1, 2)
    assert reg.events("a")[-1]["reason"] == "ok"


def test_judge_with_a_stale_expected_head_rejects_and_says_who_moved_it(reg):
    promoted(reg, "a", None, expected_head=None)       # v1 is served
    add(reg, "a", parent=1)                            # v2: a refresh from v1 starts
    add(reg, "a", parent=1)                            # v3: meanwhile someone else ...
    reg.promote("a", 3, "hotfix")                      # ... promotes v3 by hand
    v2 = reg.judge("a", 2, True, "all 3 gates passed", [{"gate": "target"}], expected_head=1)
    assert v2.verdict == "rejected"
    assert "changed from v1 to v3" in v2.reason
    assert v2.reason.startswith("not promoted")
    assert v2.record["gates"] == [{"gate": "target"}]
    assert reg.head("a").version == 3                  # their decision stands
    assert event_tuples(reg, "a")[-1] == ("reject", 3, 2)


def test_judge_stale_when_head_was_none_but_someone_promoted_first(reg):
    add(reg, "a")
    add(reg, "a")
    reg.judge("a", 2, True, "ok", [], expected_head=None)
    v1 = reg.judge("a", 1, True, "ok", [], expected_head=None)
    assert v1.verdict == "rejected"
    assert "changed from none to v2" in v1.reason
    assert reg.head("a").version == 2


def test_judge_without_promote_keeps_the_head(reg):
    promoted(reg, "a", None, expected_head=None)
    add(reg, "a", parent=1)
    v2 = reg.judge("a", 2, False, "target: gain 0.0 <= 0.01", [{"gate": "target", "passed": False}],
                   expected_head=1)
    assert (v2.verdict, v2.reason) == ("rejected", "target: gain 0.0 <= 0.01")
    assert reg.head("a").version == 1
    assert event_tuples(reg, "a")[-1] == ("reject", 1, 2)


# ---------------------------------------------------------------- promote by hand


def test_manual_promote_of_a_rejected_version_needs_force(reg):
    promoted(reg, "a", None, expected_head=None)
    add(reg, "a", parent=1)
    reg.judge("a", 2, False, "gate failed", [], expected_head=1)
    with pytest.raises(RegistryError, match="was rejected"):
        reg.promote("a", 2, "I know better")
    assert reg.head("a").version == 1
    v2 = reg.promote("a", 2, "I know better", force=True)
    assert v2.verdict == "promoted"
    assert reg.head("a").version == 2
    assert event_tuples(reg, "a")[-1] == ("promote", 1, 2)
    assert reg.events("a")[-1]["reason"] == "I know better"


def test_manual_promote_of_a_registered_version_needs_no_force_and_has_a_default_reason(reg):
    add(reg, "a")
    v1 = reg.promote("a", 1, "")
    assert v1.verdict == "promoted"
    assert reg.head("a").version == 1
    assert reg.events("a")[-1]["reason"] == "promoted by hand"


def test_promote_of_the_current_head_errors(reg):
    promoted(reg, "a", None, expected_head=None)
    n_events = len(reg.events("a"))
    with pytest.raises(RegistryError, match="already the promoted version"):
        reg.promote("a", 1, "again")
    assert len(reg.events("a")) == n_events


def test_promote_of_a_missing_version_errors(reg):
    add(reg, "a")
    with pytest.raises(RegistryError, match="no version 7"):
        reg.promote("a", 7, "x")


# ----------------------------------------------------------------------- rollback


def test_rollback_without_to_goes_to_the_newest_promoted_version_older_than_the_head(reg):
    promoted(reg, "a", None, expected_head=None)        # v1 promoted
    add(reg, "a", parent=1)
    reg.judge("a", 2, False, "bad", [], expected_head=1)  # v2 rejected
    promoted(reg, "a", 1, expected_head=1)              # v3 promoted
    promoted(reg, "a", 3, expected_head=3)              # v4 promoted
    assert reg.head("a").version == 4
    assert reg.rollback("a").version == 3
    assert reg.head("a").version == 3
    # v2 was rejected: the next rollback skips it
    assert reg.rollback("a", reason="still bad").version == 1
    assert reg.head("a").version == 1
    assert event_tuples(reg, "a")[-2:] == [("rollback", 4, 3), ("rollback", 3, 1)]
    assert [e["reason"] for e in reg.events("a")[-2:]] == ["rolled back by hand", "still bad"]


def test_rollback_to_an_explicit_version_forwards_too(reg):
    promoted(reg, "a", None, expected_head=None)
    promoted(reg, "a", 1, expected_head=1)
    promoted(reg, "a", 2, expected_head=2)
    assert reg.rollback("a", to=1).version == 1
    assert reg.rollback("a", to=3).version == 3
    assert reg.head("a").version == 3


def test_rollback_to_a_never_promoted_version_errors(reg):
    promoted(reg, "a", None, expected_head=None)
    add(reg, "a", parent=1)                              # v2 registered
    add(reg, "a", parent=1)
    reg.judge("a", 3, False, "bad", [], expected_head=1)  # v3 rejected
    promoted(reg, "a", 1, expected_head=1)              # v4 promoted (head)
    with pytest.raises(RegistryError, match="never promoted \\(registered\\)"):
        reg.rollback("a", to=2)
    with pytest.raises(RegistryError, match="never promoted \\(rejected\\)"):
        reg.rollback("a", to=3)
    with pytest.raises(RegistryError, match="no version 9"):
        reg.rollback("a", to=9)
    with pytest.raises(RegistryError, match="already the promoted version"):
        reg.rollback("a", to=4)
    assert reg.head("a").version == 4


def test_rollback_with_no_older_promoted_version_errors(reg):
    with pytest.raises(RegistryError, match="no promoted version to roll back from"):
        reg.rollback("a")
    promoted(reg, "a", None, expected_head=None)
    add(reg, "a", parent=1)
    reg.judge("a", 2, False, "bad", [], expected_head=1)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("a")
    # after a rollback to v1, nothing older is left either
    promoted(reg, "a", 1, expected_head=1)              # v3
    reg.rollback("a")
    assert reg.head("a").version == 1
    with pytest.raises(RegistryError, match="no promoted version of a is older than v1"):
        reg.rollback("a")


# --------------------------------------------------------------- lineage, history


def test_lineage_follows_parents_newest_first(reg):
    add(reg, "a")               # 1
    add(reg, "a", parent=1)     # 2
    add(reg, "a", parent=2)     # 3
    add(reg, "a", parent=1)     # 4: a branch from v1
    add(reg, "a")               # 5: a fresh start
    assert reg.lineage("a", 3) == [3, 2, 1]
    assert reg.lineage("a", 4) == [4, 1]
    assert reg.lineage("a", 5) == [5]
    assert reg.lineage("a", 1) == [1]


def test_event_history_is_exact_and_in_order(reg):
    add(reg, "a")
    reg.judge("a", 1, True, "ok", [], expected_head=None)
    add(reg, "a", parent=1)
    reg.judge("a", 2, True, "ok", [], expected_head=1)
    add(reg, "a", parent=2)
    reg.judge("a", 3, False, "bad", [], expected_head=2)
    reg.rollback("a")
    reg.promote("a", 3, "override", force=True)
    add(reg, "b")  # other names keep their own history
    assert event_tuples(reg, "a") == [
        ("register", None, 1),
        ("promote", None, 1),
        ("register", None, 2),
        ("promote", 1, 2),
        ("register", None, 3),
        ("reject", 2, 3),
        ("rollback", 2, 1),
        ("promote", 1, 3),
    ]
    assert event_tuples(reg, "b") == [("register", None, 1)]
    ats = [e["at"] for e in reg.events("a")]
    assert ats == sorted(ats)


def test_records_survive_reopening_the_sqlite_file(db_path):
    first = SQLiteJobStore(db_path)
    reg = Registry(first)
    promoted(reg, "a", None, expected_head=None)
    add(reg, "a", parent=1)
    reg.judge("a", 2, False, "bad", [{"gate": "target", "passed": False}], expected_head=1)
    before_events = reg.events("a")
    before_versions = [v.as_dict() for v in reg.versions("a")]
    first.close()

    again = Registry(SQLiteJobStore(db_path))
    try:
        assert again.head("a").version == 1
        assert [v.as_dict() for v in again.versions("a")] == before_versions
        assert again.get("a", 2).verdict == "rejected"
        assert again.get("a", 2).record["gates"] == [{"gate": "target", "passed": False}]
        assert again.events("a") == before_events
        assert again.names() == ["a"]
        # numbering goes on from the stored versions
        assert add(again, "a", parent=1).version == 3
    finally:
        again.store.close()


def test_head_in_reads_inside_the_callers_transaction(store, reg):
    promoted(reg, "a", None, expected_head=None)
    add(reg, "a", parent=1)
    with store.transaction() as db:
        head = Registry.head_in(db, "a")
        assert Registry.head_in(db, "missing") is None
    assert head is not None
    assert (head.name, head.version, head.verdict, head.adapter) == ("a", 1, "promoted", "/adapters/a-None")
    assert head == reg.head("a")
