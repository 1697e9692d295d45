"""The whole graph on a tiny model against a fake OpenAI-compatible server on 127.0.0.1."""

import json
import sqlite3
import textwrap

import pytest
import torch
import yaml

from fake_openai import PREFIX, FakeOpenAI
from nslora.commands.cli import main
from tiny import make_tiny

torch.set_num_threads(1)
KEY = "sk-test-SECRET-0123456789"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    make_tiny(d)
    return d


def write_config(path, tiny_dir, base_url, **sections):
    cfg = {
        "model": {"name_or_path": str(tiny_dir), "max_length": 1024},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "task": {"name": "babi", "n_train": 12, "n_heldout": 6, "seed": 3},
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "max_new_tokens": 4, "eval_batch_size": 6},
        # k this large forces saturation from min_epoch on: the tiny model is wrong on everything.
        "saturation": {"k": 1.0e9, "p": 0.25, "min_epoch": 2},
        "policy": {"name": "loss-ratio"},
        "rewriter": {"engine": "openai", "strategy": "textgrad", "base_url": base_url, "model": "fake-model",
                     "api_key_env": "NSLORA_TEST_KEY", "max_retries": 0, "timeout": 5},
        "run": {"out_dir": str(path / "runs"), "name": "r", "progress": False},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    p = path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def run_with_user_policy(tmp_path, tiny_dir, monkeypatch, module: str, source: str, cls: str):
    """A routed run with a user's policy written as `module.py` (its class `cls`) against the fake server; the run
    folder."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, policy={"name": f"{module}:{cls}"})
        assert main(["run", str(cfg)]) == 0
    return tmp_path / "runs" / "r"


def rows(run_dir, sql):
    db = sqlite3.connect(run_dir / "run.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    finally:
        db.close()


@pytest.fixture(scope="module")
def routed_run(tiny_dir, tmp_path_factory):
    import os

    os.environ["NSLORA_TEST_KEY"] = KEY
    tmp = tmp_path_factory.mktemp("e2e")
    with FakeOpenAI() as srv:
        cfg = write_config(tmp, tiny_dir, srv.base_url)
        assert main(["run", str(cfg)]) == 0
        requests = srv.chat_requests()
    return tmp / "runs" / "r", requests


def test_every_node_is_timed_per_epoch(routed_run, capsys):
    run_dir, _ = routed_run
    timings = rows(run_dir, "SELECT * FROM timings")
    by = {(t["epoch"], t["node"]): t["seconds"] for t in timings}
    assert {n for _, n in by} == {"evaluate", "measure_inputs", "train_epoch", "monitor", "decide", "rewrite", "checkpoint", "export"}
    assert {e for e, n in by if n == "train_epoch"} == {1, 2, 3} and {e for e, n in by if n == "rewrite"} == {2, 3}
    assert {e for e, n in by if n == "measure_inputs"} == {0, 1, 2}  # every node call is timed, even one with nothing new
    epochs = {e["epoch"]: e for e in rows(run_dir, "SELECT * FROM epochs WHERE epoch > 0")}
    for e, row in epochs.items():  # the node's time holds the training loop's, not the trainer checkpoint's
        assert by[(e, "train_epoch")] >= row["seconds"] * 0.95
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["node_seconds"]) >= {"train_epoch", "evaluate", "rewrite", "checkpoint"}
    assert sum(metrics["node_seconds"].values()) <= metrics["wall_seconds"]
    assert main(["inspect", str(run_dir)]) == 0
    assert "Time by node" in capsys.readouterr().out


def test_rewrites_went_over_http_and_were_trained_on(routed_run):
    run_dir, requests = routed_run
    rewrites = rows(run_dir, "SELECT * FROM rewrites ORDER BY epoch, sample_id")
    assert rewrites, "no sample was routed to the symbolic branch"
    assert all(r["verdict"] == "accepted" for r in rewrites)
    assert sum(r["calls"] for r in rewrites) == len(requests) > 0
    # 12 samples, all wrong, p = 0.25 → 3 symbolic per round, rounds at epochs 2 and 3.
    assert [r["epoch"] for r in rewrites] == [2, 2, 2, 3, 3, 3]
    epoch2 = {r["sample_id"]: r for r in rewrites if r["epoch"] == 2}
    for sid, r in epoch2.items():
        assert r["new_question"] == PREFIX + r["original_question"]
    signals3 = {r["sample_id"]: r for r in rows(run_dir, "SELECT * FROM signals WHERE epoch=3")}
    assert {s for s, r in signals3.items() if r["prompt_version"] > 0} == set(epoch2)

    import datasets

    aug = datasets.load_from_disk(str(run_dir / "augmented"))
    by_id = {r["id"]: r for r in aug}
    final = {}
    for r in rewrites:
        final[r["sample_id"]] = r["new_question"]
    for sid, question in final.items():
        assert by_id[sid]["question"] == question and by_id[sid]["rewritten"]
        assert json.loads(by_id[sid]["provenance"])
    assert sum(r["rewritten"] for r in aug) == len(final)
    assert len(aug) == 12


def test_every_decision_has_a_reason_and_policy(routed_run):
    run_dir, _ = routed_run
    decisions = rows(run_dir, "SELECT * FROM decisions")
    assert len(decisions) == 24  # every misclassified sample in two rounds
    assert all(d["reason"].strip() and d["policy"] == "loss-ratio" and d["path"] == "signal" for d in decisions)
    assert sum(d["route"] == "symbolic" for d in decisions) == 6


def test_heldout_is_never_trained_on_nor_rewritten(routed_run):
    run_dir, _ = routed_run
    heldout = {r["id"] for r in rows(run_dir, "SELECT id FROM samples WHERE split='heldout'")}
    train = {r["id"] for r in rows(run_dir, "SELECT id FROM samples WHERE split='train'")}
    assert heldout and not heldout & train
    for table in ("signals", "decisions", "rewrites"):
        assert not {r["sample_id"] for r in rows(run_dir, f"SELECT sample_id FROM {table}")} & heldout
    assert {r["sample_id"] for r in rows(run_dir, "SELECT sample_id FROM evals")} == heldout


def test_run_directory_holds_every_artifact_and_no_secret(routed_run):
    run_dir, _ = routed_run
    for name in ("config.yaml", "run.sqlite", "adapter/adapter_config.json", "augmented/dataset_info.json",
                 "augmented.jsonl", "metrics.json"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["heldout_accuracy"]["per_epoch"]) == {"0", "1", "2", "3"}
    assert metrics["counts"]["rewrites_accepted"] == 6 and metrics["llm"]["calls"] > 0
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_saved_adapter_reloads_and_reproduces_the_final_outputs(routed_run, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.train import Item, collate, encode, prompt_text

    run_dir, _ = routed_run
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        samples = rows(run_dir, "SELECT * FROM samples WHERE split='heldout' ORDER BY id")
        enc = collate([encode(tok, Item(s["id"], s["system"], s["question"], s["target"])) for s in samples], tok.pad_token_id)
        base_logits = base(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        logits_again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), run_dir / "adapter")(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert not torch.allclose(logits, base_logits), "the adapter did not change the model"
    torch.testing.assert_close(logits, logits_again)
    # The reloaded adapter gives the replies the run recorded for its last epoch.
    stored = {r["sample_id"]: r["reply"] for r in rows(run_dir, "SELECT * FROM evals WHERE epoch=3")}
    tok.padding_side = "left"
    texts = [prompt_text(tok, s["system"], s["question"]) for s in samples]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    replies = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert replies == [stored[s["id"]] for s in samples]


def test_same_seed_gives_same_decisions_and_metrics(routed_run, tiny_dir, tmp_path):
    run_dir, _ = routed_run
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url)
        assert main(["run", str(cfg)]) == 0
    again = tmp_path / "runs" / "r"
    for sql in ("SELECT * FROM decisions ORDER BY epoch, sample_id", "SELECT * FROM rewrites ORDER BY epoch, sample_id",
                "SELECT * FROM signals ORDER BY epoch, sample_id", "SELECT * FROM evals ORDER BY epoch, sample_id"):
        # The engine's name holds the fake server's port, which differs between the two runs.
        drop = lambda rs: [{k: v for k, v in r.items() if k not in ("engine", "seconds")} for r in rs]
        assert drop(rows(again, sql)) == drop(rows(run_dir, sql))
    # The code stamp holds the date it was written.
    strip = lambda m: {k: v for k, v in m.items() if k not in ("wall_seconds", "node_seconds", "train", "llm", "code")}
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, again))
    assert strip(m1) == strip(m2)
    timed = ("engine", "rounds", "concurrency_speedup", "serial_server")  # times, and what depends on them
    assert {k: v for k, v in m1["llm"].items() if k not in timed} == {k: v for k, v in m2["llm"].items() if k not in timed}
    assert [r["concurrency"] for r in m1["llm"]["rounds"]] == [r["concurrency"] for r in m2["llm"]["rounds"]]
    assert [{k: v for k, v in e.items() if "seconds" not in k} for e in m1["train"]] == [
        {k: v for k, v in e.items() if "seconds" not in k} for e in m2["train"]]


def test_chunked_decide_branches_give_the_decisions_of_one_branch_per_candidate(routed_run, tiny_dir, tmp_path, monkeypatch):
    import router.graph

    run_dir, _ = routed_run
    monkeypatch.setattr(router.graph, "CHUNK", 1)  # the first design: one Send per candidate
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url)
        assert main(["run", str(cfg)]) == 0
    sql = "SELECT * FROM decisions ORDER BY epoch, sample_id"
    assert rows(tmp_path / "runs" / "r", sql) == rows(run_dir, sql) and len(rows(run_dir, sql)) >= 6


def test_custom_policy_from_outside_the_package_routes_samples(tiny_dir, tmp_path, monkeypatch):
    (tmp_path / "team_rules.py").write_text(textwrap.dedent('''
        from policies import Decision, Policy

        class FirstHalf(Policy):
            """Rewrite the samples whose id sorts in the first half; everything else stays numerical."""
            def calibrate(self, views):
                ids = sorted(v.id for v in views)
                self.cut_ = ids[len(ids) // 2]
                return self

            def decide(self, view):
                first = view.id < self.cut_
                return Decision("symbolic" if first else "numerical", 1.0, f"id before {self.cut_}: {first}", "team-rule")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, policy={"name": "team_rules:FirstHalf"},
                           train={"epochs": 2}, rewriter={"strategy": "direct"})
        assert main(["run", str(cfg)]) == 0
    run_dir = tmp_path / "runs" / "r"
    decisions = rows(run_dir, "SELECT * FROM decisions")
    assert {d["path"] for d in decisions} == {"team-rule"} and {d["policy"] for d in decisions} == {"team_rules:FirstHalf"}
    assert sum(d["route"] == "symbolic" for d in decisions) == 6
    assert len(rows(run_dir, "SELECT * FROM rewrites WHERE verdict='accepted'")) == 6


def test_endpoint_dying_mid_run_keeps_samples_numerical(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, rewriter={"strategy": "direct"})
        seen = []

        def die_after_two(messages):
            seen.append(1)
            if len(seen) >= 2:
                srv.fault = 503
            return PREFIX + "Where is Mary?"

        srv.reply = die_after_two
        assert main(["run", str(cfg)]) == 0
    run_dir = tmp_path / "runs" / "r"
    verdicts = [r["verdict"] for r in rows(run_dir, "SELECT verdict FROM rewrites ORDER BY epoch, sample_id")]
    assert len(verdicts) == 6 and verdicts.count("error") >= 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["counts"]["rewrites_error"] == verdicts.count("error")
    assert f"warning: {verdicts.count('error')} rewrites failed" in capsys.readouterr().out
    signals3 = rows(run_dir, "SELECT * FROM signals WHERE epoch=3")
    errored2 = {r["sample_id"] for r in rows(run_dir, "SELECT * FROM rewrites WHERE epoch=2 AND verdict='error'")}
    assert all(r["prompt_version"] == 0 for r in signals3 if r["sample_id"] in errored2)


def test_textgrad_only_optimises_the_shared_system_prompt_without_lora_steps(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, policy={"name": "textgrad-only"}, train={"epochs": 2},
                           saturation={"k": 0.0})
        assert main(["run", str(cfg)]) == 0
        assert srv.chat_requests()
    run_dir = tmp_path / "runs" / "r"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    original = rows(run_dir, "SELECT system FROM samples LIMIT 1")[0]["system"]
    # The fake server's update prepends its marker once per optimisation round (epochs 1 and 2: no saturation needed).
    assert metrics["shared_system"] == PREFIX + PREFIX + original
    assert [r["sample_id"] for r in rows(run_dir, "SELECT sample_id FROM rewrites")] == ["*system*", "*system*"]
    aug = [json.loads(line) for line in (run_dir / "augmented.jsonl").read_text().splitlines()]
    assert {r["system"] for r in aug} == {metrics["shared_system"]}
    # No LoRA step: peft initialises B at zero, so an untouched adapter leaves every B factor zero.
    from safetensors.torch import load_file

    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert all(torch.count_nonzero(w) == 0 for k, w in weights.items() if "lora_B" in k)


def test_tensorboard_scalars_are_written_when_enabled(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, run={"tensorboard": True}, train={"epochs": 2})
        assert main(["run", str(cfg)]) == 0
    acc = EventAccumulator(str(tmp_path / "runs" / "r" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert tags and any("acc" in t for t in tags)
    assert max(len(acc.Scalars(t)) for t in tags) == 3  # epochs 0, 1, 2


def test_heldout_is_scored_strict_and_flexible_and_the_headline_is_chosen(routed_run, tiny_dir, tmp_path, capsys):
    run_dir, _ = routed_run
    evals = rows(run_dir, "SELECT * FROM evals")
    assert evals and all(r["strict"] in (0, 1) and r["flexible"] in (0, 1) and r["correct"] == r["flexible"] for r in evals)
    acc = json.loads((run_dir / "metrics.json").read_text())["heldout_accuracy"]
    assert acc["scoring"] == "flexible" and acc["final"] == acc["flexible"]["final"]
    final = max(r["epoch"] for r in evals)
    strict = [r["strict"] for r in evals if r["epoch"] == final]
    assert acc["strict"]["final"] == sum(strict) / len(strict)

    cfg = write_config(tmp_path, tiny_dir, None, policy={"name": "lora-only"}, train={"epochs": 1},
                       task={"scoring": "strict"})
    capsys.readouterr()
    assert main(["run", str(cfg)]) == 0
    assert "strict scoring); flexible:" in capsys.readouterr().out
    evals = rows(tmp_path / "runs" / "r", "SELECT * FROM evals")
    assert all(r["correct"] == r["strict"] for r in evals)


def test_a_run_store_from_before_both_scorings_gains_their_columns(tmp_path):
    from router.store import Store

    db = sqlite3.connect(tmp_path / "run.sqlite")
    db.execute("CREATE TABLE evals (epoch INTEGER NOT NULL, sample_id TEXT NOT NULL, reply TEXT NOT NULL, "
               "prediction TEXT NOT NULL, correct INTEGER NOT NULL, PRIMARY KEY (epoch, sample_id))")
    db.execute("INSERT INTO evals VALUES (0, 'a', 'garden', 'garden', 1)")
    db.commit()
    db.close()
    store = Store(tmp_path / "run.sqlite")
    store.add_evals([{"epoch": 1, "sample_id": "a", "reply": "x", "prediction": "x", "correct": 0, "strict": 0, "flexible": 0}])
    assert store.accuracy_by_epoch("correct") == {0: 1.0, 1: 0.0} and store.accuracy_by_epoch("strict") == {1: 0.0}
    store.close()


def test_export_merged_loads_without_peft_and_answers_as_the_adapter(routed_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.train import prompt_text

    run_dir, _ = routed_run
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_logit_difference"] <= 1e-4 and "model.safetensors" in report["files"]
    assert not out.with_name("merged.partial").exists()
    assert not (out / "adapter_config.json").exists()  # a plain model: no peft needed to load it
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert tok.chat_template
    samples = rows(run_dir, "SELECT * FROM samples WHERE split='heldout' ORDER BY id")
    stored = {r["sample_id"]: r["reply"] for r in rows(run_dir, "SELECT * FROM evals WHERE epoch=3")}
    tok.padding_side = "left"
    batch = tok([prompt_text(tok, s["system"], s["question"]) for s in samples], return_tensors="pt", padding=True,
                add_special_tokens=False)
    with torch.no_grad():
        gen = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    replies = tok.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert replies == [stored[s["id"]] for s in samples]  # the merged model answers as the run's adapter did
    # An existing folder is not overwritten without --overwrite; a folder that is not a run is refused.
    assert main(["export", str(run_dir), "--merged", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--merged", str(tmp_path / "m2")]) == 2
    assert "no adapter/" in capsys.readouterr().err and not (tmp_path / "m2").exists()


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_export_gguf_reads_back_as_the_adapters_model(routed_run, tmp_path, capsys, qtype):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = routed_run
    out = tmp_path / "model.gguf"
    assert main(["export", str(run_dir), "--gguf", str(out), "--gguf-type", qtype]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gguf_same_next_token"] == 1.0 and report["gguf_relative_logit_difference"] <= {"f16": 0.01, "q8_0": 0.05}[qtype]
    reader = gguf.GGUFReader(str(out))
    fields = {k: v for k, v in reader.fields.items()}
    assert "tokenizer.chat_template" in fields and "tokenizer.ggml.merges" in fields
    kinds = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert kinds == ({"F16"} if qtype == "f16" else {"Q8_0"})
    # Read back by a GGUF loader, it tokenizes as the run did and answers the held-out prompts as the adapter did.
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    from adapters.train import prompt_text

    samples = rows(run_dir, "SELECT * FROM samples WHERE split='heldout' ORDER BY id")
    stored = {r["sample_id"]: r["reply"] for r in rows(run_dir, "SELECT * FROM evals WHERE epoch=3")}
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    for s in samples:
        enc = tok(prompt_text(tok, s["system"], s["question"]), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True) == stored[s["id"]]
    assert main(["export", str(run_dir), "--gguf", str(out)]) == 2 and "already exists" in capsys.readouterr().err


def test_export_trl_writes_prompt_completion_rows_that_trl_reads(routed_run, tmp_path, capsys):
    from datasets import load_dataset
    from trl.data_utils import is_conversational

    run_dir, _ = routed_run
    assert main(["export", str(run_dir), "--trl", str(tmp_path / "aug.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    ds = load_dataset("json", data_files=str(tmp_path / "aug.jsonl"), split="train")
    assert len(ds) == report["rows"] == 12 and report["rewritten"] >= 1
    assert is_conversational(ds[0]) and ds[0]["completion"][0]["role"] == "assistant"
    augmented = {json.loads(line)["id"]: json.loads(line) for line in (run_dir / "augmented.jsonl").read_text().splitlines()}
    for row in ds:
        assert row["prompt"][-1]["content"] == augmented[row["id"]]["question"]  # the rewritten question where accepted
        assert row["completion"][0]["content"] == augmented[row["id"]]["target"]
    assert main(["export", str(run_dir)]) == 2 and "--merged DIR, --gguf FILE and / or --trl FILE" in capsys.readouterr().err
