import json

import pytest

from orchestrator.checkpoint.store import (
    CheckpointError, apply_retention, commit_checkpoint, latest_complete_checkpoint, list_checkpoints,
    staging_dir, verify_checkpoint,
)


def save(root, step, payload=b"weights"):
    staging = staging_dir(root, step)
    staging.mkdir(parents=True)
    (staging / "trainable.safetensors").write_bytes(payload * 100)
    (staging / "trainer_state.json").write_text(json.dumps({"step": step}))
    return commit_checkpoint(staging, step, spec_hash="abc")


def test_commit_writes_manifest_and_renames_into_place(tmp_path):
    path = save(tmp_path, 30)
    assert path.name == "step-00000030"
    assert not staging_dir(tmp_path, 30).exists()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 30 and manifest["spec_hash"] == "abc"
    assert set(manifest["files"]) == {"trainable.safetensors", "trainer_state.json"}
    assert verify_checkpoint(path).step == 30


def test_latest_skips_corrupt_and_incomplete_checkpoints_with_a_message(tmp_path):
    save(tmp_path, 10)
    truncated = save(tmp_path, 20)
    no_manifest = save(tmp_path, 30)
    wrong_hash = save(tmp_path, 40)
    (truncated / "trainable.safetensors").write_bytes(b"w")
    (no_manifest / "manifest.json").unlink()
    data = bytearray((wrong_hash / "trainable.safetensors").read_bytes())
    data[0] ^= 1
    (wrong_hash / "trainable.safetensors").write_bytes(bytes(data))
    messages = []
    info = latest_complete_checkpoint(tmp_path, warn=messages.append)
    assert info is not None and info.step == 10
    assert any("step-00000040" in m and "sha256" in m for m in messages)
    assert any("step-00000030" in m and "manifest missing" in m for m in messages)
    assert any("step-00000020" in m and "bytes" in m for m in messages)
    assert len(list_checkpoints(tmp_path)) == 4  # nothing deleted


def test_no_usable_checkpoint_returns_none_and_deletes_nothing(tmp_path):
    broken = save(tmp_path, 5)
    (broken / "manifest.json").unlink()
    assert latest_complete_checkpoint(tmp_path, warn=lambda m: None) is None
    assert broken.exists()
    with pytest.raises(CheckpointError, match="incomplete"):
        verify_checkpoint(broken)


def test_staging_dirs_are_never_taken_for_checkpoints(tmp_path):
    save(tmp_path, 10)
    staging_dir(tmp_path, 20).mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010"]


def test_retention_keeps_the_newest(tmp_path):
    for step in (10, 20, 30, 40):
        save(tmp_path, step)
    deleted = apply_retention(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["step-00000010", "step-00000020"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
