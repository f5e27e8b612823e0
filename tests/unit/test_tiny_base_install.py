"""The first use of builtin:tiny-base installs the build the package ships (checked by its
manifest) instead of pre-training it; a damaged or outdated shipped build is refused and the
model is built from the recipe, saying why. The build itself is faked here (no torch); the
real one runs in tests/integration/test_tiny_base.py."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict

import pytest

from orchestrator.builtin.recipe import RECIPE
from orchestrator.cli import main
from orchestrator.digest import sha256_file
from orchestrator.models.tiny import build
from orchestrator.models.tiny.manifest import MANIFEST_FILE

REFRESH = "ftctl build-base --from-recipe --out orchestrator/models/tiny/shipped"


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("FTCTL_HOME", str(home))
    return home


@pytest.fixture
def fake_build(monkeypatch):
    """Replaces the two-minute pre-training: writes a recognisable build and records each call."""
    calls = []

    def build_tiny_base(out_dir, progress=None, recipe=RECIPE):
        calls.append(out_dir)
        (out_dir / "model.safetensors").write_bytes(b"weights built from the recipe")
        report = {"recipe_version": build.RECIPE_VERSION, "exact_match": {"arithmetic": 0.95},
                  "target_exact_match": 0.0}
        (out_dir / build.REPORT_FILE).write_text(json.dumps(report))
        return report

    monkeypatch.setattr(build, "build_tiny_base", build_tiny_base)
    return calls


def shipped_manifest() -> dict:
    return json.loads((build.SHIPPED_DIR / MANIFEST_FILE).read_text())


def test_shipped_build_is_of_the_current_recipe():
    shipped = shipped_manifest()
    report = json.loads((build.SHIPPED_DIR / build.REPORT_FILE).read_text())
    refresh = f"refresh it with `{REFRESH}` (from the repository root) and commit it"
    assert shipped["recipe_version"] == build.RECIPE_VERSION, (
        f"the shipped tiny base is recipe v{shipped['recipe_version']} but RECIPE_VERSION is "
        f"{build.RECIPE_VERSION}: {refresh}")
    assert report["recipe_version"] == shipped["recipe_version"], f"the shipped build_report.json disagrees: {refresh}"
    # Catches a recipe edited without bumping RECIPE_VERSION.
    assert report["recipe"] == asdict(RECIPE), (
        f"RECIPE differs from the one the shipped tiny base was built with: bump RECIPE_VERSION, then {refresh}")
    assert sorted(shipped["files"]) == sorted(p.name for p in build.SHIPPED_DIR.iterdir() if p.name != MANIFEST_FILE)


def test_first_use_installs_the_shipped_build_in_well_under_a_few_seconds(home, fake_build):
    messages: list[str] = []
    started = time.perf_counter()
    path = build.ensure_tiny_base(progress=messages.append)
    seconds = time.perf_counter() - started

    assert seconds < 3.0, f"installing took {seconds:.1f}s"
    assert not fake_build, "built from the recipe although the shipped build is intact"
    assert path == home / "models" / f"tiny-base-v{build.RECIPE_VERSION}"
    files = shipped_manifest()["files"]
    assert sorted(p.name for p in path.iterdir()) == sorted(files)
    assert all(sha256_file(path / name) == entry["sha256"] for name, entry in files.items())
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no staging dir left
    assert any("installed the shipped builtin:tiny-base" in m for m in messages), messages
    assert build.ensure_tiny_base(progress=lambda m: pytest.fail(f"installed again: {m}")) == path


def damage_digest(shipped):
    weights = shipped / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


def damage_version(shipped):
    manifest = json.loads((shipped / MANIFEST_FILE).read_text())
    manifest["recipe_version"] = build.RECIPE_VERSION - 1
    (shipped / MANIFEST_FILE).write_text(json.dumps(manifest))


def damage_missing_file(shipped):
    (shipped / "tokenizer.json").unlink()


def damage_no_manifest(shipped):
    (shipped / MANIFEST_FILE).unlink()


@pytest.mark.parametrize("damage, reason", [
    (damage_digest, "model.safetensors does not match its sha256 in the manifest"),
    (damage_version, f"holds recipe v{build.RECIPE_VERSION - 1}, not v{build.RECIPE_VERSION}"),
    (damage_missing_file, "lacks tokenizer.json, which its manifest lists"),
    (damage_no_manifest, f"holds no {MANIFEST_FILE}"),
])
def test_an_unusable_shipped_build_is_refused_and_the_model_built_instead(tmp_path, home, fake_build, monkeypatch,
                                                                          damage, reason):
    shipped = tmp_path / "shipped"
    shutil.copytree(build.SHIPPED_DIR, shipped)
    damage(shipped)
    monkeypatch.setattr(build, "SHIPPED_DIR", shipped)
    messages: list[str] = []

    path = build.ensure_tiny_base(progress=messages.append)

    assert len(fake_build) == 1
    assert (path / "model.safetensors").read_bytes() == b"weights built from the recipe"
    # Nothing of the refused copy stays beside the build.
    assert sorted(p.name for p in path.iterdir()) == sorted(["model.safetensors", build.REPORT_FILE])
    said = [m for m in messages if m.startswith("cannot install the shipped builtin:tiny-base")]
    assert len(said) == 1 and reason in said[0] and f"building it from recipe v{build.RECIPE_VERSION}" in said[0]


def test_refresh_command_writes_a_build_that_installs(tmp_path, home, fake_build, monkeypatch, capsys):
    out = tmp_path / "refreshed"

    assert main(["build-base", "--from-recipe", "--out", str(out)]) == 0

    assert len(fake_build) == 1
    written = json.loads((out / MANIFEST_FILE).read_text())
    assert written["recipe_version"] == build.RECIPE_VERSION
    assert written["files"]["model.safetensors"]["sha256"] == sha256_file(out / "model.safetensors")
    assert sorted(written["files"]) == ["build_report.json", "model.safetensors"]
    assert f"wrote recipe v{build.RECIPE_VERSION}" in capsys.readouterr().out

    monkeypatch.setattr(build, "SHIPPED_DIR", out)
    installed = build.ensure_tiny_base()
    assert len(fake_build) == 1, "the refreshed build was refused"
    assert (installed / "model.safetensors").read_bytes() == b"weights built from the recipe"

    # Refreshing again replaces the previous build in place.
    assert main(["build-base", "--from-recipe", "--out", str(out)]) == 0
    assert len(fake_build) == 2 and (out / MANIFEST_FILE).is_file()


def test_refresh_command_refuses_a_directory_it_did_not_write(tmp_path, home, fake_build, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")

    assert main(["build-base", "--from-recipe", "--out", str(mine)]) == 2
    assert "exists and holds no manifest.json" in capsys.readouterr().err
    assert main(["build-base", "--out", str(tmp_path / "new")]) == 2
    assert "add --from-recipe" in capsys.readouterr().err

    assert not fake_build
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "new").exists()


def test_from_recipe_replaces_the_installed_copy(home, fake_build, capsys):
    installed = build.ensure_tiny_base()
    assert not fake_build

    assert main(["build-base", "--from-recipe"]) == 0

    assert len(fake_build) == 1
    assert (installed / "model.safetensors").read_bytes() == b"weights built from the recipe"
    assert "arithmetic   exact match 0.950" in capsys.readouterr().out
