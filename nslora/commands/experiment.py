"""`nslora experiment CONFIG...`: the paper's comparison — LoRA alone, prompts alone, NS-LoRA with each routing
policy, random routing at the same p — on identical data, seeds and budgets.

Per config (one task), every arm x seed is an ordinary run folder, <out>/<name>/<arm>/seed-<s>, started as its own
`nslora run` process (`--jobs N` side by side), so `inspect` / `compare` work on each, a finished run is never run
again and a stopped one resumes: rerunning the same command continues an experiment. The reward arm's policy is
trained from the lora-only runs of the same experiment first. Then results.json / results.md (nslora/report/stats.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nslora.core.options import require
from router.config import apply_overrides, from_dict, read_yaml, section_from_dict, to_dict
from nslora.core.errors import UserError
from nslora.core.atomic import write_text

# Arm name -> what it changes in the base config. "reward" gets policy.path filled in by the experiment.
ARMS: dict[str, dict[str, Any]] = {
    "lora-only": {"policy.name": "lora-only"},
    "textgrad-only": {"policy.name": "textgrad-only"},
    "loss-ratio": {"policy.name": "loss-ratio"},
    "grad-norm": {"policy.name": "grad-norm"},
    "cartography": {"policy.name": "cartography"},
    "aum": {"policy.name": "aum"},
    "surprise": {"policy.name": "surprise"},
    "presentation": {"policy.name": "presentation"},
    "reward": {"policy.name": "reward"},
    # The classifier judges the text, so it need not wait for saturation: it routes from the first epoch.
    "reward-early": {"policy.name": "reward", "policy.params.needs_saturation": False},
    "loss-ratio+system": {"policy.name": "loss-ratio", "rewriter.optimize_system": True},
    "random": {"policy.name": "random"},
    # The controlled benchmark's references (task.name=controlled): the same training samples without their
    # planted faults (the ceiling), and routing that knows which candidates are faulty.
    "lora-clean": {"policy.name": "lora-only", "task.params.fault_share": 0.0},
    "oracle": {"policy.name": "oracle"},
    # Routing from the first epoch, for the ground truth and for chance: what reward-early gains by its timing alone.
    "oracle-early": {"policy.name": "oracle", "policy.params.needs_saturation": False},
    "random-early": {"policy.name": "random", "policy.params.needs_saturation": False},
}

DEFAULT_ARMS = ("lora-only", "textgrad-only", "loss-ratio", "grad-norm", "reward", "loss-ratio+system", "random")


@dataclass
class ExperimentConfig:
    name: str | None = field(default=None, metadata={"help": "Folder name under out_dir (default: the config file's name)."})
    table: str | None = field(default=None, metadata={"help": "This config's table: its title and file names (<table>.json, <table>.md) in the experiment folder (default: results.json and results.md, titled with name). Give each config its own when several share a folder, so that no table overwrites another."})
    out_dir: str = field(default="experiments", metadata={"help": "Folder that holds experiments."})
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS), metadata={"help": f"Arms to run: {', '.join(ARMS)}, or names from extra_arms (default: {', '.join(DEFAULT_ARMS)}; lora-clean, oracle and oracle-early are for task.name=controlled)."})
    extra_arms: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "Your own arms: name -> {section.key: value} changes to the base config."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "train.seed of each repetition (LoRA init, batch order, random routing); the train / held-out split stays task.seed, so every arm and seed answers the same held-out items."})
    baseline: str = field(default="lora-only", metadata={"help": "Arm the paired differences are taken against."})
    bootstrap: int = field(default=10000, metadata={"help": "Bootstrap draws for the confidence intervals (seeds and held-out items resampled)."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    reward: dict[str, Any] = field(default_factory=lambda: {"criterion": "c1", "max_pairs": 600, "epochs": 1},
                                   metadata={"help": "Options of `nslora policy train` for the reward arm's policy, trained on this experiment's lora-only runs."})

    def __post_init__(self):
        require(len(self.seeds) >= 1, "experiment.seeds is empty; give at least one seed, e.g. [0, 1, 2]")
        require(len(set(self.seeds)) == len(self.seeds), f"experiment.seeds={self.seeds!r} repeats a seed")
        known = {**ARMS, **self.extra_arms}
        for arm in self.arms:
            require(arm in known, f"experiment.arms: unknown arm {arm!r}; built-in arms: {', '.join(ARMS)}; add your own under experiment.extra_arms")
        require(len(set(self.arms)) == len(self.arms), f"experiment.arms={self.arms!r} repeats an arm")
        if any(self.is_reward(a) for a in self.arms):
            require("lora-only" in self.arms, "experiment.arms has a reward arm but not lora-only: the reward policy is trained on the lora-only runs")
        require(self.baseline in self.arms, f"experiment.baseline={self.baseline!r} is not among experiment.arms")
        require(self.table is None or (re.fullmatch(r"[\w.-]+", self.table) is not None and self.table != "results"),
                f"experiment.table={self.table!r} must be a plain file name without a suffix (letters, digits, . _ -), not 'results'")
        require(self.bootstrap >= 100, f"experiment.bootstrap={self.bootstrap!r} must be >= 100")
        require(0.5 <= self.confidence < 1.0, f"experiment.confidence={self.confidence!r} must be in [0.5, 1)")
        for arm, changes in self.extra_arms.items():
            require(isinstance(changes, dict) and all(isinstance(k, str) and "." in k for k in changes),
                   f"experiment.extra_arms.{arm} must map section.key to a value, e.g. {{policy.name: random}}")


    def changes(self, arm: str) -> dict[str, Any]:
        return dict(ARMS.get(arm, {})) | dict(self.extra_arms.get(arm, {}))

    def is_reward(self, arm: str) -> bool:
        """An arm routed by the reward policy this experiment trains (policy.path is filled in for it)."""
        return self.changes(arm).get("policy.name") == "reward" and "policy.path" not in self.changes(arm)


def load_experiment(path: str, overrides: list[str] | None = None) -> tuple[ExperimentConfig, dict[str, Any]]:
    """(experiment settings, the base run config as a dict) from one YAML file; the run part is validated whole."""
    raw = read_yaml(path, "configs/experiments/babi.yaml")
    require(isinstance(raw, dict), f"{path}: the top level must be a mapping of sections")
    exp_overrides = [o for o in overrides or [] if o.startswith("experiment.")]
    run_overrides = [o for o in overrides or [] if not o.startswith("experiment.")]
    merged = apply_overrides(raw, exp_overrides)
    exp = section_from_dict(ExperimentConfig, "experiment", merged.pop("experiment", None), path)
    if exp.name is None:
        exp.name = Path(path).stem
    base = to_dict(from_dict(apply_overrides({k: v for k, v in raw.items() if k != "experiment"}, run_overrides), path))
    base["run"]["progress"] = False  # runs write to log files; their progress is the experiment's one line a run
    for arm in exp.arms:  # every arm's config must be valid before the first run starts
        from_dict(apply_overrides(base, _arm_sets(exp, arm, Path("policy-folder"), 0)), f"{path} arm {arm}")
    return exp, base


def _arm_sets(exp: ExperimentConfig, arm: str, policy_dir: Path, seed: int) -> list[str]:
    changes = exp.changes(arm)
    if exp.is_reward(arm):
        changes["policy.path"] = str(policy_dir)
    changes["train.seed"] = seed
    return [f"{k}={json.dumps(v)}" for k, v in changes.items()]


@dataclass
class Job:
    arm: str
    seed: int
    run_dir: Path
    log: Path
    sets: list[str]
    status: str = "pending"  # done, failed, skipped
    seconds: float = 0.0
    error: str | None = None


class Experiment:
    """One config's arms x seeds, run with up to `jobs` processes side by side."""

    def __init__(self, exp: ExperimentConfig, base: dict[str, Any], jobs: int = 1, echo=print, note: str | None = None):
        self.exp, self.base, self.jobs, self.echo, self.note = exp, base, max(1, jobs), echo, note
        self.root = Path(exp.out_dir) / exp.name
        self.config_path = self.root / "config.yaml"
        self.policy_dir = self.root / "reward-policy"
        stem = exp.table or "results"
        self.table_json, self.table_md = self.root / f"{stem}.json", self.root / f"{stem}.md"
        self._lock = threading.Lock()
        self._finished = 0
        self.jobs_list = [Job(arm, s, self.root / arm / f"seed-{s}", self.root / "logs" / f"{arm}-seed-{s}.log",
                              _arm_sets(exp, arm, self.policy_dir.resolve(), s)) for arm in self._order() for s in exp.seeds]

    def _order(self) -> list[str]:
        # lora-only first (the reward policy learns from it), reward last; the rest in the order given.
        reward = [a for a in self.exp.arms if self.exp.is_reward(a)]
        arms = [a for a in self.exp.arms if a != "lora-only" and a not in reward]
        return (["lora-only"] if "lora-only" in self.exp.arms else []) + arms + reward

    # ------------------------------------------------------------------------------------------------ running

    def run(self) -> dict[str, Any]:
        from router.run import _check_disk

        cfg = from_dict(self.base)
        cfg.run.out_dir = str(self.root)
        _check_disk(cfg)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        text = yaml.safe_dump(self.base, sort_keys=False)
        if self.config_path.exists() and self.config_path.read_text(encoding="utf-8") != text:
            raise UserError(f"{self.root} holds an experiment with another config; choose another experiment.name or out_dir, or delete the folder")
        write_text(self.config_path, text)
        write_text(self.root / "experiment.yaml", yaml.safe_dump(dataclasses.asdict(self.exp), sort_keys=False))
        total = len(self.jobs_list)
        self.echo(f"experiment {self.exp.name}: {len(self.exp.arms)} arms x {len(self.exp.seeds)} seeds = {total} runs in {self.root} ({self.jobs} at a time)")
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures: dict[tuple[str, int], Future] = {}
            reward_policy: Future | None = None
            for job in self.jobs_list:
                if self.exp.is_reward(job.arm) and reward_policy is None:
                    deps = [futures[("lora-only", s)] for s in self.exp.seeds]
                    reward_policy = pool.submit(self._train_policy, deps, threads)
                wait = [reward_policy] if self.exp.is_reward(job.arm) else []
                futures[(job.arm, job.seed)] = pool.submit(self._run_job, job, wait, threads)
            for f in futures.values():
                f.result()
        results = self.results()
        self.echo(f"results: {self.table_md}")
        return results

    def _env(self, threads: int) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        return env

    def _run_job(self, job: Job, wait: list[Future], threads: int) -> None:
        for f in wait:
            if not f.result():
                job.status, job.error = "skipped", "its reward policy was not trained (see logs/reward-policy.log)"
                self._report(job)
                return
        if (job.run_dir / "metrics.json").is_file():
            job.status = "done"
            self._report(job, note="finished earlier")
            return
        cli = [sys.executable, "-m", "nslora.commands.cli"]
        if (job.run_dir / "checkpoints" / "graph.sqlite").is_file():
            cmd = cli + ["resume", str(job.run_dir)]
        else:
            cmd = cli + ["run", str(self.config_path), "--set", f"run.out_dir={job.run_dir.parent}",
                         "--set", f"run.name={job.run_dir.name}", "--set", "run.overwrite=true",
                         "--set", f"run.shared_dir={self.root}"]
            for s in job.sets:
                cmd += ["--set", s]
        started = time.perf_counter()
        with open(job.log, "a", encoding="utf-8") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(threads))
        job.seconds = time.perf_counter() - started
        if code == 0 and (job.run_dir / "metrics.json").is_file():
            job.status = "done"
        else:
            job.status, job.error = "failed", f"exit {code}; see {job.log}"
        self._report(job)

    def _train_policy(self, deps: list[Future], threads: int) -> bool:
        for f in deps:
            f.result()
        if (self.policy_dir / "policy.json").is_file():
            return True
        runs = [j.run_dir for j in self.jobs_list if j.arm == "lora-only" and (j.run_dir / "run.sqlite").is_file()
                and (j.run_dir / "metrics.json").is_file()]
        log = self.root / "logs" / "reward-policy.log"
        if not runs:
            self.echo("reward policy: no finished lora-only run with its store to learn from (a packed run keeps no signals)")
            return False
        cmd = [sys.executable, "-m", "nslora.commands.cli", "policy", "train", *map(str, runs), "--out", str(self.policy_dir)]
        for key, value in self.exp.reward.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        with open(log, "a", encoding="utf-8") as out:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=self._env(threads))
        ok = code == 0 and (self.policy_dir / "policy.json").is_file()
        self.echo(f"reward policy: {'trained on ' + str(len(runs)) + ' lora-only runs' if ok else f'training failed (exit {code}); see {log}'}")
        return ok

    def _report(self, job: Job, note: str | None = None) -> None:
        with self._lock:
            self._finished += 1
            head = f"[{self._finished}/{len(self.jobs_list)}] {self.exp.name} {job.arm} seed {job.seed}"
            if job.status == "done":
                m = json.loads((job.run_dir / "metrics.json").read_text())
                acc = m["heldout_accuracy"]
                self.echo(f"{head}: held-out {acc['before']:.3f} -> {acc['final']:.3f}"
                          + (f" ({note})" if note else f" ({job.seconds:.0f} s)"))
            else:
                self.echo(f"{head}: {job.status}: {job.error}")

    def pack(self, dest: Path) -> int:
        """Copy what the table needs into dest/<name>: the configs, the reward policy, and of each finished run its
        config, metrics.json and the scored held-out items (no replies, signals or adapter: a few KB). Copied into
        another machine's out_dir, the same command there skips the packed runs and runs the rest, so an
        experiment larger than one machine's session can be split."""
        import shutil

        from nslora.report.data import PACKED, load_run, pack_tables

        out = dest / self.exp.name
        require(not out.exists(), f"--pack: {out} exists; choose another folder")
        done = 0
        for job in self.jobs_list:
            if not (job.run_dir / "metrics.json").is_file():
                continue
            to = out / job.arm / f"seed-{job.seed}"
            for name in ("config.yaml", "metrics.json"):
                write_text(to / name, (job.run_dir / name).read_text(encoding="utf-8"))
            write_text(to / PACKED, json.dumps(pack_tables(load_run(job.run_dir))))
            done += 1
        for name in ("config.yaml", "experiment.yaml", self.table_json.name, self.table_md.name):
            if (self.root / name).is_file():
                write_text(out / name, (self.root / name).read_text(encoding="utf-8"))
        if self.policy_dir.is_dir():
            shutil.copytree(self.policy_dir, out / self.policy_dir.name)
        self.echo(f"packed {done} of {len(self.jobs_list)} finished runs of {self.exp.name} into {out}")
        return done

    # ------------------------------------------------------------------------------------------------ results

    def results(self) -> dict[str, Any]:
        from nslora.report.stats import arm_table, markdown_table

        runs = {(j.arm, j.seed): j.run_dir for j in self.jobs_list}
        table = arm_table(self.exp.table or self.exp.name, self.exp.arms, self.exp.seeds, runs, baseline=self.exp.baseline,
                          draws=self.exp.bootstrap, confidence=self.exp.confidence)
        if self.note:
            table["note"] = self.note
        classifier = self._classifier_detection() if table.get("detection") else None
        if classifier:
            table["detection"]["classifier"] = classifier
        write_text(self.table_json, json.dumps(table, indent=2))
        write_text(self.table_md, markdown_table([table]))
        return table


    def _classifier_detection(self) -> dict[str, Any] | None:
        """The trained reward policy's AUC against the planted faults, on training samples it never saw: the
        same task drawn with the next task.seed (its stories and faults are new). Kept beside the policy."""
        from policies.reward.evaluate import ground_truth_auc
        from policies.reward.pairs import sample_text
        from nslora.tasks import load_task

        cache = self.policy_dir / "ground-truth-auc.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        if not (self.policy_dir / "policy.json").is_file():
            return None
        cfg = from_dict(self.base)
        cfg.task.seed += 1
        _, train, _ = load_task(cfg.task)
        out = ground_truth_auc(self.policy_dir, [(sample_text(s.system, s.question), s.meta.get("fault")) for s in train])
        out["task_seed"] = cfg.task.seed
        write_text(cache, json.dumps(out, indent=2))
        return out


def run_experiments(paths: list[str], overrides: list[str], jobs: int, out: str | None = None, echo=print,
                    pack: str | None = None) -> list[dict[str, Any]]:
    """Every config's experiment in turn; with several configs also a combined table (<out>/results.md). With
    `pack`, nothing runs: each experiment's finished runs are packed into that folder (Experiment.pack)."""
    loaded = []
    for path in paths:  # all configs are checked before anything runs
        exp, base = load_experiment(path, overrides)
        if out is not None:
            exp.out_dir = out
        loaded.append((exp, base))
    # Configs may share a folder (experiment.name), and so their common runs, but each needs a table of its own.
    files = [f"{e.name}/{e.table or 'results'}" for e, _ in loaded]
    twice = sorted({f for f in files if files.count(f) > 1})
    require(not twice, f"two configs write the same table {twice}; set experiment.table (or experiment.name) in each")
    if pack is not None:
        for exp, base in loaded:
            Experiment(exp, base, echo=echo).pack(Path(pack))
        return []
    tables = [Experiment(exp, base, jobs=jobs, echo=echo).run() for exp, base in loaded]
    failed = [f"{t['name']} {r['arm']} seed {s}" for t in tables for r in t["arms"] for s in r["missing_seeds"]]
    if len(tables) > 1:
        from nslora.report.stats import markdown_table

        root = Path(loaded[0][0].out_dir)
        write_text(root / "results.json", json.dumps(tables, indent=2))
        write_text(root / "results.md", markdown_table(tables))
        echo(f"combined results: {root / 'results.md'}")
    if failed:
        raise UserError(f"{len(failed)} run(s) did not finish ({', '.join(failed[:6])}{', ...' if len(failed) > 6 else ''}); "
                        "see their logs, then rerun the same command to finish them")
    return tables
