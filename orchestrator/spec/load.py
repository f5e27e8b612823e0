"""Load a job file: YAML -> overrides -> JobSpec -> adjustments -> cross-field rules -> file checks.

Every problem is collected and raised together in one `SpecError`; nothing here raises
anything else for bad input. What loading changes instead of refusing (adjustments.py) is
said as Notes, appended to the `notes` list a caller passes in.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.spec import paths
from orchestrator.spec.adjustments import drop_blocks_of_replaced_kind, fit_warmup
from orchestrator.spec.models import JobSpec
from orchestrator.spec.problems import Note, Problem, SpecError, did_you_mean
from orchestrator.spec.rules import cross_field_problems

_TYPE_TAG = re.compile(r"^(list|dict|literal|function-\w+|union|tagged-union|nullable|str|int|float|bool|none|lax-or-strict)\b.*|.*\[.*\]$")


def load_spec(path: str | Path, overrides: Iterable[str] = (), check_files: bool = True,
              notes: list[Note] | None = None) -> JobSpec:
    """Read, override and validate a job file. Raises SpecError listing every problem; what
    loading changed on its own is appended to `notes` (when given), even when it raises."""
    raw = read_job_file(path)
    return resolve_spec(raw, overrides, check_files=check_files, notes=notes)


def read_job_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise SpecError([Problem("", f"'{p}' is a directory, not a job file", "give the path of a YAML job file, "
                                 "e.g. configs/quickstart.yaml")])
    if not p.is_file():
        raise SpecError([Problem("", f"job file '{p}' does not exist", "check the path")])
    try:
        data = _parse_yaml(p.read_text(encoding="utf-8"))
    except _JobFileShape as err:
        raise SpecError([Problem("", f"'{p}' {err}")]) from None
    except RecursionError:
        raise SpecError([Problem("", f"'{p}' nests more than {MAX_DEPTH} levels deep; a job file has a few")]) from None
    except UnicodeDecodeError:
        raise SpecError([Problem("", f"job file '{p}' is not UTF-8 text")]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError([Problem("", f"'{p}' is not valid YAML{where}: {reason}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([Problem("", f"'{p}' must contain a mapping of sections (name, model, data, ...), "
                                     f"not a {type(data).__name__}")])
    return data


MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64  # sections in sections; a job file uses about five


class _JobFileShape(Exception):
    """The YAML parses but is not a plausible job file (duplicate keys, alias bombs, cycles)."""


class _JobFileLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise _JobFileShape(f"has the key '{key}' twice (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1}); keep one")
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str) -> Any:
    node = yaml.compose(text, Loader=_JobFileLoader)
    if node is None:
        return None
    _expanded_size(node, {}, set(), 0)
    loader = _JobFileLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_ALIASED = -1  # a key of the memo no node id takes: set once an alias was followed


def _expanded_size(node: Any, memo: dict[int, int], visiting: set[int], depth: int) -> int:
    """Node count with YAML aliases expanded; refuses cycles, nesting and sizes no job file has."""
    key = id(node)
    if key in memo:  # reached again: an alias
        memo[_ALIASED] = 1
        return memo[key]
    if key in visiting:
        raise _JobFileShape("contains an alias that refers to itself; YAML anchors must not form a cycle")
    if depth > MAX_DEPTH:
        raise _JobFileShape(f"nests more than {MAX_DEPTH} levels deep; a job file has a few")
    visiting.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, visiting, depth + 1) + _expanded_size(v, memo, visiting, depth + 1)
                    for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(v, memo, visiting, depth + 1) for v in node.value)
    visiting.discard(key)
    if size > MAX_EXPANDED_NODES:
        raise _JobFileShape(f"holds more than {MAX_EXPANDED_NODES:,} values" + (
            " once its YAML aliases are expanded; check its anchors" if _ALIASED in memo else
            "; a job file has a few hundred: is this a data file?"))
    memo[key] = size
    return size


def resolve_spec(raw: dict[str, Any], overrides: Iterable[str] = (), check_files: bool = True,
                 notes: list[Note] | None = None) -> JobSpec:
    """Validate an already-parsed job dict (plus `key.sub=value` overrides). What loading
    changed on its own is appended to `notes` (when given), even when it raises."""
    overrides = list(overrides)
    said = notes if notes is not None else []
    data, problems = apply_overrides(raw, overrides)
    said += drop_blocks_of_replaced_kind(raw, data, overrides)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        problems += pydantic_problems(err)
        # Still report cross-field and file problems: validate again with the bad values
        # removed (their defaults apply) and keep what is found away from reported paths.
        partial = _without_bad_values(data, err)
        if partial is not None:
            said += fit_warmup(partial)
            reported = {p.path for p in problems}
            extra = cross_field_problems(partial) + (file_problems(partial) if check_files else [])
            problems += [p for p in extra if not any(_related(p.path, r) for r in reported)]
        raise SpecError(problems) from None
    said += fit_warmup(spec)
    problems += cross_field_problems(spec)
    if check_files:
        problems += file_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def _without_bad_values(data: dict[str, Any], err: ValidationError) -> JobSpec | None:
    pruned = _deep_copy(data)
    for e in err.errors(include_url=False):
        loc = [x for x in e["loc"] if not _TYPE_TAG.match(str(x))]
        if e["type"] == "missing" or not loc:
            return None
        node: Any = pruned
        for part in loc[:-1]:
            node = _child(node, str(part))
            if node is _MISSING:
                break
        else:
            if isinstance(node, dict):
                parent = _known_fields_model([str(x) for x in loc[:-1]])
                field = parent.model_fields.get(str(loc[-1])) if parent is not None else None
                if field is not None and field.is_required() and field.annotation is str:
                    node[loc[-1]] = "placeholder"  # a required string: any valid stand-in
                else:
                    node.pop(loc[-1], None)
            elif isinstance(node, list):
                return None
    try:
        return JobSpec.model_validate(pruned)
    except ValidationError:
        return None


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


# ------------------------------------------------------------------------ overrides


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> tuple[dict[str, Any], list[Problem]]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a deep copy of `raw`."""
    data = _deep_copy(raw)
    problems: list[Problem] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(part == "" for part in key.split(".")):
            problems.append(Problem(key or item, f"override '{item}' is not of the form key.sub=value"))
            continue
        try:
            value = _parse_yaml(text) if text.strip() else None
        except _JobFileShape as err:
            problems.append(Problem(key, f"the value of override '{_short_text(item)}' {err}"))
            continue
        except RecursionError:
            problems.append(Problem(key, f"the value of override '{_short_text(item)}' nests too deeply"))
            continue
        except yaml.YAMLError:
            value = text
        err = _set_path(data, key.split("."), value)
        if err:
            problems.append(Problem(key, err))
    return data, problems


def _short_text(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _set_path(data: dict[str, Any], parts: list[str], value: Any) -> str | None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part)
        if nxt is _MISSING:
            if isinstance(node, list):
                return f"'{'.'.join(parts[:i + 1])}' is not an index of a {len(node)}-item list"
            nxt = {}
            node[part] = nxt
        elif not isinstance(nxt, (dict, list)):
            return f"'{'.'.join(parts[:i + 1])}' is a value, not a section, so it has no '{parts[i + 1]}'"
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            return f"'{last}' is not an index of a {len(node)}-item list"
        node[int(last)] = value
    else:
        node[last] = value
    return None


_MISSING = object()


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return _MISSING


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# ------------------------------------------------------------------ pydantic errors


def pydantic_problems(err: ValidationError) -> list[Problem]:
    by_path: dict[str, list[Problem]] = {}
    for e in err.errors(include_url=False):
        loc = [str(x) for x in e["loc"] if not _TYPE_TAG.match(str(x))]
        path = ".".join(loc)
        problem = _problem_for(e, loc, path)
        if problem not in by_path.setdefault(path, []):
            by_path[path].append(problem)
    merged = []
    for path, found in by_path.items():
        if len(found) == 1:
            merged.append(found[0])
        else:  # a union field failed every alternative: say what each form wanted
            hint = next((p.hint for p in found if p.hint), None)
            merged.append(Problem(path, "fits none of the allowed forms: " + "; or ".join(p.message for p in found), hint))
    return merged


def _problem_for(e: dict[str, Any], loc: list[str], path: str) -> Problem:
    kind = e["type"]
    value = e.get("input")
    if kind == "extra_forbidden":
        known = _known_fields(loc[:-1])
        return Problem(path, "unknown key", did_you_mean(loc[-1], known) or
                       (f"known keys here: {', '.join(sorted(known))}" if known else None))
    if kind == "missing":
        return Problem(path, "required key is missing")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'|\b(\d+)\b", e.get("ctx", {}).get("expected", ""))
        options = [a or b for a, b in choices]
        hint = did_you_mean(str(value), options) if isinstance(value, (str, int)) else None
        return Problem(path, f"{_short(value)} is not one of {', '.join(options)}", hint)
    if kind == "model_type" or kind == "dict_type":
        return Problem(path, f"must be a section (a mapping of keys), not {_short(value)}")
    if kind == "string_pattern_mismatch":
        doc = _field_doc(loc)
        return Problem(path, f"{_short(value)} is not allowed", doc)
    msg = e["msg"]
    msg = msg[0].lower() + msg[1:] if msg else kind
    msg = msg.replace("input should", "must").replace("value should", "must")
    return Problem(path, f"{msg} (got {_short(value)})")


def _short(value: Any) -> str:
    return _short_text(repr(value))


def _known_fields(loc: list[str]) -> list[str]:
    """Field names of the spec section at `loc` (list indices skipped), for did-you-mean."""
    model = _known_fields_model(loc)
    return list(model.model_fields) if model is not None else []


def _known_fields_model(loc: list[str]) -> type[BaseModel] | None:
    model: Any = JobSpec
    for part in loc:
        if part.isdigit():
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _section_type(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_doc(loc: list[str]) -> str | None:
    """First sentence of the docstring of the field at `loc`."""
    parent = _known_fields_model(loc[:-1])
    if parent is None or loc[-1] not in parent.model_fields:
        return None
    doc = parent.model_fields[loc[-1]].description or ""
    return doc.split(";")[0].split(". ")[0].strip() or None


def _section_type(annotation: Any) -> Any:
    """Unwrap Optional[...] and list[...] down to the spec model class, if any."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _section_type(arg)
            if isinstance(found, type) and issubclass(found, BaseModel):
                return found
        return None
    return annotation


# ----------------------------------------------------------------------- file checks


def file_problems(spec: JobSpec) -> list[Problem]:
    """Missing model dirs and data files, reported before any cluster time is spent."""
    problems = []
    loc = paths.locate_model(spec.model.path)
    if loc.kind == "local":
        p = Path(loc.value)
        if not p.exists():
            problems.append(Problem("model.path", f"model directory '{loc.value}' does not exist",
                                    "use builtin:tiny-base, an existing directory, or a hub id like org/name"))
        elif not (p / "config.json").is_file():
            problems.append(Problem("model.path", f"'{loc.value}' is not a Hugging Face model directory (no config.json)"))
        elif spec.method.lora is not None and spec.method.lora.target_modules == "all-linear" and \
                spec.method.lora.dropout and _experts(p / "config.json") > 1:
            # peft's all-linear adapts a Mixture-of-Experts model's experts as bare parameters,
            # and its wrapper for those cannot apply dropout: it refuses to build.
            problems.append(Problem("method.lora.dropout", f"'{loc.value}' is a Mixture-of-Experts model: LoRA "
                                    f"on its experts (all-linear adapts them) cannot use dropout", "set method.lora.dropout=0"))
    sources = [("data.train.path", spec.data.train.path)]
    if spec.data.eval is not None:
        sources.append(("data.eval.path", spec.data.eval.path))
    sources += [(f"forgetting.tasks.{i}.path", t.path) for i, t in enumerate(spec.forgetting.tasks) if t.path]
    sources += [(f"forgetting.tasks.{i}.fewshot_path", t.fewshot_path) for i, t in enumerate(spec.forgetting.tasks)
                if t.fewshot_path]
    for i, task in enumerate(spec.forgetting.tasks):
        include = task.lm_eval.include_path if task.lm_eval else None
        if include and not include.startswith(paths.DEMO_PREFIX) and not Path(include).expanduser().is_dir():
            problems.append(Problem(f"forgetting.tasks.{i}.lm_eval.include_path",
                                    f"'{include}' is not a folder of lm-eval task YAMLs", "point it at an existing folder"))
    for where, value in sources:
        problems += _data_file_problems(where, value)
    for i, file in enumerate(spec.data.train.files or []):
        if not Path(file).is_file():
            problems.append(Problem(f"data.train.files.{i}", f"data file '{file}' no longer exists",
                                    "the refresh's data changed after it fired; run the refresh again"))
    lora = spec.method.lora
    if lora is not None and lora.init_adapter and not (Path(lora.init_adapter).expanduser()
                                                       / "adapter_config.json").is_file():
        problems.append(Problem("method.lora.init_adapter", f"'{lora.init_adapter}' is not a PEFT adapter dir "
                                "(no adapter_config.json)", "point it at a run's adapter/ dir"))
    return problems


def _experts(config_file: Path) -> int:
    """How many experts each MoE layer of a model has (0: not a Mixture-of-Experts model)."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return 0  # the model's loader reports a damaged config
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    return max((int(config.get(k) or 0) for k in ("num_experts", "num_local_experts", "n_routed_experts")), default=0)


def _data_file_problems(where: str, value: str) -> list[Problem]:
    if paths.is_glob(value):  # files may arrive after validation; what the glob finds is checked when read
        if not value.lower().endswith(paths.DATA_SUFFIXES):
            return [Problem(where, f"the glob '{value}' does not end in a data file suffix",
                            f"end it with one of {', '.join(paths.DATA_SUFFIXES)}, e.g. data/*.jsonl")]
        return []
    loc = paths.locate_data(value)
    if loc.kind == "hub":
        return []
    if loc.kind == "demo":
        name = value[len(paths.DEMO_PREFIX):]
        known = paths.demo_file_names()
        if name not in known:
            return [Problem(where, f"'{name}' is not a demo data file", did_you_mean(name, known)
                            or f"known: {', '.join(known)}")]
        return []
    p = Path(loc.value)
    if not p.exists():
        return [Problem(where, f"data file '{value}' does not exist", "check the path (relative paths start at the current directory)")]
    if p.is_dir():
        return [Problem(where, f"'{value}' is a directory; point at a data file")]
    if not p.name.lower().endswith(paths.DATA_SUFFIXES):
        return [Problem(where, f"'{value}' has an unsupported extension",
                        f"use one of {', '.join(paths.DATA_SUFFIXES)}")]
    return []
