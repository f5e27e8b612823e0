"""Multiple-choice forgetting tasks: scoring by log-likelihood, sharding, few-shot prompts,
row checks, and the built-in demo rows the tiny base answers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import transformers

from orchestrator.builtin.demo_data import write_demo_data
from orchestrator.data.errors import DataError
from orchestrator.forgetting import evaluate
from orchestrator.forgetting.evaluate import evaluate_tasks
from orchestrator.forgetting.tasks import PreparedTask, choice_rows, prepare_tasks
from orchestrator.models.choice import choice_log_likelihoods
from orchestrator.models.tiny.build import ensure_tiny_base
from orchestrator.spec import resolve_spec
from orchestrator.spec.paths import SOURCE_TASKS

CPU = SimpleNamespace(unwrap_model=lambda model: model, device="cpu")  # what evaluate_tasks uses of an Accelerator

# Each row's answer is its longest choice: a random model's summed log-probability favours
# short choices, its per-byte one does not.
ROWS = [
    ("12+30=", ("042", "7", "abcdefghij"), 2),
    ("rev abc=", ("c", "cba", "xyzxyzxyz"), 2),
    ("sort 321=", ("123", "1", "99999999"), 2),
    ("a=1 b=2 ?a", ("1", "two", "qwertyuiop"), 2),
    ("hello ", ("x", "world", "everyone here"), 2),
    ("7*6=", ("42", "4", "forty-two!"), 2),
]


@pytest.fixture(autouse=True)
def one_thread():
    # Small models on a busy machine run many times faster on one thread than on two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(ensure_tiny_base()))


@pytest.fixture(scope="module")
def random_model(tokenizer):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=256)
    return transformers.LlamaForCausalLM(config).eval()


def direct_log_likelihood(model, tokenizer, prompt: str, choice: str) -> float:
    """One unpadded forward of bos + prompt + choice; the choice's summed log-probability, the
    prompt's trailing whitespace counted with the choice (as lm-evaluation-harness does)."""
    context = [tokenizer.bos_token_id, *tokenizer(prompt.rstrip(), add_special_tokens=False)["input_ids"]]
    ids = [tokenizer.bos_token_id, *tokenizer(prompt + choice, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        log_probs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(float(log_probs[t - 1, ids[t]]) for t in range(len(context), len(ids)))


def accuracy(rows, scores) -> float:
    return sum(max(range(len(s)), key=s.__getitem__) == answer for (_, _, answer), s in zip(rows, scores)) / len(rows)


def test_choice_and_choice_norm_match_a_direct_computation(random_model, tokenizer):
    direct = [[direct_log_likelihood(random_model, tokenizer, p, c) for c in choices] for p, choices, _ in ROWS]
    batched = choice_log_likelihoods(random_model, tokenizer, ROWS, batch_size=4)
    assert [len(s) for s in batched] == [3] * len(ROWS)
    assert sum(batched, []) == pytest.approx(sum(direct, []), abs=1e-4)

    per_byte = [[s / len(c.encode()) for s, c in zip(scores, choices)] for scores, (_, choices, _) in zip(direct, ROWS)]
    tasks = [PreparedTask("mc", "choice", choices=tuple(ROWS)),
             PreparedTask("mc_norm", "choice_norm", choices=tuple(ROWS))]
    values = evaluate_tasks(CPU, random_model, tasks, tokenizer, tokenizer.pad_token_id, shard=False)
    assert values == {"mc": accuracy(ROWS, direct), "mc_norm": accuracy(ROWS, per_byte)}
    assert values["mc"] == 0.0 < values["mc_norm"]  # lengths differ, so the two metrics part


def test_two_ranks_together_give_the_one_rank_numbers(random_model, tokenizer, monkeypatch):
    tasks = [PreparedTask("mc", "choice_norm", choices=tuple(ROWS[:5]))]  # 3 rows on rank 0, 2 on rank 1
    whole = evaluate_tasks(CPU, random_model, tasks, tokenizer, tokenizer.pad_token_id, shard=False)["mc"]
    halves = []
    for rank in (0, 1):
        monkeypatch.setattr(evaluate, "rank_and_world", lambda shard, rank=rank: (rank, 2))
        halves.append(evaluate_tasks(CPU, random_model, tasks, tokenizer, tokenizer.pad_token_id)["mc"])
    assert (halves[0] * 3 + halves[1] * 2) / 5 == pytest.approx(whole)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def mc(i: int) -> dict:
    return {"prompt": f"q{i}=", "choices": [f"a{i}", "wrong"], "answer": 0}


def prepared(tmp_path, **task) -> PreparedTask:
    raw = {"name": "fewshot", "data": {"train": {"path": "train.jsonl"}}, "forgetting": {"tasks": [task]}}
    return prepare_tasks(resolve_spec(raw, check_files=False), tokenizer=None)[0]


def shots(prompt: str) -> list[str]:
    return prompt.split("\n\n")[:-1]


def test_fewshot_prompts_are_fixed_never_the_row_itself_and_come_from_fewshot_path(tmp_path):
    path = write_rows(tmp_path / "mc.jsonl", [mc(i) for i in range(6)])
    task = {"name": "mc", "path": path, "format": "multiple_choice", "metric": "choice", "num_fewshot": 3}
    first = prepared(tmp_path, **task)
    assert first == prepared(tmp_path, **task)
    for i, (prompt, choices, answer) in enumerate(first.choices):
        assert prompt.endswith(f"\n\nq{i}=") and (choices, answer) == (("a" + str(i), "wrong"), 0)
        assert len(shots(prompt)) == 3 and f"q{i}=a{i}" not in shots(prompt)
        assert set(shots(prompt)) <= {f"q{j}=a{j}" for j in range(6)}
    assert len({prompt for prompt, _, _ in first.choices}) == 6

    other = write_rows(tmp_path / "shots.jsonl", [{**mc(i), "prompt": f"s{i}="} for i in range(4)])
    drawn = prepared(tmp_path, **task, fewshot_path=other)
    assert all(set(shots(p)) <= {f"s{j}=a{j}" for j in range(4)} for p, _, _ in drawn.choices)

    answers = write_rows(tmp_path / "qa.jsonl", [{"prompt": f"q{i}=", "response": f"r{i}"} for i in range(4)])
    exact = prepared(tmp_path, name="qa", path=answers, num_fewshot=2)
    for i, (prompt, response) in enumerate(exact.rows):
        assert response == f"r{i}" and prompt.endswith(f"q{i}=") and f"q{i}=r{i}" not in shots(prompt)
        assert len(shots(prompt)) == 2

    with pytest.raises(DataError, match="num_fewshot 6 needs 6 examples besides each row, but the evaluated rows hold only 5"):
        prepared(tmp_path, **{**task, "num_fewshot": 6})


@pytest.mark.parametrize("row, words", [
    ({"prompt": "q=", "choices": ["a", "b"], "answer": 2},
     "column 'answer' must be the index of the right choice, 0 to 1"),
    ({"prompt": "q=", "choices": "a", "answer": 0}, "column 'choices' must be a list of at least 2"),
    ({"choices": ["a", "b"], "answer": 0}, "missing column 'prompt'"),
])
def test_a_bad_row_stops_with_its_file_and_row(tmp_path, row, words):
    path = write_rows(tmp_path / "mc.jsonl", [mc(1), row])
    with pytest.raises(DataError, match=f"mc.jsonl row 2: {words}") as err:
        choice_rows(path, 10)
    assert "fix the row" in str(err.value) and "\n" not in str(err.value)


def test_csv_rows_carry_choices_as_a_json_array(tmp_path):
    path = tmp_path / "mc.csv"
    path.write_text('prompt,choices,answer\nq=,"[""a"", ""b""]",1\n')
    assert choice_rows(str(path), 10) == (("q=", ("a", "b"), 1),)


def test_demo_multiple_choice_rows_and_the_tiny_base_answers_them(tmp_path):
    written = write_demo_data(tmp_path, n_train=40, n_eval=50)
    for task in SOURCE_TASKS:
        rows = choice_rows(str(written[f"mc_{task}"]), 100)
        sources = [json.loads(line) for line in written[f"source_{task}"].read_text().splitlines()]
        assert len(rows) == 50
        for (prompt, choices, answer), source in zip(rows, sources):
            assert prompt == source["prompt"] and choices[answer] == source["response"]
            assert len(set(choices)) == 4
    assert {answer for _, _, answer in rows} == {0, 1, 2, 3}

    model_dir = ensure_tiny_base()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    task = PreparedTask("kv_recall", "choice", choices=choice_rows(str(written["mc_kv_recall"]), 50))
    value = evaluate_tasks(CPU, model, [task], tokenizer, tokenizer.pad_token_id, shard=False)["kv_recall"]
    assert value > 0.6  # chance is 0.25
