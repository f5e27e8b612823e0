import importlib.util
import json
import threading
import uuid

import pytest

from orchestrator.checkpoint.remote import Mirror
from orchestrator.checkpoint.store import commit_checkpoint, staging_dir, verify_checkpoint
from orchestrator.spec.storage import check_uri


def save(root, step, payload=b"weights"):
    staging = staging_dir(root, step)
    (staging / "optimizer").mkdir(parents=True)
    (staging / "trainable.safetensors").write_bytes(payload * 100)
    (staging / "optimizer" / "state.pt").write_bytes(payload[::-1] * 10)
    (staging / "trainer_state.json").write_text(json.dumps({"step": step}))
    return commit_checkpoint(staging, step, spec_hash="abc")


@pytest.fixture(params=["file", "memory"])
def uri(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path / 'remote'}"
    return f"memory://ftctl-test-{uuid.uuid4().hex}"


@pytest.fixture
def mirror(uri):
    m = Mirror(uri, warn=lambda message: None)
    yield m
    m.close()


def remote_files(mirror, name):
    prefix = f"{mirror.root}/{name}/"
    return {p[len(prefix):] for p in mirror.fs.find(prefix)}


def test_upload_copies_every_file_and_the_manifest(tmp_path, mirror):
    local = save(tmp_path / "run", 10)
    mirror.upload(local)
    assert mirror.wait() == []
    assert mirror.list_remote() == ["step-00000010"]
    assert remote_files(mirror, "step-00000010") == {
        "manifest.json", "trainable.safetensors", "optimizer/state.pt", "trainer_state.json"}
    fetched = mirror.fetch_latest(tmp_path / "fresh" / "checkpoints")
    assert fetched == tmp_path / "fresh" / "checkpoints" / "step-00000010"
    info = verify_checkpoint(fetched)
    assert info.step == 10 and info.spec_hash == "abc"
    assert (fetched / "trainable.safetensors").read_bytes() == (local / "trainable.safetensors").read_bytes()


def test_upload_returns_at_once_and_writes_the_manifest_last(tmp_path, mirror):
    local = save(tmp_path / "run", 10)
    release, written = threading.Event(), []
    put_file = mirror.fs.put_file

    def slow_put_file(source, target, **kwargs):
        release.wait(timeout=10)
        written.append(target.rsplit("/", 1)[-1])
        return put_file(source, target, **kwargs)

    mirror.fs.put_file = slow_put_file
    mirror.upload(local)  # would block here if the copy ran on the caller's thread
    assert written == []
    release.set()
    assert mirror.wait() == []
    assert len(written) == 4 and written[-1] == "manifest.json"


def test_upload_replaces_a_remote_checkpoint_of_the_same_step(tmp_path, mirror):
    mirror.upload(save(tmp_path / "run", 10, payload=b"old"))
    mirror.wait()
    mirror.fs.pipe(f"{mirror.root}/step-00000010/leftover.bin", b"stale")
    mirror.upload(save(tmp_path / "run", 10, payload=b"new"))
    assert mirror.wait() == []
    assert "leftover.bin" not in remote_files(mirror, "step-00000010")
    fetched = mirror.fetch_latest(tmp_path / "fresh")
    assert (fetched / "trainable.safetensors").read_bytes() == b"new" * 100


def test_retain_deletes_only_the_checkpoints_not_kept(tmp_path, mirror):
    for step in (10, 20, 30):
        mirror.upload(save(tmp_path / "run", step))
    mirror.retain({"step-00000010", "step-00000030"})
    assert mirror.wait() == []
    assert mirror.list_remote() == ["step-00000010", "step-00000030"]
    assert "trainable.safetensors" in remote_files(mirror, "step-00000030")


def test_retain_runs_after_the_uploads_queued_before_it(tmp_path, mirror):
    for step in (10, 20):
        mirror.upload(save(tmp_path / "run", step))
    mirror.retain({"step-00000020"})  # no wait in between: step-00000010 must already be there to go
    assert mirror.wait() == []
    assert mirror.list_remote() == ["step-00000020"]


def test_fetch_latest_skips_corrupt_and_incomplete_remote_checkpoints(tmp_path, uri):
    messages = []
    mirror = Mirror(uri, warn=messages.append)
    for step in (10, 20, 30, 40):
        mirror.upload(save(tmp_path / "run", step))
    mirror.wait()
    weights = f"{mirror.root}/step-00000040/trainable.safetensors"
    data = bytearray(mirror.fs.cat_file(weights))
    data[0] ^= 1
    mirror.fs.pipe(weights, bytes(data))  # same size, wrong hash
    mirror.fs.rm(f"{mirror.root}/step-00000030/manifest.json")

    local = tmp_path / "fresh" / "checkpoints"
    fetched = mirror.fetch_latest(local)
    mirror.close()

    assert fetched == local / "step-00000020"
    assert verify_checkpoint(fetched).step == 20
    assert any("step-00000040" in m and "trainable.safetensors" in m and "sha256" in m for m in messages)
    assert any("step-00000030" in m and "manifest missing" in m for m in messages)
    assert sorted(p.name for p in local.iterdir()) == ["step-00000020"]  # no .fetch-* dirs left behind
    assert mirror.list_remote() == ["step-00000010", "step-00000020", "step-00000030", "step-00000040"]


def test_fetch_latest_returns_none_when_nothing_remote_is_usable(tmp_path, uri):
    messages = []
    mirror = Mirror(uri, warn=messages.append)
    assert mirror.fetch_latest(tmp_path / "fresh") is None  # nothing uploaded yet
    mirror.upload(save(tmp_path / "run", 10))
    mirror.wait()
    mirror.fs.rm(f"{mirror.root}/step-00000010/trainer_state.json")
    assert mirror.fetch_latest(tmp_path / "fresh") is None
    mirror.close()
    assert any("step-00000010" in m and "missing trainer_state.json" in m and "no older" in m for m in messages)
    assert mirror.list_remote() == ["step-00000010"]
    assert not (tmp_path / "fresh" / "step-00000010").exists()


def test_failed_upload_is_reported_by_wait_and_does_not_raise(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the mirror wants a directory")
    messages = []
    mirror = Mirror(f"file://{blocker}/mirror", warn=messages.append)
    mirror.upload(save(tmp_path / "run", 10))
    errors = mirror.wait()
    assert len(errors) == 1 and "step-00000010" in errors[0] and "failed" in errors[0]
    assert messages == errors
    assert mirror.wait() == []  # reported once
    mirror.close()


def test_the_thread_survives_a_failed_upload(tmp_path):
    mirror = Mirror(f"memory://ftctl-test-{uuid.uuid4().hex}", warn=lambda message: None)
    gone = save(tmp_path / "run", 10)
    (gone / "manifest.json").unlink()  # nothing left to say what to upload
    mirror.upload(gone)
    mirror.upload(save(tmp_path / "run", 20))
    errors = mirror.wait()
    mirror.close()
    assert len(errors) == 1 and "step-00000010" in errors[0]
    assert mirror.list_remote() == ["step-00000020"]


def test_closed_mirror_stops_its_thread_and_refuses_work(tmp_path, uri):
    mirror = Mirror(uri, warn=lambda message: None)
    mirror.upload(save(tmp_path / "run", 10))
    mirror.close()
    assert mirror.list_remote() == ["step-00000010"]  # close waited for the queued upload
    assert not mirror._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        mirror.upload(save(tmp_path / "run", 20))


def test_check_uri():
    assert check_uri("file:///tmp/x") is None
    assert check_uri("memory://x") is None
    problem = check_uri("nosuchproto://x")
    assert problem is not None and "nosuchproto" in problem and "unknown" in problem
    s3 = check_uri("s3://b/p")
    if importlib.util.find_spec("s3fs") is None:
        assert s3 is not None and "s3fs" in s3 and "pip install" in s3
    else:
        assert s3 is None
