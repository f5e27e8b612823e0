import json

import pytest

from orchestrator.forgetting.metrics import change
from orchestrator.forgetting.report import build_forgetting_report, write_forgetting_report
from orchestrator.spec import resolve_spec


def test_direction_of_worse_depends_on_metric():
    assert change("exact_match", 0.9, 0.7)["worse"] is True
    assert change("exact_match", 0.7, 0.9)["worse"] is False
    assert change("loss", 1.0, 1.5)["worse"] is True
    assert change("perplexity", 3.0, 2.0)["worse"] is False
    c = change("exact_match", 0.8, 0.6)
    assert c["delta"] == pytest.approx(-0.2) and c["drop"] == pytest.approx(0.2)
    assert c["relative_delta"] == pytest.approx(-0.25)


def test_report_has_base_evals_final_and_summary(tmp_path):
    spec = resolve_spec({"name": "t", "data": {"train": {"path": "x.jsonl"}},
                         "forgetting": {"tasks": [{"name": "a", "path": "a.jsonl", "metric": "exact_match"},
                                                  {"name": "b", "path": "b.jsonl", "metric": "loss"}]}},
                        check_files=False)
    history = [{"step": 0, "a": 0.9, "b": 1.0}, {"step": 10, "a": 0.8, "b": 0.9}, {"step": 20, "a": 0.5, "b": 0.8}]
    report = build_forgetting_report(spec, history)
    a = report["tasks"]["a"]
    assert (a["base"], a["final"], a["worse"]) == (0.9, 0.5, True)
    assert [e["step"] for e in a["evals"]] == [0, 10, 20]
    assert report["tasks"]["b"]["worse"] is False
    assert report["summary"]["tasks_worse"] == ["a"]
    assert report["summary"]["largest_drop"]["task"] == "a"
    write_forgetting_report(report, tmp_path)
    assert json.loads((tmp_path / "forgetting.json").read_text())["tasks"]["a"]["final"] == 0.5
    assert (tmp_path / "forgetting.png").read_bytes()[:4] == b"\x89PNG"
