import json
import threading
import time

import pytest

from orchestrator.checkpoint.store import Best, CheckpointError, list_checkpoints, verify_checkpoint
from orchestrator.checkpoint.writer import CheckpointWriter


def make_writer(root, rank=0, world=1, attempt="job-0", **kwargs):
    return CheckpointWriter(root, rank, world, attempt, spec_hash="abc", keep_last=kwargs.pop("keep_last", 3),
                            warn=lambda message: None, **kwargs)


def write_bytes(payload: bytes):
    return lambda path: path.write_bytes(payload)


def blocked_until(event: threading.Event, payload: bytes = b"weights"):
    def write(path):
        assert event.wait(5), "test event was never set"
        path.write_bytes(payload)
    return write


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def leftovers(root):
    """Anything under the checkpoints dir that is not a committed checkpoint's content."""
    return sorted(p.name for p in root.rglob("*") if p.name.startswith((".done-rank", ".tmp-")))


def test_save_returns_before_a_slow_writer_and_commits_when_it_finishes(tmp_path):
    writer = make_writer(tmp_path)
    release = threading.Event()
    started = time.perf_counter()
    writer.save(10, {"trainable.safetensors": blocked_until(release), "trainer_state.json": write_bytes(b"{}")},
                metrics={"loss": 1.25})
    assert time.perf_counter() - started < 1.0
    assert list_checkpoints(tmp_path) == []
    release.set()
    writer.wait()
    [committed] = list_checkpoints(tmp_path)
    assert committed.name == "step-00000010"
    assert writer.committed == [committed]
    info = verify_checkpoint(committed)
    assert info.step == 10 and info.spec_hash == "abc"
    assert manifest(committed)["metrics"] == {"loss": 1.25}
    assert set(manifest(committed)["files"]) == {"trainable.safetensors", "trainer_state.json"}
    assert leftovers(tmp_path) == []


def test_rank_zero_commits_only_after_every_rank_wrote_its_files(tmp_path):
    rank0 = make_writer(tmp_path, rank=0, world=2)
    rank1 = make_writer(tmp_path, rank=1, world=2)
    rank0.save(20, {"model/rank0.pt": write_bytes(b"zero")}, metrics={"loss": 0.5})
    time.sleep(0.2)
    assert list_checkpoints(tmp_path) == []  # rank 0 is waiting for rank 1's marker
    rank1.save(20, {"model/rank1.pt": write_bytes(b"one")})
    rank1.wait()
    rank0.wait()
    [committed] = list_checkpoints(tmp_path)
    assert set(manifest(committed)["files"]) == {"model/rank0.pt", "model/rank1.pt"}
    assert verify_checkpoint(committed).step == 20
    assert rank1.committed == []  # only rank 0 commits
    assert leftovers(tmp_path) == []


def test_a_failing_file_writer_is_reported_by_wait_and_nothing_is_committed(tmp_path):
    writer = make_writer(tmp_path)

    def broken(path):
        raise OSError("disk full while writing optimizer state")

    writer.save(30, {"trainable.safetensors": write_bytes(b"w"), "optimizer.pt": broken})
    with pytest.raises(CheckpointError, match="OSError: disk full while writing optimizer state"):
        writer.wait()
    assert list_checkpoints(tmp_path) == []
    assert writer.committed == []
    writer.wait()  # the error is reported once, not again on the next wait


def test_rank_zero_gives_up_naming_the_rank_that_never_finished(tmp_path):
    writer = make_writer(tmp_path, rank=0, world=2, timeout_s=0.3)
    writer.save(40, {"trainable.safetensors": write_bytes(b"w")})
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"ranks \[1\] did not finish writing step-00000040"):
        writer.wait()
    assert time.perf_counter() - started < 2.0
    assert list_checkpoints(tmp_path) == []
    assert writer.committed == []


def test_remove_stale_staging_deletes_other_attempts_and_keeps_this_one(tmp_path):
    old = tmp_path / ".tmp-step-00000050-job-0-save00003"
    older = tmp_path / ".tmp-step-00000040-job-other"
    prefix = tmp_path / ".tmp-step-00000040-job-10-save00000"  # attempt job-10 is not attempt job-1
    for path in (old, older, prefix):
        path.mkdir()
        (path / "trainable.safetensors").write_bytes(b"half")
    writer = make_writer(tmp_path, attempt="job-1")
    current = writer.staging(60)
    (current / "trainable.safetensors").write_bytes(b"mine")
    removed = writer.remove_stale_staging()
    assert sorted(removed) == sorted([old, older, prefix])
    assert not old.exists() and not older.exists() and not prefix.exists()
    assert (current / "trainable.safetensors").read_bytes() == b"mine"


def test_remove_stale_staging_without_a_checkpoints_dir_is_a_no_op(tmp_path):
    writer = make_writer(tmp_path / "missing")
    assert writer.remove_stale_staging() == []


def test_retention_keeps_the_best_checkpoint_and_the_newest(tmp_path):
    writer = make_writer(tmp_path, keep_last=1, best=Best("loss", "min"))
    for step, loss in zip([1, 2, 3, 4], [3.0, 1.0, 2.0, 2.5]):
        writer.save(step, {"trainable.safetensors": write_bytes(b"w%d" % step)}, metrics={"loss": loss})
    writer.wait()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004"]
    assert manifest(tmp_path / "step-00000002")["metrics"] == {"loss": 1.0}


def test_a_second_save_waits_for_the_first(tmp_path):
    writer = make_writer(tmp_path)
    release = threading.Event()
    timer = threading.Timer(0.3, release.set)
    writer.save(1, {"trainable.safetensors": blocked_until(release)})
    assert writer.last_blocking_s < 0.2
    timer.start()
    try:
        started = time.perf_counter()
        writer.save(2, {"trainable.safetensors": write_bytes(b"second")})
        took = time.perf_counter() - started
    finally:
        timer.cancel()
    assert took >= 0.25
    assert writer.last_blocking_s >= 0.25
    assert (tmp_path / "step-00000001").is_dir()  # the first was committed before the second started
    writer.wait()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]


class FakeMirror:
    def __init__(self, errors):
        self.uploaded, self.retained, self._errors = [], [], list(errors)

    def upload(self, path):
        self.uploaded.append(path)

    def retain(self, names):
        self.retained.append(set(names))

    def wait(self):
        errors, self._errors = self._errors, []
        return errors


def test_rank_zero_hands_each_commit_to_the_mirror_and_collects_its_errors(tmp_path):
    mirror = FakeMirror(["mirroring step-00000000 to memory://x failed: connection reset"])
    writer = make_writer(tmp_path, keep_last=1, mirror=mirror)
    writer.save(1, {"trainable.safetensors": write_bytes(b"one")})
    writer.save(2, {"trainable.safetensors": write_bytes(b"two")})
    writer.wait()
    assert mirror.uploaded == [tmp_path / "step-00000001", tmp_path / "step-00000002"]
    assert mirror.retained == [{"step-00000001"}, {"step-00000002"}]
    assert writer.mirror_errors == ["mirroring step-00000000 to memory://x failed: connection reset"]


def test_other_ranks_never_touch_the_mirror(tmp_path):
    mirror = FakeMirror(["should not be collected"])
    rank1 = make_writer(tmp_path, rank=1, world=2, mirror=mirror)
    rank1.save(1, {"model/rank1.pt": write_bytes(b"one")})
    rank1.wait()
    assert mirror.uploaded == [] and mirror.retained == []
    assert rank1.mirror_errors == []


def test_a_rank_descheduled_after_writing_its_done_marker_still_succeeds(tmp_path, monkeypatch):
    """Rank 0 may commit (removing the markers, renaming the staging dir) the moment the last
    marker exists; the rank that wrote it must not touch the marker by name afterwards."""
    import orchestrator.checkpoint.writer as writer_module
    from orchestrator.checkpoint.writer import DONE

    real = writer_module.fsync_file

    def slow_on_markers(path):
        if path.name.startswith(DONE):
            time.sleep(0.5)  # rank 0's commit polls every few ms: it commits meanwhile
        real(path)

    monkeypatch.setattr(writer_module, "fsync_file", slow_on_markers)
    rank0, rank1 = make_writer(tmp_path, rank=0, world=2), make_writer(tmp_path, rank=1, world=2)
    rank0.save(6, {"a.pt": write_bytes(b"0")})
    rank1.save(6, {"b.pt": write_bytes(b"1")})
    rank0.wait()
    rank1.wait()  # raised FileNotFoundError (as a CheckpointError) when the marker was reopened by name
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006"]
    assert leftovers(tmp_path) == []


def slow_commits(monkeypatch, seconds: float):
    """Rank 0's commit takes `seconds` (on a real model it hashes gigabytes)."""
    import orchestrator.checkpoint.writer as writer_module

    real = writer_module.commit_checkpoint

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "commit_checkpoint", slow)


def as_rank(target):
    """Run one rank's sequence of saves in a thread; its exception, if any, is kept."""
    outcome = {}

    def body():
        try:
            target()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            outcome["error"] = err

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_a_step_saved_twice_with_a_slow_commit_neither_hangs_nor_loses_a_marker(tmp_path, monkeypatch):
    """A gate that trips on a checkpoint step: the periodic save of step 20, then the final
    save of step 20. Rank 1 runs ahead of rank 0's slow commit; before the fix its second
    marker landed in the first save's dir and rank 0 waited for a marker that never came."""
    slow_commits(monkeypatch, 0.5)
    rank0 = make_writer(tmp_path, rank=0, world=2, timeout_s=3.0)
    rank1 = make_writer(tmp_path, rank=1, world=2, timeout_s=3.0)

    def sequence(writer, payload):
        def run():
            writer.save(10, {f"r{writer.rank}.pt": write_bytes(payload)}, metrics={"loss": 1.0})
            writer.save(20, {f"r{writer.rank}.pt": write_bytes(payload)}, metrics={"gates_passed": 0.0})
            writer.save(20, {f"r{writer.rank}.pt": write_bytes(b"never written")}, blocking=True)
        return run

    started = time.perf_counter()
    threads = [as_rank(sequence(rank0, b"zero")), as_rank(sequence(rank1, b"one"))]
    for thread, _ in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread, _ in threads), "a rank is still waiting"
    assert [outcome.get("error") for _, outcome in threads] == [None, None]
    assert time.perf_counter() - started < 3.0  # no rank waited for its timeout
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010", "step-00000020"]
    step20 = tmp_path / "step-00000020"
    assert set(manifest(step20)["files"]) == {"r0.pt", "r1.pt"}
    assert (step20 / "r1.pt").read_bytes() == b"one"  # the second save of the step wrote nothing
    assert manifest(step20)["metrics"] == {"gates_passed": 0.0}
    assert rank0.committed == [tmp_path / "step-00000010", step20]
    assert leftovers(tmp_path) == []


def test_every_save_stages_in_a_dir_of_its_own(tmp_path):
    rank0, rank1 = make_writer(tmp_path, rank=0, world=2), make_writer(tmp_path, rank=1, world=2)
    first = rank0.staging(10)
    assert rank1.staging(10) == first  # both ranks name the same save's dir alike
    rank1.save(10, {"b.pt": write_bytes(b"1")})
    rank1.wait()
    assert rank1.saved(10) and not rank1.saved(20)
    assert rank1.staging(20) != rank0.staging(20)  # rank 1 is one save ahead until rank 0 saves too
    rank0.save(10, {"a.pt": write_bytes(b"0")})
    rank0.wait()
    assert rank0.staging(20) == rank1.staging(20)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]


def test_a_blocking_save_of_a_step_in_flight_waits_for_that_save(tmp_path):
    writer = make_writer(tmp_path)
    release = threading.Event()
    writer.save(5, {"trainable.safetensors": blocked_until(release)})
    threading.Timer(0.2, release.set).start()
    writer.save(5, {"trainable.safetensors": write_bytes(b"other")}, blocking=True)
    assert writer.committed == [tmp_path / "step-00000005"]  # committed by the time it returned
    assert (tmp_path / "step-00000005" / "trainable.safetensors").read_bytes() == b"weights"


def test_a_restarted_attempt_re_saving_a_committed_step_replaces_it(tmp_path):
    first = make_writer(tmp_path, attempt="job-0")
    first.save(8, {"trainable.safetensors": write_bytes(b"old")})
    first.wait()
    again = make_writer(tmp_path, attempt="job-1")
    again.save(8, {"trainable.safetensors": write_bytes(b"new")}, blocking=True)
    assert (tmp_path / "step-00000008" / "trainable.safetensors").read_bytes() == b"new"
    assert verify_checkpoint(tmp_path / "step-00000008").step == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000008"]


def test_a_re_save_interrupted_between_its_renames_gets_the_old_checkpoint_back(tmp_path):
    from orchestrator.checkpoint.store import REPLACED

    first = make_writer(tmp_path, attempt="job-0")
    first.save(8, {"trainable.safetensors": write_bytes(b"old")}, blocking=True)
    # The crash: the committed step-8 was moved aside and the new copy never renamed in.
    (tmp_path / "step-00000008").rename(tmp_path / f"{REPLACED}step-00000008")
    assert list_checkpoints(tmp_path) == []
    make_writer(tmp_path, attempt="job-1").remove_stale_staging()
    assert verify_checkpoint(tmp_path / "step-00000008").step == 8
    assert (tmp_path / "step-00000008" / "trainable.safetensors").read_bytes() == b"old"
