"""task.name=sft: your own data in TRL's formats (prompt-completion, conversational), from JSONL, CSV, Parquet or a
save_to_disk folder; a given held-out file; scoring by text, number or label; bad data refused in one line."""

import json

import pytest

from nslora.core.errors import UserError
from nslora.commands.cli import main
from nslora.tasks import load_task
from nslora.tasks.config import TaskConfig
from nslora.tasks.sft import find_label
from test_e2e import rows, tiny_dir, write_config  # noqa: F401  (fixture)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def pc_rows(n, offset=0):
    return [{"prompt": f"What is {i} plus 1?", "completion": str(i + 1)} for i in range(offset, offset + n)]


def chat_rows(n):
    return [{"messages": [{"role": "system", "content": "Answer yes or no."}, {"role": "user", "content": f"Is {i} even?"},
                          {"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}]} for i in range(n)]


def _load(path, n_train=6, n_heldout=4, **params):
    return load_task(TaskConfig(name="sft", path=str(path), n_train=n_train, n_heldout=n_heldout, seed=1, params=params))


def test_prompt_completion_from_jsonl_csv_parquet_and_a_saved_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(pc_rows(10))
    paths = [write_jsonl(tmp_path / "d.jsonl", pc_rows(10)), tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "saved"]
    ds.to_csv(str(paths[1]))
    ds.to_parquet(str(paths[2]))
    ds.save_to_disk(str(paths[3]))
    splits = []
    for p in paths:
        task, train, heldout = _load(p)
        assert len(train) == 6 and len(heldout) == 4 and not {s.id for s in train} & {s.id for s in heldout}
        assert all(s.question.startswith("What is ") and s.answer == str(int(s.question.split()[2]) + 1) for s in train + heldout)
        splits.append(([s.question for s in train], [s.question for s in heldout]))
    assert all(sp == splits[0] for sp in splits)  # the same rows and split whatever the file type


def test_conversational_rows_and_a_given_heldout_file(tmp_path):
    train_file = write_jsonl(tmp_path / "train.jsonl", chat_rows(8))
    test_file = write_jsonl(tmp_path / "test.jsonl", chat_rows(5))
    task, train, heldout = _load(train_file, n_train=8, n_heldout=5, heldout_path=str(test_file), answer="label")
    assert {s.meta["file"] for s in heldout} == {str(test_file)} and {s.meta["file"] for s in train} == {str(train_file)}
    assert train[0].system == "Answer yes or no." and train[0].question.startswith("Is ") and train[0].answer in ("yes", "no")
    assert task.labels == ["yes", "no"]
    # Multi-turn prompts keep the earlier turns as text; the last assistant turn is the target.
    multi = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                           {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}] * 3
    _, tr, _ = _load(write_jsonl(tmp_path / "multi.jsonl", [dict(m) for m in multi]), n_train=2, n_heldout=1)
    assert tr[0].question == "User: Hi\nAssistant: Hello\nUser: 2+2?" and tr[0].answer == "4"


@pytest.mark.parametrize("records, message", [
    ([{"question": "q", "answer": "a"}], "found columns answer, question; name yours with task.params"),
    ([{"prompt": "q", "completion": ""}], "row 1: empty completion"),
    ([{"prompt": " ", "completion": "a"}], "row 1: empty prompt"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "row 1: the conversation has no assistant turn"),
    ([{"messages": [{"role": "user"}]}], "every message needs 'role' and 'content'"),
    ([{"prompt": "q", "completion": {"text": "a"}}], "completion must be a string"),
])
def test_bad_rows_are_refused_naming_file_and_row(tmp_path, records, message):
    path = write_jsonl(tmp_path / "bad.jsonl", records * 12)
    with pytest.raises(UserError, match=message) as e:
        _load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_bad_paths_and_formats_are_refused(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "q", "completion": \n')
    for path, message in ((tmp_path / "d.txt", "not a .jsonl"), (tmp_path / "none.jsonl", "does not exist"),
                          (tmp_path / "broken.jsonl", "could not be read")):
        with pytest.raises(UserError, match=message):
            _load(path)
    with pytest.raises(UserError, match="needs task.path"):
        load_task(TaskConfig(name="sft"))
    with pytest.raises(UserError, match="heldout_path has 2 rows"):
        _load(write_jsonl(tmp_path / "t.jsonl", pc_rows(8)), heldout_path=str(write_jsonl(tmp_path / "h.jsonl", pc_rows(2))))


def test_scoring_by_number_and_label():
    from nslora.tasks.base import Sample
    from nslora.tasks.sft import SftTask

    s = lambda a: Sample(id="x", system="", question="q", answer=a, target=a)
    num = SftTask(answer="number")
    assert num.score("So 2 + 2 = 4", s("4")) and not num.score("either 3 or 4", s("4")) and num.score_strict("#### 4", s("4"))
    lab = SftTask(answer="label")
    lab.labels = ["maybe", "yes", "no"]
    assert lab.score("Yes, it is.", s("yes")) and lab.score("It is not yes: no.", s("no"))
    assert not lab.score("yes, no or maybe", s("yes")) and lab.score_strict("Answer: No.", s("no"))
    assert not lab.score_strict("I think no", s("no"))
    assert find_label("no idea", ["yes"]) == "" and find_label("YES", ["yes"]) == "yes"
    text = SftTask()
    assert text.score("5\nbecause 4 + 1", s("5")) and not text.score_strict("5\nbecause 4 + 1", s("5"))


def test_a_routed_run_on_your_own_jsonl(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", chat_rows(18))
    cfg = write_config(tmp_path, tiny_dir, None, task={"name": "sft", "path": str(data), "n_train": 12, "n_heldout": 6,
                                                        "params": {"answer": "label"}},
                       rewriter={"engine": "local", "strategy": "rules"})
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "runs" / "r"
    samples = rows(run, "SELECT * FROM samples")
    assert len(samples) == 18 and all(s["system"] == "Answer yes or no." for s in samples)
    assert len(rows(run, "SELECT * FROM evals WHERE epoch=3")) == 6


def test_eval_a_run_an_adapter_and_a_base_model_on_a_test_file(tiny_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "mine.jsonl", chat_rows(18))
    test = write_jsonl(tmp_path / "test.jsonl", chat_rows(7))
    cfg = write_config(tmp_path, tiny_dir, None, task={"name": "sft", "path": str(data), "n_train": 12, "n_heldout": 6,
                                                        "params": {"answer": "label"}}, policy={"name": "lora-only"})
    assert main(["run", str(cfg)]) == 0
    run = tmp_path / "runs" / "r"
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(test), "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    folder = run / "evals" / "test-sft"
    summary = json.loads((folder / "summary.json").read_text())
    replies = [json.loads(line) for line in (folder / "replies.jsonl").read_text().splitlines()]
    assert summary["samples"] == len(replies) == 7 and summary["task"] == "sft" and summary["adapter"] == str(run / "adapter")
    assert summary["flexible"]["accuracy"] == sum(r["flexible"] for r in replies) / 7
    assert summary["flexible"]["low"] <= summary["flexible"]["accuracy"] <= summary["flexible"]["high"]
    assert "| strict |" in printed and "| flexible |" in printed
    assert main(["inspect", str(run)]) == 0  # the run's evaluations are part of its summary
    shown = capsys.readouterr().out
    assert "Evaluations (nslora eval)" in shown and "test.jsonl" in shown
    # The run's held-out items, evaluated again from the same file, get the replies the run recorded.
    stored = {r["sample_id"]: r["reply"] for r in rows(run, "SELECT * FROM evals WHERE epoch=3")}
    heldout = {r["id"]: r["question"] for r in rows(run, "SELECT * FROM samples WHERE split='heldout'")}
    again = write_jsonl(tmp_path / "again.jsonl", [chat_rows(18)[int(i.split("-")[1])] for i in sorted(heldout)])
    assert main(["eval", str(run), "--data", str(again), "--max-new-tokens", "4", "--out", str(tmp_path / "e2")]) == 0
    replayed = [json.loads(line) for line in (tmp_path / "e2" / "replies.jsonl").read_text().splitlines()]
    assert [r["reply"] for r in replayed] == [stored[i] for i in sorted(heldout)]
    # An adapter folder names its base model; a base model needs --task.
    assert main(["eval", str(run / "adapter"), "--data", str(test), "--task", "sft", "--param", "answer=label",
                 "--max-new-tokens", "4", "--out", str(tmp_path / "e3")]) == 0
    assert json.loads((tmp_path / "e3" / "summary.json").read_text())["flexible"] == summary["flexible"]
    capsys.readouterr()
    assert main(["eval", str(tiny_dir), "--data", str(test), "--out", str(tmp_path / "e4")]) == 2
    assert "--task is needed" in capsys.readouterr().err


def test_eval_refuses_or_truncates_long_samples(tiny_dir, tmp_path, capsys):
    story = "\n".join(f"Mary went to room {i}." for i in range(60))
    test = write_jsonl(tmp_path / "long.jsonl", [{"prompt": story + "\nWhere is Mary?", "completion": "room"}] * 2
                       + pc_rows(2))
    args = ["eval", str(tiny_dir), "--data", str(test), "--task", "sft", "--max-length", "120", "--max-new-tokens", "2"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "over --max-length=120" in err and "--long truncate" in err and not (tmp_path / "a").exists()
    assert main(args + ["--long", "truncate", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    replies = [json.loads(line) for line in (tmp_path / "b" / "replies.jsonl").read_text().splitlines()]
    assert summary["truncated"] == 2 and [r["truncated"] for r in replies] == [True, True, False, False]
    assert all(r["question"].endswith("Where is Mary?") and r["question"] != story for r in replies[:2])


def babi_rows(n, seed, conversational):
    from nslora.tasks.babi import generate_babi, parse_babi

    samples = parse_babi(generate_babi(1, 40, seed), 1)[:n]
    if conversational:
        return [{"messages": [{"role": "system", "content": "Answer with one word: the place."},
                              {"role": "user", "content": s.question}, {"role": "assistant", "content": s.answer}]} for s in samples]
    return [{"prompt": s.question, "completion": s.answer} for s in samples]


@pytest.mark.parametrize("conversational", [False, True], ids=["prompt-completion-jsonl", "conversational-saved-dataset"])
def test_route_train_and_evaluate_your_own_data_end_to_end(tiny_dir, tmp_path, monkeypatch, conversational):
    import datasets

    from fake_openai import FakeOpenAI
    from test_e2e import KEY

    records = babi_rows(16, 3, conversational)
    if conversational:
        data = tmp_path / "train-ds"
        datasets.Dataset.from_list(records).save_to_disk(str(data))
    else:
        data = write_jsonl(tmp_path / "train.jsonl", records)
    test = write_jsonl(tmp_path / "test.jsonl", babi_rows(6, 9, conversational))
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, task={"name": "sft", "path": str(data), "n_train": 12, "n_heldout": 4})
        assert main(["run", str(cfg)]) == 0
    run = tmp_path / "runs" / "r"
    augmented = datasets.load_from_disk(str(run / "augmented"))
    rewritten = [r for r in augmented if r["rewritten"]]
    assert rewritten, "no rewrite was accepted"
    for r in augmented:  # the rewritten prompts come back in the format they came in
        if conversational:
            assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
            assert r["messages"][1]["content"] == r["question"] and r["messages"][2]["content"] == r["answer"]
        else:
            assert r["prompt"] == r["question"] and r["completion"] == r["target"]
    assert any(r["question"] != r["original_question"] for r in rewritten)
    assert main(["eval", str(run), "--data", str(test), "--max-new-tokens", "4", "--limit", "5"]) == 0
    summary = json.loads((run / "evals" / "test-sft-first5" / "summary.json").read_text())
    assert summary["samples"] == 5 and {"strict", "flexible"} <= set(summary)


def test_splits_of_a_dataset_dict_folder(tiny_dir, tmp_path, capsys):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(pc_rows(8)),
                          "test": datasets.Dataset.from_list(pc_rows(5, offset=100)),
                          "validation": datasets.Dataset.from_list(pc_rows(3, offset=200))}).save_to_disk(str(folder))
    # Training reads train; the same folder as heldout_path gives its test split (or heldout_split's).
    _, train, heldout = _load(folder, n_train=8, n_heldout=5, heldout_path=str(folder))
    assert {int(s.question.split()[2]) for s in train} == set(range(8))
    assert {int(s.question.split()[2]) for s in heldout} == set(range(100, 105))
    _, _, val = _load(folder, n_train=8, n_heldout=3, heldout_path=str(folder), heldout_split="validation")
    assert {int(s.question.split()[2]) for s in val} == {200, 201, 202}
    with pytest.raises(UserError, match="holds splits train, test, validation but no 'dev'"):
        _load(folder, split="dev")
    with pytest.raises(UserError, match="is one file, so it has no split 'test'"):
        _load(write_jsonl(tmp_path / "d.jsonl", pc_rows(10)), split="test")
    # nslora eval --split picks the split; a task whose data is one file refuses it in one line.
    assert main(["eval", str(tiny_dir), "--data", str(folder), "--split", "validation", "--task", "sft",
                 "--max-new-tokens", "2", "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["samples"] == 3 and summary["split"] == "validation"
    capsys.readouterr()
    assert main(["eval", str(tiny_dir), "--data", str(folder), "--split", "test", "--task", "babi",
                 "--out", str(tmp_path / "ev2")]) == 2
    assert "--split test: task babi reads one file" in capsys.readouterr().err
