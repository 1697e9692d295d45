"""The plug-in points, as `nslora run --help` and the README show them: each is a config key that takes a
built-in name or your own `package.module:Name`, resolved by nslora/core/plugins.py and checked by its conformance check
before the run starts. tests/test_plugins.py runs every example below through its check."""

from __future__ import annotations

# (config key, what it chooses and its built-ins, the conformance check, a short example of your own)
PLUGINS: list[tuple[str, str, str, str]] = [
    ("policy.name", "the routing rule: lora-only, textgrad-only, loss-ratio, grad-norm, random, reward", "policies.check_policy", """\
from policies import Decision, Policy

class LongFirst(Policy):                       # policy.name=my_rules:LongFirst
    routes_symbolic = True                      # flags declare what it does, never its name
    def __init__(self, p=0.1, min_chars=40):    # only stores settings; p comes from saturation.p
        self.p, self.min_chars = p, min_chars
    def calibrate(self, views):                 # every candidate of a round; learned attributes end in _
        self.cut_ = sorted(len(v.question) for v in views)[-max(1, round(self.p * len(views)))]
        return self
    def decide(self, view):
        go = len(view.question) >= max(self.cut_, self.min_chars)
        return Decision("symbolic" if go else "numerical", 1.0, f"{len(view.question)} chars", "rule")
"""),
    ("rewriter.strategy", "how a prompt is rewritten: textgrad, direct, rules", "rewriter.strategies.check_strategy", """\
from rewriter.strategies import Strategy
from rewriter.strategies.base import Meter, error, judge

class Terse(Strategy):                         # rewriter.strategy=my_rewrites:Terse
    name, calls_model = "terse", True           # calls_model=False: no engine, no student answers
    def rewrite(self, sample, ctx):             # ctx: engine, system, question, gold, student_answer, guard, task
        meter = Meter(ctx.engine)
        try:
            reply = ctx.engine.generate("Restate briefly, keeping every fact:\\n" + ctx.question)
        except Exception as e:                  # a failed call is a result (the sample stays numerical)
            return error(meter, e)
        return judge(ctx, meter, reply.strip(), None)   # the meaning guard: accepted or rejected
"""),
    ("rewriter.engine", "who answers rewrite calls: openai, local", "rewriter.engine.check_engine (one short call)", """\
import json, os, urllib.request

class Gateway:                                 # rewriter.engine=my_llm:Gateway
    kind = "custom"                             # rewriter.engine_params={url: "http://10.0.0.5/generate"}
    def __init__(self, url):
        self.url, self.name = url, "gateway@" + url       # the name is logged: never a secret in it
    def generate(self, prompt, system=None, **params):
        body = json.dumps({"prompt": prompt, "system": system, "max_tokens": params.get("max_tokens", 256)})
        req = urllib.request.Request(self.url, body.encode(), {"Authorization": os.environ.get("GATEWAY_TOKEN", "")})
        with urllib.request.urlopen(req, timeout=60) as reply:   # secrets come from the environment only
            return json.loads(reply.read())["text"]
"""),
    ("task.name", "the data: babi, gsm8k, clinifact", "nslora.tasks.check_task (on the loaded samples)", """\
import json
from nslora.tasks import Sample, Task

class Tickets(Task):                           # task.name=my_data:Tickets  task.path=tickets.jsonl
    name, default_system = "tickets", "Answer with the team name only."
    def load(self, cfg):                        # cfg: the task section (path, seed, n_train, params, ...)
        rows = [json.loads(line) for line in open(cfg.path)]
        return [Sample(str(i), self.default_system, r["text"], r["team"], r["team"]) for i, r in enumerate(rows)]
    def extract(self, text):                    # the answer inside a generated reply
        return text.strip().split("\\n")[0]
    # score(text, sample) -> bool: exact match of the normalised extracted answer, unless you override it
"""),
    ("task.scorer", "how a held-out reply is scored: the task's own (default), exact, contains", "nslora.tasks.scoring.check_scorer", """\
def within_one(reply, sample):                 # task.scorer=my_scoring:within_one
    try:
        return abs(float(reply.strip().split()[-1]) - float(sample.answer)) <= 1
    except (ValueError, IndexError):
        return False
"""),
]


def render() -> str:
    lines = ["plug-in points (a built-in name, or your own as package.module:Name on PYTHONPATH; checked before the run):", ""]
    for key, what, check, example in PLUGINS:
        lines.append(f"  {key}: {what}  (check: {check})")
        lines += [f"      {line}" if line else "" for line in example.rstrip().splitlines()]
        lines.append("")
    return "\n".join(lines)
