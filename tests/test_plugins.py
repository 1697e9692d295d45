"""Every contract is open: a user's strategy, engine, task and scorer, each in a module outside the package and
named in config, run through a whole routed run and pass their conformance checks; broken ones are refused at
start with one line naming the rule they break, before anything is written. The --help examples pass too."""

import json
import sys
import textwrap

import pytest

from fake_openai import FakeOpenAI
from nslora.commands.cli import main
from test_e2e import KEY, rows, tiny_dir, write_config  # noqa: F401  (fixture)

STRATEGY = '''
from rewriter.strategies import Strategy
from rewriter.strategies.base import Meter, error, judge

class Numbered(Strategy):
    name = "numbered"
    def __init__(self, prefix="Read each line:"):
        self.prefix = prefix
    def rewrite(self, sample, ctx):
        meter = Meter(ctx.engine)
        try:
            ctx.engine.generate("Restate: " + ctx.question)  # one call a sample, metered and cached
        except Exception as e:
            return error(meter, e)
        return judge(ctx, meter, self.prefix + "\\n" + ctx.question, None)
'''

ENGINE = '''
import re

class Echo:
    """Restates the question the direct strategy sends, with a fixed opening; counts its calls."""
    kind = "custom"
    def __init__(self, opening="Question:"):
        self.opening, self.name = opening, "echo"
        self.calls = self.prompt_tokens = self.completion_tokens = 0
    def generate(self, prompt, system=None, **params):
        self.calls += 1
        self.prompt_tokens += len(prompt) // 4
        found = re.search(r"<QUESTION>\\n(.*)\\n</QUESTION>", prompt, re.S)
        reply = f"{self.opening} {found.group(1)}" if found else "OK"
        self.completion_tokens += len(reply) // 4
        return reply
'''

TASK = '''
import random
from nslora.tasks import Sample, Task

class Parity(Task):
    name, default_system = "parity", "Answer even or odd."
    def __init__(self, low=1):
        self.low = low
    def load(self, cfg):
        rng = random.Random(cfg.seed)
        nums = rng.sample(range(self.low, 1000), cfg.n_train + cfg.n_heldout)
        return [Sample(f"n{n}", self.default_system, f"Is {n} even or odd?", "even" if n % 2 == 0 else "odd",
                       "even" if n % 2 == 0 else "odd") for n in nums]
    def extract(self, text):
        words = text.strip().split()
        return words[0].lower() if words else ""

def anything(reply, sample):
    return True
'''


def _module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


def _run(tmp_path, tiny_dir, base_url, **sections):
    cfg = write_config(tmp_path, tiny_dir, base_url, **sections)
    assert main(["run", str(cfg)]) == 0
    return tmp_path / "runs" / "r"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("NSLORA_TEST_KEY", KEY)


def test_a_users_strategy_runs_the_symbolic_branch(tiny_dir, tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "user_strategy", STRATEGY)
    with FakeOpenAI() as srv:
        run = _run(tmp_path, tiny_dir, srv.base_url, rewriter={"strategy": "user_strategy:Numbered", "guard_similarity": False,
                                                               "strategy_params": {"prefix": "Read every line:"}})
        sent = len(srv.chat_requests())
    rewrites = rows(run, "SELECT * FROM rewrites ORDER BY epoch, sample_id")
    assert [r["epoch"] for r in rewrites] == [2, 2, 2, 3, 3, 3]
    assert all(r["strategy"] == "user_strategy:Numbered" and r["verdict"] == "accepted" for r in rewrites)
    assert all(r["new_question"] == "Read every line:\n" + r["original_question"] for r in rewrites)
    assert sum(r["calls"] for r in rewrites) == sent and sum(r["calls"] + r["cache_hits"] for r in rewrites) == 6 and sent >= 3
    rewritten = {r["sample_id"] for r in rewrites if r["epoch"] == 2}
    trained = rows(run, "SELECT sample_id FROM signals WHERE epoch=3 AND prompt_version > 0")
    assert {r["sample_id"] for r in trained} == rewritten


def test_a_users_engine_answers_the_rewrites(tiny_dir, tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "user_engine", ENGINE)
    run = _run(tmp_path, tiny_dir, None, rewriter={"engine": "user_engine:Echo", "strategy": "direct", "guard_similarity": False,
                                                   "base_url": None, "engine_params": {"opening": "Please answer:"},
                                                   "concurrency": 1})  # no per-thread usage hook: exact counts need one thread
    rewrites = rows(run, "SELECT * FROM rewrites ORDER BY epoch, sample_id")
    assert len(rewrites) == 6 and all(r["engine"] == "echo" and r["verdict"] == "accepted" for r in rewrites)
    assert all(r["new_question"] == "Please answer: " + r["original_question"] for r in rewrites)
    assert all(r["calls"] == 1 and r["cost"] == 0 for r in rewrites)  # a "custom" engine is not priced
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["llm"]["engine"] == "echo" and metrics["llm"]["calls"] == 6


def test_a_users_task_and_scorer_run_end_to_end(tiny_dir, tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "user_task", TASK)
    run = _run(tmp_path, tiny_dir, None, task={"name": "user_task:Parity", "params": {"low": 10}, "scorer": "user_task:anything"},
               rewriter={"strategy": "rules", "engine": "local"})
    samples = rows(run, "SELECT * FROM samples")
    assert len(samples) == 18 and all(s["question"].startswith("Is ") and s["answer"] in ("even", "odd") for s in samples)
    assert all(int(s["id"][1:]) >= 10 for s in samples)  # task.params reached the class
    evals = rows(run, "SELECT * FROM evals")
    assert evals and all(e["correct"] == 1 for e in evals)  # the user's scorer, not the task's exact match
    rewrites = rows(run, "SELECT * FROM rewrites")
    assert rewrites and all(r["strategy"] == "rules" for r in rewrites)


BROKEN = [
    ("strategy returns a dict", "bad_s", "from rewriter.strategies import Strategy\nclass S(Strategy):\n    calls_model = False\n"
     "    def rewrite(self, sample, ctx):\n        return {'new_question': 'x'}\n", {"rewriter": {"strategy": "bad_s:S"}},
     "rewriter.strategy='bad_s:S' breaks its contract: S.rewrite must return a RewriteResult, got dict"),
    ("strategy without rewrite", "bad_s2", "class S:\n    calls_model = True\n", {"rewriter": {"strategy": "bad_s2:S"}},
     "rewriter.strategy='bad_s2:S' is not a class with a rewrite(sample, ctx) method"),
    ("engine returns a dict", "bad_e", "class E:\n    name = 'e'\n    def generate(self, prompt, system=None, **params):\n"
     "        return {'text': 'ok'}\n", {"rewriter": {"engine": "bad_e:E", "strategy": "direct"}},
     "rewriter.engine='bad_e:E' breaks its contract: E.generate must return a str, got dict"),
    ("engine without generate", "bad_e2", "class E:\n    name = 'e'\n", {"rewriter": {"engine": "bad_e2:E", "strategy": "direct"}},
     "rewriter.engine='bad_e2:E' breaks its contract: E needs a method generate(prompt, system=None, **params) -> str"),
    ("task loads dicts", "bad_t", "from nslora.tasks import Task\nclass T(Task):\n    def load(self, cfg):\n"
     "        return [{'id': str(i)} for i in range(40)]\n    def extract(self, text):\n        return text\n",
     {"task": {"name": "bad_t:T"}}, "task.name='bad_t:T' breaks its contract: T.load(cfg) must return nslora.tasks.Sample objects, got dict"),
    ("task without extract", "bad_t2", "from nslora.tasks import Sample\nclass T:\n    default_system = 'x'\n    def load(self, cfg):\n"
     "        return [Sample(str(i), 'x', 'q?', 'a', 'a') for i in range(40)]\n    def score(self, text, sample):\n        return True\n",
     {"task": {"name": "bad_t2:T"}}, "task.name='bad_t2:T' breaks its contract: T needs a method extract() (subclass nslora.tasks.Task)"),
    ("scorer returns a string", "bad_c", "def score(reply, sample):\n    return 'yes'\n", {"task": {"scorer": "bad_c:score"}},
     "task.scorer='bad_c:score' breaks its contract: score(reply, sample) must return a bool, got str"),
]


@pytest.mark.parametrize("kind,module,source,sections,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_plugin_is_refused_at_start_in_one_line(kind, module, source, sections, message, tiny_dir, tmp_path,
                                                         monkeypatch, capsys):
    _module(tmp_path, monkeypatch, module, source)
    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("rewriter", {}).setdefault("guard_similarity", False)
    with FakeOpenAI() as srv:
        cfg = write_config(tmp_path, tiny_dir, srv.base_url, **sections)
        assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"nslora: error: {message}", err
    assert not (tmp_path / "runs").exists()


def test_the_help_examples_pass_their_checks(tmp_path):
    from policies import check_policy
    from rewriter.engine import check_engine
    from rewriter.strategies import check_strategy
    from nslora.commands.plugins_help import PLUGINS
    from nslora.tasks import check_task
    from nslora.tasks.config import TaskConfig
    from nslora.tasks.scoring import check_scorer

    found = {}
    for key, _, _, example in PLUGINS:
        namespace: dict = {}
        exec(compile(example, f"<help example {key}>", "exec"), namespace)
        found[key] = namespace
    check_policy(found["policy.name"]["LongFirst"]())
    check_strategy(found["rewriter.strategy"]["Terse"]())
    check_engine(found["rewriter.engine"]["Gateway"]("http://127.0.0.1:9/generate"), call=False)
    (tmp_path / "tickets.jsonl").write_text("".join(json.dumps({"text": f"Printer {i} is down", "team": "it"}) + "\n" for i in range(4)))
    task = found["task.name"]["Tickets"]()
    samples = task.load(TaskConfig(path=str(tmp_path / "tickets.jsonl")))
    check_task(task, samples)
    check_scorer(found["task.scorer"]["within_one"], samples)


def test_every_built_in_strategy_and_task_passes_its_own_conformance_check(tmp_path):
    """What a user's class must pass, the built-ins pass too (docs/development.md, adding a built-in)."""
    import csv

    from rewriter.strategies import STRATEGIES, check_strategy
    from nslora.tasks import TASKS, check_task
    from nslora.tasks.config import TaskConfig

    for name, cls in STRATEGIES.items():
        check_strategy(cls())
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps(
        {"question": f"Tom has {i} apples and buys 2 more. How many apples does he have?",
         "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}) + "\n" for i in range(6)))
    with open(tmp_path / "clinifact.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["claim", "article_abstract", "label"])
        for i in range(6):
            w.writerow([f"Drug {i} lowers blood pressure.", f"In a trial of drug {i}, blood pressure fell.", i % 3])
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"prompt": f"Team for ticket {i}?", "completion": "it"}) + "\n"
                                                for i in range(6)))
    paths = {"gsm8k": "gsm8k.jsonl", "clinifact": "clinifact.csv", "sft": "sft.jsonl"}
    for name, cls in TASKS.items():
        task = cls()
        path = str(tmp_path / paths[name]) if name in paths else None
        samples = task.load(TaskConfig(name=name, path=path, n_train=4, n_heldout=2))
        assert samples, name
        check_task(task, samples)
