"""key.sub=value overrides work anywhere on a command line, before or after the options."""

from __future__ import annotations

import pytest

from orchestrator.cli.program import build_parser, main, parse
from orchestrator.exitcodes import ExitCode

JOB = "configs/quickstart.yaml"
SET = ["training.max_steps=7", "training.lr=0.001"]

# Every command that takes overrides, written with its options first and the overrides last.
AFTER_OPTIONS = {
    "validate": ["validate", JOB, *SET],
    "run": ["run", JOB, "--run-dir", "runs/x", *SET],
    "resume": ["resume", "runs/x", "--workers", "2", "--force", *SET],
    "submit": ["submit", JOB, "--priority", "3", *SET],
    "estimate": ["estimate", JOB, "--gpu-memory", "80", *SET],
    "launch slurm": ["launch", "slurm", JOB, "--nodes", "1", "--submit", *SET],
    "launch k8s": ["launch", "k8s", JOB, "--namespace", "ml", *SET],
    "schedule add": ["schedule", "add", "nightly", "--cron", "0 3 * * *", "--job", JOB, *SET],
    "schedule render": ["schedule", "render", "nightly", "--cron", "0 3 * * *", "--job", JOB, "--target", "slurm", *SET],
    "refresh": ["refresh", "nightly", "--job", JOB, "--run-dir", "runs/x", *SET],
}


@pytest.mark.parametrize("name", sorted(AFTER_OPTIONS))
def test_overrides_after_options_are_taken_in_order(name):
    values = parse(build_parser(), AFTER_OPTIONS[name])
    assert values["overrides"] == SET
    assert values["ftctl_command"].path == name


@pytest.mark.parametrize("name", sorted(AFTER_OPTIONS))
def test_overrides_split_around_options_keep_their_order(name):
    argv = AFTER_OPTIONS[name]
    options = argv[:len(argv) - len(SET)]
    head = options.index(JOB) + 1 if JOB in options and name not in ("schedule add", "schedule render", "refresh") \
        else len(options)
    mixed = [*options[:head], "training.max_steps=1", *options[head:], "training.max_steps=7", "training.lr=0.001"]
    assert parse(build_parser(), mixed)["overrides"] == ["training.max_steps=1", *SET]


def test_after_a_double_dash_everything_is_positional():
    assert parse(build_parser(), ["validate", JOB, "--", *SET])["overrides"] == SET


def test_a_stray_word_or_unknown_option_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as stop:
        parse(build_parser(), ["estimate", JOB, "--gpu-memory", "80", "oops"])
    assert stop.value.code == 2 and "unrecognized arguments: oops" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(build_parser(), ["estimate", JOB, "--nope", *SET])
    with pytest.raises(SystemExit):  # a command without overrides
        parse(build_parser(), ["cancel", "j1", "training.max_steps=7"])


# ---- the override takes effect -------------------------------------------------------------


def test_run_applies_an_override_written_after_its_options(tmp_path):
    # an invalid value proves the override reached validation: exit 2 before anything runs
    assert main(["run", JOB, "--run-dir", str(tmp_path / "r"), "resources.workers=0"]) == ExitCode.INVALID
    assert not (tmp_path / "r").exists()


def test_estimate_applies_an_override_written_after_its_options(capsys):
    assert main(["estimate", JOB, "--gpu-memory", "80"]) == ExitCode.OK
    plain = capsys.readouterr().out
    assert main(["estimate", JOB, "--gpu-memory", "80", "training.per_device_batch_size=64"]) == ExitCode.OK
    bigger = capsys.readouterr().out
    assert plain != bigger and "64" in bigger


def test_launch_scripts_carry_an_override_written_after_options(capsys):
    assert main(["launch", "slurm", JOB, "--nodes", "1", "training.max_steps=7"]) == ExitCode.OK
    assert "training.max_steps=7" in capsys.readouterr().out
    assert main(["launch", "k8s", JOB, "--namespace", "ml", "training.max_steps=7"]) == ExitCode.OK
    assert "max_steps: 7" in capsys.readouterr().out  # the resolved job the pods run


def test_schedule_render_carries_an_override_written_after_options(capsys):
    code = main(["schedule", "render", "nightly", "--cron", "0 3 * * *", "--job", "configs/refresh-nightly.yaml",
                 "--target", "slurm", "training.max_steps=7"])
    out = capsys.readouterr().out
    assert code == ExitCode.OK and "training.max_steps=7" in out


@pytest.mark.parametrize("argv", [
    ["validate", JOB],
    ["submit", JOB, "--priority", "3", "--team", "ml"],
    ["schedule", "add", "nightly", "--cron", "0 3 * * *", "--job", "configs/refresh-nightly.yaml"],
    ["refresh", "nightly", "--job", "configs/refresh-nightly.yaml", "--run-dir", "runs/never"],
], ids=lambda argv: " ".join(argv[:2]))
def test_commands_that_validate_first_see_an_override_written_after_options(argv, monkeypatch, tmp_path):
    """An invalid override after the options is refused by validation (exit 2) before any
    controller or Ray is contacted: proof that it reached the job."""
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    assert main([*argv, "resources.workers=0"]) == ExitCode.INVALID
