"""Which checkpoint a run resumes from, and when it refuses (driver side, no Ray)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file

from orchestrator.checkpoint.compat import keep_global_batch, resume_differences
from orchestrator.checkpoint.store import commit_checkpoint, staging_dir
from orchestrator.spec import load_spec
from orchestrator.rundir import RunDir
from orchestrator.training.errors import JobFailed
from orchestrator.training.resume import choose_resume

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"
FINGERPRINT = "f" * 64


def spec_of(*overrides: str):
    return load_spec(QUICKSTART, list(overrides), check_files=False)


def config_of(spec, fingerprint: str = FINGERPRINT) -> dict:
    return {"spec": spec.model_dump(mode="json"), "data": {"train_fingerprint": fingerprint}}


def save(run_dir: Path, step: int, spec=None) -> Path:
    spec = spec or spec_of()
    staging = staging_dir(run_dir / "checkpoints", step)
    staging.mkdir(parents=True)
    save_file({"w": torch.full((64,), float(step))}, str(staging / "trainable.safetensors"))
    (staging / "trainer_state.json").write_text(json.dumps(
        {"step": step, "spec": spec.model_dump(mode="json"), "data_fingerprint": FINGERPRINT}))
    return commit_checkpoint(staging, step, "hash")


def choose(run_dir: Path, spec=None, config=None, force: bool = False) -> tuple[str | None, str]:
    spec = spec or spec_of()
    out = io.StringIO()
    config = config or config_of(spec)
    chosen = choose_resume(spec, RunDir(run_dir), config["data"]["train_fingerprint"], Console(file=out, width=300),
                           force)
    return chosen, out.getvalue()


def test_auto_takes_the_newest_checkpoint(tmp_path):
    for step in (10, 20, 30):
        save(tmp_path, step)
    chosen, out = choose(tmp_path)
    assert chosen.endswith("step-00000030")
    assert "resuming from step-00000030 (step 30)" in out


def test_a_fresh_run_dir_starts_fresh(tmp_path):
    assert choose(tmp_path) == (None, "")


def test_truncated_missing_manifest_and_wrong_hash_are_skipped_with_a_message(tmp_path):
    for step in (10, 20, 30, 40):
        save(tmp_path, step)
    ckpts = tmp_path / "checkpoints"
    weights = ckpts / "step-00000040" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    data = bytearray((ckpts / "step-00000030" / "trainable.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    (ckpts / "step-00000030" / "trainable.safetensors").write_bytes(bytes(data))
    (ckpts / "step-00000020" / "manifest.json").unlink()
    chosen, out = choose(tmp_path)
    assert chosen.endswith("step-00000010")
    assert "step-00000040" in out and "truncated" in out
    assert "step-00000030" in out and "sha256" in out
    assert "step-00000020" in out and "manifest missing" in out


def test_no_usable_checkpoint_is_a_clear_error_and_nothing_is_deleted(tmp_path):
    for step in (10, 20):
        save(tmp_path, step)
    for step in (10, 20):
        (tmp_path / "checkpoints" / f"step-{step:08d}" / "manifest.json").unlink()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(JobFailed, match="none of the 2 checkpoints .* is usable.*nothing was deleted"):
        choose(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_never_ignores_checkpoints_and_a_broken_explicit_path_is_refused(tmp_path):
    path = save(tmp_path, 10)
    assert choose(tmp_path, spec_of("checkpoint.resume=never"))[0] is None
    (path / "trainable.safetensors").write_bytes(b"")
    with pytest.raises(JobFailed, match="checkpoint.resume=.*step-00000010.*bytes"):
        choose(tmp_path, spec_of(f"checkpoint.resume={path}"))


def test_a_changed_learning_rate_is_refused_with_the_diff_unless_forced(tmp_path):
    save(tmp_path, 10)
    changed = spec_of("training.lr=0.001")
    with pytest.raises(JobFailed) as err:
        choose(tmp_path, changed)
    assert "training.lr: 0.003 -> 0.001" in str(err.value) and "--force" in str(err.value)
    chosen, out = choose(tmp_path, changed, force=True)
    assert chosen.endswith("step-00000010") and "resuming despite" in out


def test_changed_training_data_is_refused(tmp_path):
    save(tmp_path, 10)
    with pytest.raises(JobFailed, match="training data fingerprint"):
        choose(tmp_path, config=config_of(spec_of(), fingerprint="0" * 64))


def test_bookkeeping_changes_do_not_block_resume(tmp_path):
    save(tmp_path, 10)
    spec = spec_of("checkpoint.every_steps=50", "checkpoint.keep_last=1", "tracking.tensorboard=true",
                   "training.log_every_steps=5", "forgetting.every_steps=50", "name=renamed")
    assert choose(tmp_path, spec)[0].endswith("step-00000010")


def test_ddp_may_change_workers_when_the_global_batch_is_kept():
    saved = spec_of().model_dump(mode="json")
    same = spec_of("resources.workers=1", "training.grad_accum_steps=2").model_dump(mode="json")
    assert resume_differences(saved, same) == []
    halved = spec_of("resources.workers=1").model_dump(mode="json")
    assert resume_differences(saved, halved) == [
        "global batch (workers x per_device_batch_size x grad_accum_steps): 32 -> 16"]


def test_sharded_strategies_may_not_change_workers():
    saved = spec_of("resources.strategy=deepspeed").model_dump(mode="json")
    fewer = spec_of("resources.strategy=deepspeed", "resources.workers=1",
                    "training.grad_accum_steps=2").model_dump(mode="json")
    [line] = resume_differences(saved, fewer)
    assert line.startswith("resources.workers: 2 -> 1") and "only ddp" in line


def test_keep_global_batch_finds_the_accumulation_or_says_it_cannot():
    saved = spec_of().model_dump(mode="json")  # 2 workers x 16 x 1
    assert keep_global_batch(saved, 1) == {"resources.workers": 1, "training.grad_accum_steps": 2}
    assert keep_global_batch(saved, 3) is None


@pytest.mark.parametrize("manifest", [
    {"step": 40, "files": ["x"]},  # valid JSON, wrong shape
    {"step": 40, "files": {"trainer_state.json": 12}},
    {"step": 40, "files": {"../../etc/passwd": {"bytes": 1, "sha256": "0"}}},
    {"step": 40, "files": {}},  # verifies, but holds no trainer state
    [1, 2, 3],
])
def test_a_manifest_of_the_wrong_shape_is_skipped_like_a_corrupt_one(tmp_path, manifest):
    save(tmp_path, 30)
    bad = save(tmp_path, 40)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    chosen, out = choose(tmp_path)
    assert chosen.endswith("step-00000030")
    assert "step-00000040" in out and "trying step-00000030 instead" in out


def test_a_trainer_state_of_the_wrong_shape_is_refused_with_its_name(tmp_path):
    from orchestrator.checkpoint.store import CheckpointError, read_trainer_state

    (tmp_path / "trainer_state.json").write_text('["not", "a", "state"]')
    with pytest.raises(CheckpointError, match="trainer_state.json is not a trainer state"):
        read_trainer_state(tmp_path)
