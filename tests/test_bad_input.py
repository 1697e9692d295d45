"""Bad input, refused up front: one line naming the field, file or row and the fix, exit code 2, nothing written.

`python tests/test_bad_input.py` prints the table of cases and messages (Markdown).
"""

from __future__ import annotations

import csv
import json
import re
import socket
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402,F401  (environment before anything imports textgrad)
from nslora.commands.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _gsm(tmp: Path, rows=None, raw: bytes | None = None) -> str:
    p = tmp / "gsm.jsonl"
    if raw is not None:
        p.write_bytes(raw)
    else:
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _clinifact(tmp: Path, rows, columns=("id", "claim", "article_abstract", "label")) -> str:
    p = tmp / "clinifact.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    return str(p)


def _jsonl(tmp: Path, rows) -> str:
    p = tmp / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _dataset_dict(tmp: Path) -> str:
    import datasets

    rows = [{"prompt": "p", "completion": "c"}] * 2
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp / "dd"))
    return str(tmp / "dd")


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Q = {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3 + 4 = 7\n#### 7"}
GSM = ["--set", "task.name=gsm8k", "--set", "task.n_train=2", "--set", "task.n_heldout=1"]

# (kind, how to make the case: tmp -> argv after "nslora", words the one-line message must contain)
CASES = [
    ("unknown config key", lambda t: ["run", "--set", "train.epocs=3"], ["unknown key 'train.epocs'", "valid keys"]),
    ("unknown config section", lambda t: ["run", "--set", "trainer.epochs=3"], ["unknown section 'trainer'"]),
    ("wrong type", lambda t: ["run", "--set", "train.epochs=three"], ["train.epochs='three' must be an integer"]),
    ("value not among the choices", lambda t: ["run", "--set", "task.name=mnist"], ["task.name='mnist' is not a built-in"]),
    ("p outside (0, 1]", lambda t: ["run", "--set", "saturation.p=1.5"], ["saturation.p=1.5 must be in (0, 1]"]),
    ("zero epochs", lambda t: ["run", "--set", "train.epochs=0"], ["train.epochs=0 must be >= 1"]),
    ("no LoRA target modules", lambda t: ["run", "--set", "lora.target_modules=[]"], ["lora.target_modules is empty"]),
    ("malformed --set", lambda t: ["run", "--set", "epochs=3"], ["write it as section.key=value"]),
    ("config file missing", lambda t: ["run", str(t / "nope.yaml")], ["nope.yaml does not exist"]),
    ("config not valid YAML", lambda t: (t / "bad.yaml").write_text("train: [1, 2\n") and ["run", str(t / "bad.yaml")], ["not valid YAML"]),
    ("negative budget", lambda t: ["run", "--set", "rewriter.max_cost=-1"], ["rewriter.max_cost=-1.0 must be >= 0"]),
    ("batch API with a local engine", lambda t: ["run", "--set", "rewriter.batch=api"], ["rewriter.batch='api' needs rewriter.engine=openai"]),
    ("data file missing", lambda t: ["run", *GSM, "--set", f"task.path={t / 'none.jsonl'}"], ["none.jsonl"]),
    ("missing column", lambda t: ["run", *GSM, "--set", f"task.path={_gsm(t, [{'question': 'x'}] * 3)}"], ["gsm.jsonl", "answer"]),
    ("empty data set", lambda t: ["run", *GSM, "--set", f"task.path={_gsm(t, [])}"], ["gsm.jsonl", "holds no problems"]),
    ("invalid JSON line", lambda t: ["run", *GSM, "--set", "task.path=" + _gsm(t, raw=(json.dumps(Q) + "\n{oops\n").encode())], ["gsm.jsonl", "line 2"]),
    ("invalid UTF-8", lambda t: ["run", *GSM, "--set", "task.path=" + _gsm(t, raw=json.dumps(Q).encode() + b"\xff\xfe\n")], ["gsm.jsonl", "UTF-8"]),
    ("answer without '#### N'", lambda t: ["run", *GSM, "--set", f"task.path={_gsm(t, [{'question': 'q', 'answer': '7'}] * 3)}"], ["gsm.jsonl", "####"]),
    ("label not 0/1/2", lambda t: ["run", "--set", "task.name=clinifact", "--set", f"task.path={_clinifact(t, [(i, 'c', 'a', 5) for i in range(3)])}"], ["clinifact.csv", "label"]),
    ("duplicate ids", lambda t: ["run", "--set", "task.name=clinifact", "--set", "task.n_train=1", "--set", "task.n_heldout=1",
                                 "--set", f"task.path={_clinifact(t, [(1, 'c', 'a', 1), (1, 'd', 'b', 0), (2, 'e', 'f', 2)])}"], ["occurs twice"]),
    ("too few samples", lambda t: ["run", *GSM[:2], "--set", "task.n_train=5", "--set", f"task.path={_gsm(t, [Q] * 3)}"], ["has 3 samples", "lower task.n_train"]),
    ("model path missing", lambda t: ["run", "--set", f"model.name_or_path={t / 'no-model'}"], ["model.name_or_path", "does not exist"]),
    ("unknown policy", lambda t: ["run", "--set", "policy.name=smart"], ["policy.name='smart' is not a built-in"]),
    ("user policy not importable", lambda t: ["run", "--set", "policy.name=no_such_pkg.rules:Mine"], ["cannot be imported"]),
    ("reward policy without its folder", lambda t: ["run", "--set", "policy.name=reward"], ["policy.path"]),
    ("reward policy folder missing", lambda t: ["run", "--set", "policy.name=reward", "--set", f"policy.path={t / 'pol'}"], ["pol"]),
    ("unreachable rewriter endpoint", lambda t: ["run", "--set", "rewriter.engine=openai", "--set", "rewriter.strategy=direct", "--set", f"rewriter.base_url=http://127.0.0.1:{_closed_port()}/v1"], ["unreachable"]),
    ("resume of a folder that is not a run", lambda t: ["resume", str(t)], ["is not a run folder"]),
    ("policy folder that does not exist", lambda t: ["policy", "show", str(t / "no-policy")], ["no-policy"]),
    ("user engine not importable", lambda t: ["run", "--set", "rewriter.strategy=direct", "--set", "rewriter.engine=no_such_pkg.mod:Eng"],
     ["rewriter.engine", "cannot be imported"]),
    ("user strategy not importable", lambda t: ["run", "--set", "rewriter.strategy=no_such_pkg.mod:Strat"], ["rewriter.strategy", "cannot be imported"]),
    ("sft task without a data file", lambda t: ["run", "--set", "task.name=sft"], ["task.name=sft needs task.path"]),
    ("sft row with an empty prompt", lambda t: ["run", "--set", "task.name=sft", "--set", f"task.path={_jsonl(t, [{'prompt': ' ', 'completion': 'x'}] * 3)}"],
     ["rows.jsonl row 1", "empty prompt"]),
    ("sft rows without known columns", lambda t: ["run", "--set", "task.name=sft", "--set", f"task.path={_jsonl(t, [{'q': 'a', 'a': 'b'}] * 3)}"],
     ["rows.jsonl row 1", "found columns a, q", "prompt_column"]),
    ("sft answer mode unknown", lambda t: ["run", "--set", "task.name=sft", "--set", "task.params.answer=regex",
                                           "--set", f"task.path={_jsonl(t, [{'prompt': 'p', 'completion': 'c'}] * 3)}"], ["task.params.answer='regex'"]),
    ("eval --limit below 1", lambda t: ["eval", "smollm2-135m-instruct", "--task", "babi", "--data", "x.txt", "--limit", "0"], ["--limit=0 must be >= 1"]),
    ("eval of a base model without --task", lambda t: ["eval", "smollm2-135m-instruct", "--data", "x.txt"], ["--task is needed"]),
    ("eval of a DatasetDict without --split", lambda t: ["eval", "smollm2-135m-instruct", "--task", "sft", "--data", _dataset_dict(t)],
     ["is a DatasetDict with splits train, test", "--split"]),
    ("eval --split of a one-file task", lambda t: ["eval", "smollm2-135m-instruct", "--task", "babi", "--data", "x.txt", "--split", "test"],
     ["--split test: task babi reads one file"]),
    ("eval --param without '='", lambda t: ["eval", "smollm2-135m-instruct", "--task", "sft", "--data", "x.jsonl", "--param", "answer"],
     ["--param 'answer': write it as key=value"]),
    ("eval folder that exists", lambda t: (t / "ev" / "old").mkdir(parents=True) or
     ["eval", "smollm2-135m-instruct", "--task", "babi", "--data", "x.txt", "--out", str(t / "ev")], ["ev already exists", "--overwrite"]),
    ("export without a target", lambda t: ["export", str(t)], ["needs --merged DIR, --gguf FILE and / or --trl FILE"]),
    ("export onto an existing file", lambda t: (t / "mine.jsonl").write_text("mine") and ["export", str(t), "--trl", str(t / "mine.jsonl")],
     ["--trl:", "mine.jsonl already exists", "--overwrite"]),
    ("export of a folder that is not a run", lambda t: ["export", str(t), "--trl", str(t / "out.jsonl")], ["has no augmented.jsonl"]),
    ("policy train onto an existing folder", lambda t: (t / "pol").mkdir() or (t / "pol" / "x").write_text("x") and
     ["policy", "train", str(t), "--out", str(t / "pol")], ["--out:", "pol already exists"]),
    ("policy train with a fallback that is not a policy", lambda t: ["policy", "train", str(t), "--out", str(t / "p"), "--fallback", "smart"],
     ["reward.fallback='smart' is not a policy"]),
    ("policy train with the oracle as fallback", lambda t: ["policy", "train", str(t), "--out", str(t / "p"), "--fallback", "oracle"],
     ["reward.fallback='oracle' cannot decide from the signals"]),
    ("policy train with p above 1", lambda t: ["policy", "train", str(t), "--out", str(t / "p"), "--p", "2"], ["reward.p=2.0 must be a share"]),
    ("compare onto a file that is not a report", lambda t: (t / "notes.html").write_text("<p>mine</p>") and
     ["compare", str(t), "--out", str(t / "notes.html")], ["notes.html exists and is not an ns-lora report page", "--overwrite"]),
    ("policy bench with no jobs", lambda t: ["policy", "bench", "loss-ratio", "--jobs", "0"], ["--jobs=0 must be >= 1"]),
    ("experiment with no jobs", lambda t: ["experiment", str(ROOT / "configs" / "experiments" / "babi.yaml"), "--jobs", "0"], ["--jobs=0 must be >= 1"]),
]


def _refusal(make, tmp_path, capsys, monkeypatch, extra=()) -> tuple[int, str, list]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-bad-input")
    argv = make(tmp_path)
    if argv[0] == "run":
        argv = [*argv, "--set", f"run.out_dir={tmp_path / 'runs'}", *extra]
    before = _tree(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert _tree(tmp_path) == before, "a refused command wrote something"
    return code, err, argv


@pytest.mark.parametrize("kind,make,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_exit_2(kind, make, words, tmp_path, capsys, monkeypatch):
    code, err, _ = _refusal(make, tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert err.startswith("nslora: error: ") and "\n" not in err and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert "SECRET" not in err
    assert not (tmp_path / "runs").exists()


def _is_run(make) -> bool:
    with tempfile.TemporaryDirectory() as d:
        return make(Path(d))[0] == "run"


RUN_CASES = [c for c in CASES if _is_run(c[1])]


@pytest.mark.parametrize("kind,make,words", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_a_dry_run_refuses_what_the_run_refuses_with_the_same_line(kind, make, words, tmp_path, capsys, monkeypatch):
    run_code, run_err, _ = _refusal(make, tmp_path / "a", capsys, monkeypatch)
    dry_code, dry_err, _ = _refusal(make, tmp_path / "b", capsys, monkeypatch, extra=["--dry-run"])
    # Each side made its own case: its own temporary folder, and a closed port of its own.
    same = lambda err, t: re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", err.replace(str(t), "TMP"))
    assert run_code == 2 and (dry_code, same(dry_err, tmp_path / "b")) == (run_code, same(run_err, tmp_path / "a"))


def test_sample_longer_than_the_context_is_refused(tiny_dir, tmp_path, capsys):
    code = main(["run", "--set", f"model.name_or_path={tiny_dir}", "--set", "model.max_length=64",
                 "--set", "policy.name=lora-only", "--set", f"run.out_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "over model.max_length=64" in err and "task.long=truncate" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_task_long_truncate_cuts_stories_from_the_front_and_counts_them(tiny_dir, tmp_path, capsys):
    import json
    import sqlite3

    code = main(["run", "--set", f"model.name_or_path={tiny_dir}", "--set", "lora.top_layers=null", "--set", "model.max_length=96", "--set", "task.long=truncate",
                 "--set", "policy.name=lora-only", "--set", "train.epochs=1", "--set", "task.n_train=8", "--set", "task.n_heldout=4",
                 "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "run.name=r", "--set", "run.progress=false"])
    assert code == 0
    run = tmp_path / "runs" / "r"
    counts = json.loads((run / "metrics.json").read_text())["counts"]
    db = sqlite3.connect(run / "run.sqlite")
    questions = [q for (q,) in db.execute("SELECT question FROM samples")]
    db.close()
    assert counts["truncated"] > 0 and all(q.split("\n")[-1].startswith("Where is") for q in questions)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny import make_tiny

    d = tmp_path_factory.mktemp("tiny-bad-input")
    make_tiny(d)
    return d


if __name__ == "__main__":
    import contextlib
    import io

    print("| bad input | message |\n| --- | --- |")
    for kind, make, _ in CASES:
        with tempfile.TemporaryDirectory() as d:
            t = Path(d)
            argv = make(t)
            if argv[0] == "run":
                argv = [*argv, "--set", f"run.out_dir={t / 'runs'}"]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
            print(f"| {kind} | `{err.getvalue().strip().replace(d, '<tmp>')}` (exit {code}) |")
