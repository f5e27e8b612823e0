"""Loading a job file: YAML, overrides, did-you-mean, file checks, every problem at once."""

from __future__ import annotations

import operator
import socket
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from orchestrator.spec import JobSpec, Problem, SpecError, load_spec, resolve_spec
from orchestrator.spec.load import apply_overrides, read_job_file
from orchestrator.spec.models import FreezeSpec, HeadSpec, LoraSpec, QuantizationSpec

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
NOT_YET = "is not available in this version"


def problems_of(fn, *args, **kwargs) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def problems_if_any(fn, *args, **kwargs) -> list[Problem]:
    try:
        fn(*args, **kwargs)
    except SpecError as err:
        return err.problems
    return []


def by_path(problems: list[Problem]) -> dict[str, Problem]:
    return {p.path: p for p in problems}


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "1+1=", "response": "2"}\n')
    return path


@pytest.fixture
def minimal(train_file: Path) -> dict:
    return {"name": "mini", "data": {"train": {"path": str(train_file)}}}


def write_yaml(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------- the quickstart


def test_quickstart_validates_with_demo_files_checked_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "empty-home"))
    spec = load_spec(QUICKSTART)
    assert spec.name == "quickstart"
    assert spec.data.train.path == "builtin:demo/target_train.jsonl"
    assert not (tmp_path / "empty-home").exists()


CONTRACT_KEYS = [
    (["name=contract-check"], "name", "contract-check"),
    (["model.path=some-org/some-model"], "model.path", "some-org/some-model"),
    (["method.kind=freeze", "method.lora=null"], "method.kind", "freeze"),
    (["data.train.path=builtin:demo/text_train.jsonl"], "data.train.path", "builtin:demo/text_train.jsonl"),
    (["training.max_steps=123"], "training.max_steps", 123),
    (["training.per_device_batch_size=3"], "training.per_device_batch_size", 3),
    (["training.lr=0.0005"], "training.lr", 0.0005),
    (["training.seed=2024"], "training.seed", 2024),
    (["resources.workers=4"], "resources.workers", 4),
    (["resources.strategy=fsdp"], "resources.strategy", "fsdp"),
    (["resources.strategy=deepspeed", "resources.zero_stage=3"], "resources.zero_stage", 3),
    (["checkpoint.every_steps=20"], "checkpoint.every_steps", 20),
    (["checkpoint.resume=never"], "checkpoint.resume", "never"),
    (["merge.enabled=true"], "merge.enabled", True),
]


def structural_spec(overrides: list[str]) -> JobSpec:
    """The quickstart with overrides, through the models only (cross-field rules not run)."""
    data, problems = apply_overrides(read_job_file(QUICKSTART), overrides)
    assert problems == []
    return JobSpec.model_validate(data)


@pytest.mark.parametrize("overrides, key, expected", CONTRACT_KEYS, ids=[k for _, k, _ in CONTRACT_KEYS])
def test_public_spec_keys_keep_their_names(overrides, key, expected):
    assert operator.attrgetter(key)(structural_spec(overrides)) == expected
    # Fully valid, apart from features this version refuses to run yet (e.g. deepspeed).
    problems = problems_if_any(load_spec, QUICKSTART, overrides)
    assert [str(p) for p in problems if NOT_YET not in p.message] == []


@pytest.mark.parametrize("kind", ["full", "lora", "qlora", "freeze", "head"])
def test_public_method_kinds_are_accepted(kind):
    assert structural_spec([f"method.kind={kind}", "method.lora=null"]).method.kind == kind


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed"])
def test_public_strategies_are_accepted(strategy):
    assert structural_spec([f"resources.strategy={strategy}"]).resources.strategy == strategy


def test_public_key_forgetting_tasks_keeps_its_name():
    spec = load_spec(QUICKSTART, ["forgetting.tasks=[{name: only, path: builtin:demo/source_sorting.jsonl}]"])
    assert [t.name for t in spec.forgetting.tasks] == ["only"]
    assert spec.forgetting.tasks[0].path == "builtin:demo/source_sorting.jsonl"


# ------------------------------------------------------------------ documentation


def _spec_models(model: type[BaseModel], seen: dict[str, type[BaseModel]]) -> dict[str, type[BaseModel]]:
    seen[model.__name__] = model
    for field in model.model_fields.values():
        for inner in _model_types(field.annotation):
            if inner.__name__ not in seen:
                _spec_models(inner, seen)
    return seen


def _model_types(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict):
        return [m for arg in typing.get_args(annotation) for m in _model_types(arg)]
    return []


def test_every_field_of_every_spec_section_is_documented():
    models = _spec_models(JobSpec, {})
    assert {"ModelSpec", "MethodSpec", "LoraSpec", "QuantizationSpec", "FreezeSpec", "HeadSpec",
            "DataSpec", "DataSourceSpec", "ColumnsSpec", "TrainingSpec", "ResourcesSpec",
            "CheckpointSpec", "ForgettingSpec", "ForgettingTaskSpec", "MergeSpec", "TrackingSpec"} <= set(models)
    undocumented = [f"{name}.{field}" for name, model in models.items()
                    for field, info in model.model_fields.items()
                    if not (info.description and info.description.strip())]
    assert undocumented == []


# ----------------------------------------------------------------------- defaults


@pytest.mark.parametrize("kind, blocks", [
    ("full", {}),
    ("lora", {"lora": LoraSpec}),
    ("qlora", {"lora": LoraSpec, "quantization": QuantizationSpec}),
    ("freeze", {"freeze": FreezeSpec}),
    ("head", {"head": HeadSpec}),
])
def test_method_blocks_are_filled_for_their_kind(kind, blocks):
    spec = JobSpec.model_validate({"name": "d", "method": {"kind": kind}, "data": {"train": {"path": "t.jsonl"}}})
    for block in ("lora", "quantization", "freeze", "head"):
        value = getattr(spec.method, block)
        if block in blocks:
            assert isinstance(value, blocks[block])
            assert value == blocks[block]()
        else:
            assert value is None


def test_method_defaults_to_lora_and_given_settings_are_kept():
    spec = resolve_spec({"name": "d", "method": {"lora": {"r": 4}},
                         "data": {"train": {"path": "t.jsonl"}}}, check_files=False)
    assert spec.method.kind == "lora"
    assert spec.method.lora.r == 4
    assert spec.method.lora.alpha == LoraSpec().alpha


# ---------------------------------------------------------------------- overrides


def test_override_values_are_parsed_as_yaml(minimal):
    spec = resolve_spec(minimal, [
        "training.max_steps=7",
        "training.lr=0.5",
        "data.packing=true",
        "data.shuffle=false",
        "method.lora.target_modules=[q_proj, v_proj]",
        "training.max_grad_norm=null",
        "description=a=b",
    ])
    assert spec.training.max_steps == 7
    assert spec.training.lr == 0.5
    assert spec.data.packing is True
    assert spec.data.shuffle is False
    assert spec.method.lora.target_modules == ["q_proj", "v_proj"]
    assert spec.training.max_grad_norm is None
    assert spec.description == "a=b"


def test_override_raw_types_follow_yaml():
    data, problems = apply_overrides({}, ["a.int=3", "a.float=2.5", "a.bool=true", "a.list=[1, x]",
                                          "a.null=null", "a.empty=", "a.text=hello", "a.quoted='7'"])
    assert problems == []
    assert data == {"a": {"int": 3, "float": 2.5, "bool": True, "list": [1, "x"], "null": None,
                          "empty": None, "text": "hello", "quoted": "7"}}


def test_override_that_is_not_yaml_is_kept_as_text(minimal):
    spec = resolve_spec(minimal, ["description=[unclosed"])
    assert spec.description == "[unclosed"


def test_override_does_not_change_the_loaded_dict(minimal):
    before = yaml.safe_dump(minimal)
    resolve_spec(minimal, ["training.max_steps=3", "data.packing=true"])
    assert yaml.safe_dump(minimal) == before


def test_override_list_item_by_index():
    spec = load_spec(QUICKSTART, ["forgetting.tasks.0.max_examples=5", "forgetting.tasks.3.metric=loss"])
    assert [t.max_examples for t in spec.forgetting.tasks] == [5, 100, 100, 100]
    assert spec.forgetting.tasks[3].metric == "loss"


def test_override_creates_a_missing_section(minimal, train_file):
    assert "tracking" not in minimal and "eval" not in minimal["data"]
    spec = resolve_spec(minimal, ["tracking.experiment=exp-1", f"data.eval.path={train_file}"])
    assert spec.tracking.experiment == "exp-1"
    assert spec.data.eval is not None and spec.data.eval.path == str(train_file)


@pytest.mark.parametrize("override, path, fragment", [
    ("training.max_steps", "training.max_steps", "not of the form key.sub=value"),
    ("=5", "=5", "not of the form key.sub=value"),
    ("training..lr=1", "training..lr", "not of the form key.sub=value"),
    ("name.x=1", "name.x", "'name' is a value, not a section"),
    ("training.lr.peak=1", "training.lr.peak", "'training.lr' is a value, not a section"),
    ("forgetting.tasks.9.max_examples=1", "forgetting.tasks.9.max_examples", "not an index of a 4-item list"),
    ("forgetting.tasks.9=1", "forgetting.tasks.9", "not an index of a 4-item list"),
    ("forgetting.tasks.first.name=x", "forgetting.tasks.first.name", "not an index of a 4-item list"),
])
def test_bad_override_names_its_path(override, path, fragment):
    problem = by_path(problems_of(load_spec, QUICKSTART, [override]))[path]
    assert fragment in problem.message


def test_bad_overrides_and_bad_values_are_reported_together():
    problems = problems_of(load_spec, QUICKSTART, [
        "training.max_steps",
        "name.x=1",
        "forgetting.tasks.9.name=x",
        "resources.workers=0",
        "method.kind=qlra",
    ])
    assert set(by_path(problems)) == {"training.max_steps", "name.x", "forgetting.tasks.9.name",
                                      "resources.workers", "method.kind"}


# ------------------------------------------------------------------- YAML problems


def test_missing_job_file(tmp_path):
    (problem,) = problems_of(load_spec, tmp_path / "nope.yaml")
    assert problem.path == ""
    assert "does not exist" in problem.message and "nope.yaml" in problem.message


def test_job_file_that_is_a_directory(tmp_path):
    (problem,) = problems_of(load_spec, tmp_path)
    assert "is a directory, not a job file" in problem.message and "YAML job file" in problem.hint


def test_deep_nesting_is_refused_in_a_file_and_in_an_override(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (problem,) = problems_of(load_spec, deep)
    assert "nests more than 64 levels deep" in problem.message
    (problem,) = problems_of(load_spec, QUICKSTART, ["description=" + "[" * 5000 + "]" * 5000])
    assert problem.path == "description" and "nests" in problem.message


def test_a_self_referencing_alias_in_an_override_is_refused(tmp_path):
    (problem,) = problems_of(load_spec, QUICKSTART, ["description=&a [*a]"])
    assert problem.path == "description" and "alias that refers to itself" in problem.message


def test_a_huge_file_without_aliases_is_not_blamed_on_aliases(tmp_path):
    wide = tmp_path / "wide.yaml"
    wide.write_text("".join(f"k{i}: {i}\n" for i in range(100_001)))
    (problem,) = problems_of(load_spec, wide)
    assert "holds more than 100,000 values; a job file has a few hundred" in problem.message
    assert "anchors" not in problem.message


def test_nan_and_infinity_are_refused_as_not_finite():
    problems = problems_of(load_spec, QUICKSTART, ["training.lr=.nan", "training.max_grad_norm=.inf"])
    assert {p.path: p.message for p in problems} == {"training.lr": "must be a finite number (got nan)",
                                                     "training.max_grad_norm": "must be a finite number (got inf)"}


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = write_yaml(tmp_path, "name: a\ndata:\n  train: {path: x.jsonl\nresources: {workers: 2}\n")
    (problem,) = problems_of(load_spec, path)
    assert "not valid YAML" in problem.message
    assert "line 4, column" in problem.message


def test_tab_indentation_names_its_line(tmp_path):
    path = write_yaml(tmp_path, "name: a\n\tdata: 1\n")
    (problem,) = problems_of(load_spec, path)
    assert "line 2, column 1" in problem.message


@pytest.mark.parametrize("text, kind", [("- name: a\n- data: b\n", "list"), ("just words\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    (problem,) = problems_of(load_spec, write_yaml(tmp_path, text))
    assert "must contain a mapping" in problem.message
    assert problem.message.endswith(f"not a {kind}")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_reports_the_required_keys(tmp_path, text):
    problems = problems_of(load_spec, write_yaml(tmp_path, text))
    assert [(p.path, p.message) for p in problems] == [("name", "required key is missing"),
                                                       ("data", "required key is missing")]


def test_binary_file_is_reported_not_raised(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"\xff\xfe\x00name")
    (problem,) = problems_of(load_spec, path)
    assert "UTF-8" in problem.message


# --------------------------------------------------------------------- did-you-mean


@pytest.mark.parametrize("override, path, suggestion", [
    ("resorces.workers=2", "resorces", "resources"),
    ("traning.lr=0.1", "traning", "training"),
    ("resources.workrs=3", "resources.workrs", "workers"),
    ("method.lora.alfa=3", "method.lora.alfa", "alpha"),
    ("data.train.fromat=chat", "data.train.fromat", "format"),
    ("forgetting.tasks.1.metrc=loss", "forgetting.tasks.1.metrc", "metric"),
    ("method.kind=qlra", "method.kind", "qlora"),
    ("resources.strategy=deepspped", "resources.strategy", "deepspeed"),
    ("data.train.format=instructoin", "data.train.format", "instruction"),
    ("forgetting.action=rolback", "forgetting.action", "rollback"),
])
def test_misspelling_gets_did_you_mean(override, path, suggestion):
    problem = by_path(problems_of(load_spec, QUICKSTART, [override]))[path]
    assert problem.hint == f"did you mean '{suggestion}'?"


def test_misspelt_key_in_the_file_gets_did_you_mean(tmp_path, train_file):
    path = write_yaml(tmp_path, f"name: a\ndata: {{train: {{path: {train_file}}}}}\n"
                                "resources: {workrs: 2}\nmethod: {kind: qlra}\n")
    problems = by_path(problems_of(load_spec, path))
    assert problems["resources.workrs"].message == "unknown key"
    assert problems["resources.workrs"].hint == "did you mean 'workers'?"
    assert problems["method.kind"].hint == "did you mean 'qlora'?"


def test_unknown_key_far_from_any_lists_the_known_keys():
    problem = by_path(problems_of(load_spec, QUICKSTART, ["resources.zzzzzz=1"]))["resources.zzzzzz"]
    assert problem.hint is not None
    for key in ("workers", "strategy", "zero_stage", "offload"):
        assert key in problem.hint


def test_enum_problem_lists_the_choices():
    problem = by_path(problems_of(load_spec, QUICKSTART, ["resources.strategy=mpi"]))["resources.strategy"]
    for choice in ("ddp", "fsdp", "deepspeed"):
        assert choice in problem.message


# ---------------------------------------------------------------- all problems at once


def test_every_kind_of_problem_is_reported_in_one_error(tmp_path, train_file):
    path = write_yaml(tmp_path, f"""\
name: Bad Name!
method:
  kind: full
data:
  train: {{path: {tmp_path / 'missing.jsonl'}}}
training:
  lr: -1
  max_steps: 10
  epochs: 2
resources:
  workrs: 2
  strategy: ddp
  zero_stage: 3
merge:
  enabled: true
forgetting:
  tasks:
    - {{name: t, path: {train_file}}}
    - {{name: t, path: builtin:demo/source_sortng.jsonl}}
""")
    # Refusals of features this version cannot run yet are not what this test is about.
    problems = by_path([p for p in problems_of(load_spec, path) if NOT_YET not in p.message])
    assert set(problems) == {
        "name",                        # structural: pattern
        "training.lr",                 # structural: range
        "resources.workrs",            # structural: unknown key
        "training.epochs",             # cross-field: max_steps and epochs
        "resources.zero_stage",        # cross-field: zero_stage without deepspeed
        "merge.enabled",               # cross-field: merge with full
        "forgetting.tasks.1.name",     # cross-field: duplicate task name
        "data.train.path",             # file: missing
        "forgetting.tasks.1.path",     # file: unknown demo file
    }
    assert problems["forgetting.tasks.1.path"].hint == "did you mean 'source_sorting.jsonl'?"


def test_problems_under_a_bad_value_are_not_reported_twice():
    problems = problems_of(load_spec, QUICKSTART, ["method.kind=ful", "training.max_steps=0"])
    assert [p.path for p in problems].count("method.kind") == 1
    assert "method.lora" not in by_path(problems)


# -------------------------------------------------------------------- missing files


def test_missing_data_file(minimal, tmp_path):
    minimal["data"]["train"]["path"] = str(tmp_path / "nope.jsonl")
    problem = by_path(problems_of(resolve_spec, minimal))["data.train.path"]
    assert "does not exist" in problem.message and "nope.jsonl" in problem.message


def test_data_path_that_is_a_directory(minimal, tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    minimal["data"]["train"]["path"] = str(tmp_path / "dir.jsonl")
    assert "is a directory" in by_path(problems_of(resolve_spec, minimal))["data.train.path"].message


def test_data_file_with_unsupported_extension(minimal, tmp_path):
    (tmp_path / "train.txt").write_text("hello\n")
    minimal["data"]["train"]["path"] = str(tmp_path / "train.txt")
    problem = by_path(problems_of(resolve_spec, minimal))["data.train.path"]
    assert "unsupported extension" in problem.message
    assert ".jsonl" in problem.hint and ".parquet" in problem.hint


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv", ".JSONL"])
def test_supported_data_extensions(minimal, tmp_path, suffix):
    (tmp_path / f"data{suffix}").write_text("")
    minimal["data"]["train"]["path"] = str(tmp_path / f"data{suffix}")
    assert resolve_spec(minimal).data.train.path.endswith(suffix)


def test_eval_and_forgetting_files_are_checked_too(minimal, tmp_path):
    minimal["data"]["eval"] = {"path": str(tmp_path / "eval.jsonl")}
    minimal["forgetting"] = {"tasks": [{"name": "t", "path": str(tmp_path / "src.jsonl")}]}
    assert {"data.eval.path", "forgetting.tasks.0.path"} <= set(by_path(problems_of(resolve_spec, minimal)))


def test_unknown_demo_file_gets_did_you_mean(minimal):
    minimal["data"]["train"]["path"] = "builtin:demo/target_trian.jsonl"
    problem = by_path(problems_of(resolve_spec, minimal))["data.train.path"]
    assert "not a demo data file" in problem.message
    assert problem.hint == "did you mean 'target_train.jsonl'?"


def test_unknown_demo_file_far_from_any_lists_the_demo_files(minimal):
    minimal["data"]["train"]["path"] = "builtin:demo/zzzz"
    problem = by_path(problems_of(resolve_spec, minimal))["data.train.path"]
    assert "target_train.jsonl" in problem.hint and "source_arithmetic.jsonl" in problem.hint


def test_missing_model_directory(minimal, tmp_path):
    minimal["model"] = {"path": str(tmp_path / "no-model")}
    assert "does not exist" in by_path(problems_of(resolve_spec, minimal))["model.path"].message


def test_model_directory_without_config_json(minimal, tmp_path):
    (tmp_path / "model").mkdir()
    minimal["model"] = {"path": str(tmp_path / "model")}
    assert "no config.json" in by_path(problems_of(resolve_spec, minimal))["model.path"].message
    (tmp_path / "model" / "config.json").write_text("{}")
    assert resolve_spec(minimal).model.path == str(tmp_path / "model")


def test_relative_model_path_that_does_not_exist(minimal, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    minimal["model"] = {"path": "./checkpoints/base"}
    assert "does not exist" in by_path(problems_of(resolve_spec, minimal))["model.path"].message


def test_hub_ids_are_accepted_without_the_network(minimal, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("validation touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    minimal["model"] = {"path": "meta-llama/Llama-3.1-8B", "revision": "main"}
    minimal["data"]["eval"] = {"path": "some-org/some_dataset", "split": "validation"}
    spec = resolve_spec(minimal)
    assert spec.model.path == "meta-llama/Llama-3.1-8B"
    assert spec.data.eval.path == "some-org/some_dataset"


def test_check_files_false_skips_file_checks(minimal, tmp_path):
    minimal["data"]["train"]["path"] = str(tmp_path / "later.jsonl")
    assert resolve_spec(minimal, check_files=False).data.train.path.endswith("later.jsonl")


@pytest.mark.parametrize("text,expected", [
    ("name: a\nname: b\ndata: {train: {path: x.jsonl}}\n", "has the key 'name' twice"),
    ("a: &x [*x]\n", "refers to itself"),
    ("a: &a [" + ",".join(["x"] * 20) + "]\n"
     + "".join(f"{n}: &{n} [" + ",".join([f"*{p}"] * 20) + "]\n" for p, n in zip("abcd", "bcde")),
     "once its YAML aliases are expanded"),
])
def test_hostile_yaml_is_refused_with_a_sentence(tmp_path, text, expected):
    from orchestrator.spec import SpecError, load_spec

    job = tmp_path / "job.yaml"
    job.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(job)
    assert expected in str(err.value)
