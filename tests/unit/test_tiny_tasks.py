"""The generated tasks, demo data and byte-level tokenizer of the built-in tiny base model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.builtin import tasks
from orchestrator.builtin.demo_data import write_demo_data
from orchestrator.builtin.recipe import heldout_rows, pretraining_rows


@pytest.mark.parametrize("task", tasks.ALL_TASKS)
def test_generate_is_deterministic_and_distinct(task):
    first = tasks.generate(task, 300, seed=7)
    assert first == tasks.generate(task, 300, seed=7)
    assert first != tasks.generate(task, 300, seed=8)
    assert len({row["prompt"] for row in first}) == 300
    for row in first:
        assert set(row) == {"prompt", "response"}
        assert len(row["prompt"]) + len(row["response"]) < 48


def test_answers_are_right():
    for row in tasks.generate("arithmetic", 50, seed=0):
        a, b = row["prompt"].rstrip("=").split("+")
        assert int(row["response"]) == int(a) + int(b)
    for row in tasks.generate("reversal", 50, seed=0):
        assert row["response"] == row["prompt"].removeprefix("rev ").rstrip("=")[::-1]
    for row in tasks.generate("sorting", 50, seed=0):
        assert row["response"] == "".join(sorted(row["prompt"].removeprefix("sort ").rstrip("=")))
    for row in tasks.generate("kv_recall", 50, seed=0):
        pairs, query = row["prompt"].split(" ?")
        assert dict(pair.split("=") for pair in pairs.split())[query] == row["response"]
    for row in tasks.generate("shift", 200, seed=0):
        word = row["prompt"].removeprefix("shift ").rstrip("=")
        assert row["response"] == "".join("abcdefghijklmnopqrstuvwxyza"[ord(c) - ord("a") + 1] for c in word)


@pytest.mark.parametrize("task", tasks.ALL_TASKS)
def test_exclude_keeps_sets_disjoint(task):
    train = tasks.generate(task, 2000, seed=0)
    held_out = tasks.generate(task, 200, seed=1, exclude={row["prompt"] for row in train})
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in held_out}


def test_heldout_rows_never_overlap_the_build_training_pool():
    for task in tasks.SOURCE_TASKS:
        pool = {row["prompt"] for row in pretraining_rows(task)}
        assert not pool & {row["prompt"] for row in heldout_rows(task, 200, seed=3)}


def test_exhausted_space_says_what_to_do():
    with pytest.raises(ValueError, match="ask for fewer"):
        tasks.generate("arithmetic", 10_001, seed=0)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        tasks.generate("translation", 5, seed=0)
    for name in tasks.ALL_TASKS:
        assert name in str(error.value)


def test_source_and_target_share_the_alphabet():
    assert tasks.TARGET_TASK not in tasks.SOURCE_TASKS
    target_chars = {c for row in tasks.generate(tasks.TARGET_TASK, 500, seed=0) for c in row["response"]}
    source_chars = {c for row in tasks.generate("reversal", 500, seed=0) for c in row["response"]}
    assert target_chars <= source_chars


def test_classification_is_balanced_and_labelled_right():
    rows = tasks.generate_classification(400, seed=0)
    assert rows == tasks.generate_classification(400, seed=0)
    assert sum(row["label"] for row in rows) == 200
    for row in rows:
        assert row["label"] == int(list(row["text"]) == sorted(row["text"]))
    held_out = tasks.generate_classification(100, seed=1, exclude={row["text"] for row in rows})
    assert not {row["text"] for row in rows} & {row["text"] for row in held_out}


def test_demo_data_files(tmp_path):
    written = write_demo_data(tmp_path / "a", n_train=300, n_eval=50)
    replay = {f"replay_{task}" for task in tasks.SOURCE_TASKS}
    multiple_choice = {f"mc_{task}" for task in tasks.SOURCE_TASKS}
    expected = {"target_train", "target_eval", "increment_train", "increment_eval", "classify_train",
                "classify_eval", "text_train", "alpaca_train", "sharegpt_train", "preference_train",
                "preference_eval"} | {
        f"source_{task}" for task in tasks.SOURCE_TASKS
    }
    assert set(written) == expected | replay | multiple_choice

    def read(name):
        return [json.loads(line) for line in written[name].read_text().splitlines()]

    assert len(read("target_train")) == 300 and len(read("text_train")) == 300
    for name in expected - {"target_train", "text_train", "alpaca_train", "sharegpt_train", "classify_train",
                            "increment_train", "preference_train"}:
        assert len(read(name)) == 50, name
    assert all(set(row) == {"prompt", "response"} for row in read("target_eval") + read("source_sorting"))
    assert all(set(row) == {"text", "label"} for row in read("classify_eval"))
    assert all(set(row) == {"text"} for row in read("text_train"))
    assert [row["output"] for row in read("alpaca_train")] == [row["response"] for row in read("target_train")]
    assert [row["conversations"][0]["value"] for row in read("sharegpt_train")] == \
        [row["prompt"] for row in read("target_train")]
    for pairs, target in (("preference_train", "target_train"), ("preference_eval", "target_eval")):
        assert [(row["prompt"], row["chosen"]) for row in read(pairs)] == \
            [(row["prompt"], row["response"]) for row in read(target)]
        assert all(row["rejected"] != row["chosen"] for row in read(pairs))
    train_prompts = {row["prompt"] for row in read("target_train")}
    assert not train_prompts & {row["prompt"] for row in read("target_eval")}
    assert len(read("increment_train")) == 300
    assert not {row["prompt"] for row in read("increment_train")} & {row["prompt"] for row in read("increment_eval")}
    assert all(row["prompt"].startswith("inc ") for row in read("increment_eval"))
    pool = {row["prompt"] for row in pretraining_rows("arithmetic")}
    assert not pool & {row["prompt"] for row in read("source_arithmetic")}
    # replay rows come from the base model's own training pool, never from the held-out rows
    assert len(read("replay_arithmetic")) == 300 // 4
    assert {row["prompt"] for row in read("replay_arithmetic")} <= pool

    again = write_demo_data(tmp_path / "b", n_train=300, n_eval=50)
    assert all(again[name].read_bytes() == written[name].read_bytes() for name in expected | multiple_choice)


def test_light_modules_do_not_import_torch():
    code = (
        "import sys, orchestrator.builtin.tasks, orchestrator.builtin.recipe, orchestrator.builtin.demo_data, "
        "orchestrator.models.tiny, orchestrator.models.tiny.build; "
        "print('torch' in sys.modules or 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def tokenizer():
    from orchestrator.models.tiny.tokenizer import build_tokenizer

    return build_tokenizer()


def test_tokenizer_round_trips_any_text(tokenizer):
    for text in ["12+34=046", "rev abc=cba", "  spaced  out ", "héllo wörld ✓ 日本語 🙂"]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    literal = tokenizer("<s>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert tokenizer.decode(literal) == "<s>" and len(literal) == 3
    assert len(tokenizer("abc", add_special_tokens=False)["input_ids"]) == 3


def test_tokenizer_specials(tokenizer):
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    )
    assert len({tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}) == 3
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) == 260


def test_tokenizer_saves_and_loads_identically(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "a=1 b=2 c=3 d=4 ?c ünïcode"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert loaded.chat_template == tokenizer.chat_template
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    assert loaded.padding_side == "right"
    assert len(loaded) == len(tokenizer)


def test_chat_template_renders_roles(tokenizer):
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "rev abc="},
        {"role": "assistant", "content": "cba"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<s><|system|>\nbe brief\n<|user|>\nrev abc=\n<|assistant|>\ncba</s>\n"
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nrev abc=\n<|assistant|>\n")
    with pytest.raises(Exception, match="system, user or assistant"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_ensure_builds_once_under_concurrency_and_never_exposes_half_builds(tmp_path, monkeypatch):
    import threading
    import time

    from orchestrator.models.tiny import build

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    monkeypatch.setattr(build, "SHIPPED_DIR", tmp_path / "no-shipped-build")  # so that it builds
    calls = []

    def fake_build(out_dir, progress=None):
        calls.append(out_dir)
        (out_dir / "model.safetensors").write_text("weights")
        time.sleep(0.3)
        assert not build.tiny_base_dir().exists(), "the target must appear only when complete"
        (out_dir / build.REPORT_FILE).write_text("{}")
        return {}

    monkeypatch.setattr(build, "build_tiny_base", fake_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(build.ensure_tiny_base())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [build.tiny_base_dir()] * 3
    assert (build.tiny_base_dir() / "model.safetensors").read_text() == "weights"
    assert sorted(p.name for p in build.tiny_base_dir().parent.iterdir()) == [
        build.tiny_base_dir().name,
        build.tiny_base_dir().name + ".lock",
    ]


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    from orchestrator.models.tiny import build

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    monkeypatch.setattr(build, "SHIPPED_DIR", tmp_path / "no-shipped-build")  # so that it builds

    def broken_build(out_dir, progress=None):
        (out_dir / "partial").write_text("x")
        raise RuntimeError("recipe broken")

    monkeypatch.setattr(build, "build_tiny_base", broken_build)
    with pytest.raises(RuntimeError, match="recipe broken"):
        build.ensure_tiny_base()
    assert [p.name for p in build.tiny_base_dir().parent.iterdir()] == [build.tiny_base_dir().name + ".lock"]


def test_ftctl_home_follows_the_environment(tmp_path, monkeypatch):
    from orchestrator.models.tiny import build

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    assert build.ftctl_home() == tmp_path
    assert build.tiny_base_dir() == tmp_path / "models" / f"tiny-base-v{build.RECIPE_VERSION}"
    monkeypatch.delenv("FTCTL_HOME")
    assert build.ftctl_home() == build.Path.home() / ".cache" / "ftctl"
