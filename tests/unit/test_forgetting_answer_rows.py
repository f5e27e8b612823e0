"""Exact-match rows of a forgetting task: chat rows are prompted through the chat template, and
a file without one usable row is an error instead of a score of 0 over nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.data.errors import DataError
from orchestrator.data.formats import DEFAULT_CHAT_TEMPLATE
from orchestrator.forgetting.tasks import answer_rows, prepare_tasks
from orchestrator.models.tiny.tokenizer import build_tokenizer
from orchestrator.spec import load_spec
from orchestrator.spec.models import DataSourceSpec

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tokenizer()
    tok.chat_template = tok.chat_template or DEFAULT_CHAT_TEMPLATE
    return tok


def test_a_chat_row_is_prompted_with_the_conversation_before_its_last_answer(tmp_path, tokenizer):
    path = write(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "sort 321="}, {"role": "assistant", "content": "123"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "rev ab="},
                      {"role": "assistant", "content": "ba"}, {"role": "user", "content": "rev cd="},
                      {"role": "assistant", "content": "dc"}]},
        {"messages": [{"role": "assistant", "content": "no prompt"}]},  # skipped: nothing to prompt with
    ])
    rows = answer_rows(DataSourceSpec(path=path, format="chat"), 10, tokenizer)
    assert [response for _, response in rows] == ["123", "dc"]
    first, second = (prompt for prompt, _ in rows)
    assert first == tokenizer.apply_chat_template([{"role": "user", "content": "sort 321="}], tokenize=False,
                                                  add_generation_prompt=True)
    assert "rev ab=" in second and "ba" in second and "rev cd=" in second and "dc" not in second


def test_a_chat_task_measures_exact_match_over_its_rows(tmp_path, tokenizer):
    path = write(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"sort {n}="}, {"role": "assistant", "content": "".join(sorted(str(n)))}]}
        for n in (321, 8172, 90451)])
    spec = load_spec(QUICKSTART, [f"forgetting.tasks=[{{name: chat, path: '{path}', format: chat, metric: exact_match}}]"])
    (task,) = prepare_tasks(spec, tokenizer)
    assert len(task.rows) == 3 and all(prompt.endswith("<|assistant|>\n") for prompt, _ in task.rows)


@pytest.mark.parametrize("fmt, row", [("instruction", {"question": "q", "answer": "a"}),
                                      ("alpaca", {"instruction": "q"}),
                                      ("chat", {"messages": [{"role": "user", "content": "q"}]})])
def test_a_file_without_one_usable_row_is_an_error_not_a_score(tmp_path, tokenizer, fmt, row):
    path = write(tmp_path / "rows.jsonl", [row, row])
    with pytest.raises(DataError, match="for exact match; check the file, its format and columns"):
        answer_rows(DataSourceSpec(path=path, format=fmt), 10, tokenizer)
