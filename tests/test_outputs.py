"""Every output is what it says: evaluation scores exactly the rows given, no user file is overwritten unless asked,
files are written whole (synced), and a saved reward policy runs with the settings it was saved with."""

import json
import os

import pytest

from nslora.core import atomic
from nslora.core.errors import UserError
from nslora.commands.cli import main
from test_e2e import rows, tiny_dir, write_config  # noqa: F401  (fixture)
from test_sft import chat_rows, pc_rows, write_jsonl


@pytest.fixture(scope="module")
def sft_run(tiny_dir, tmp_path_factory):
    """A lora-only sft run whose held-out set comes from its own file (task.params.heldout_path)."""
    tmp = tmp_path_factory.mktemp("sft-heldout")
    data = write_jsonl(tmp / "train.jsonl", chat_rows(12))
    heldout = write_jsonl(tmp / "heldout.jsonl", chat_rows(6))
    cfg = write_config(tmp, tiny_dir, None, policy={"name": "lora-only"}, train={"epochs": 1},
                       task={"name": "sft", "path": str(data), "n_train": 12, "n_heldout": 6,
                             "params": {"answer": "label", "heldout_path": str(heldout)}})
    assert main(["run", str(cfg)]) == 0
    return tmp / "runs" / "r", tmp


def _summary(folder):
    return json.loads((folder / "summary.json").read_text()), (folder / "replies.jsonl").read_text().splitlines()


def test_eval_of_a_run_with_a_heldout_file_scores_only_the_given_rows(sft_run, capsys):
    run, tmp = sft_run
    test = write_jsonl(tmp / "test.jsonl", chat_rows(5))
    assert main(["eval", str(run), "--data", str(test), "--max-new-tokens", "2"]) == 0
    summary, replies = _summary(run / "evals" / "test-sft")
    # The run's held-out file (6 rows) used to be appended to --data's 5.
    assert summary["samples"] == len(replies) == 5
    # Its own held-out file as --data: each item once, not twice.
    assert main(["eval", str(run), "--data", str(tmp / "heldout.jsonl"), "--max-new-tokens", "2"]) == 0
    summary, replies = _summary(run / "evals" / "heldout-sft")
    assert summary["samples"] == len(replies) == 6 and len({json.loads(r)["id"] for r in replies}) == 6


def test_eval_folders_are_unique_per_split_task_and_limit_and_never_overwritten(sft_run, capsys):
    run, tmp = sft_run
    test = write_jsonl(tmp / "t2.jsonl", chat_rows(4))
    base = ["eval", str(run), "--data", str(test), "--max-new-tokens", "2"]
    assert main(base) == 0 and main(base + ["--limit", "2"]) == 0
    assert _summary(run / "evals" / "t2-sft")[0]["samples"] == 4
    assert _summary(run / "evals" / "t2-sft-first2")[0]["samples"] == 2
    before = (run / "evals" / "t2-sft" / "replies.jsonl").read_bytes()
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert "t2-sft already exists" in err and "--overwrite" in err and "\n" not in err
    assert (run / "evals" / "t2-sft" / "replies.jsonl").read_bytes() == before
    assert main(base + ["--overwrite"]) == 0


def test_eval_refuses_a_dataset_dict_without_a_split(tiny_dir, tmp_path, capsys):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(pc_rows(4)),
                          "test": datasets.Dataset.from_list(pc_rows(3, offset=100))}).save_to_disk(str(folder))
    assert main(["eval", str(tiny_dir), "--data", str(folder), "--task", "sft", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a DatasetDict with splits train, test; pick one with --split" in err and "\n" not in err
    assert not (tmp_path / "e").exists()


def test_truncation_tokenises_a_logarithmic_number_of_times():
    from router.prompts import fit
    from tiny import make_tokenizer

    real, calls = make_tokenizer(), []

    class Counting:
        """The tiny tokenizer, counting how often a story prompt is tokenised."""

        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, text, **kw):
            calls.extend(["story"] if "Mary" in text else [])
            return real(text, **kw)

    story = "\n".join(f"Mary went to room {i}." for i in range(2000)) + "\nWhere is Mary?"
    size = lambda q: len(real(q, add_special_tokens=False)["input_ids"])
    limit = size("\n".join(story.split("\n")[-40:])) + 8  # room for about 40 lines and the prompt's frame
    question, cut = fit(Counting(), "", story, limit=limit)
    lines = question.split("\n")
    assert cut and lines[-1] == "Where is Mary?" and 30 <= len(lines) <= 41
    assert story.endswith(question)  # whole lines dropped from the front only
    assert len(calls) <= 2 + 12, len(calls)  # bisection over 2,001 lines; the old loop tokenised ~1,960 times
    assert fit(Counting(), "", "Where is Mary?", limit=limit) == ("Where is Mary?", False)


def test_export_trl_refuses_an_existing_file_before_anything_is_written(sft_run, capsys):
    run, tmp = sft_run
    mine = tmp / "mine.jsonl"
    mine.write_text("my own data\n")
    merged = tmp / "merged-out"
    assert main(["export", str(run), "--trl", str(mine), "--merged", str(merged)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--trl: {mine} already exists" in err and "--overwrite" in err
    assert mine.read_text() == "my own data\n" and not merged.exists()
    assert main(["export", str(run), "--trl", str(mine), "--overwrite"]) == 0
    assert len(mine.read_text().splitlines()) == 12


def test_policy_train_refuses_an_existing_folder(sft_run, tmp_path, capsys):
    run, _ = sft_run
    out = tmp_path / "policy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["policy", "train", str(run), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert main(["policy", "train", str(run), "--out", str(tmp_path / "p2"), "--fallback", "oracle"]) == 2
    assert "reward.fallback='oracle' cannot decide from the signals" in capsys.readouterr().err
    assert main(["policy", "train", str(run), "--out", str(tmp_path / "p2"), "--fallback", "no-such"]) == 2
    assert "reward.fallback='no-such' is not a policy" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()


def test_the_atomic_writer_syncs_file_and_folder_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    target = tmp_path / "sub" / "out.json"
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert synced[-2].endswith(".tmp") and synced[-1] == str(target.parent)  # the file before the rename, then its folder
    with pytest.raises(RuntimeError):
        with atomic.open_atomic(target) as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1} and sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
    with atomic.folder_atomic(tmp_path / "folder") as d:
        (d / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic.folder_atomic(tmp_path / "folder") as d:
            (d / "x").write_text("2")
            raise RuntimeError
    assert (tmp_path / "folder" / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["folder", "sub"]
    with pytest.raises(UserError, match="already exists; choose another path or pass --overwrite"):
        atomic.refuse_existing(target, "--out")
    written = tmp_path / "sub" / ".lib.tmp"
    written.write_text("from a library")
    synced.clear()
    atomic.put_file(written, tmp_path / "sub" / "lib.bin")
    assert synced == [str(written), str(target.parent)] and (tmp_path / "sub" / "lib.bin").read_text() == "from a library"


def test_the_run_store_and_checkpoints_commit_with_full_sync(tmp_path):
    from router.store import Store

    store = Store(tmp_path / "run.sqlite")
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_a_report_page_replaces_an_earlier_page_but_not_a_users_file(tmp_path):
    from nslora.report.html import _page, write_atomic

    page = tmp_path / "compare.html"
    write_atomic(page, _page("one", "", "<p>1</p>"))
    write_atomic(page, _page("two", "", "<p>2</p>"))  # a rerun replaces its own page without --overwrite
    assert "<p>2</p>" in page.read_text()
    mine = tmp_path / "notes.html"
    mine.write_text("<p>mine</p>")
    with pytest.raises(UserError, match="notes.html exists and is not an ns-lora report page"):
        write_atomic(mine, _page("x", "", ""))
    assert mine.read_text() == "<p>mine</p>"
    write_atomic(mine, _page("x", "", "<p>x</p>"), overwrite=True)
    assert "<p>x</p>" in mine.read_text()
