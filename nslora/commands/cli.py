"""`nslora` — routed LoRA fine-tuning from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from nslora.core.errors import UserError


def _config_help() -> str:
    from router.config import Config

    lines = ["config keys (YAML sections, or --set section.key=value):"]
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            lines.append(f"  {section.name}.{f.name} = {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _experiment_help() -> str:
    from nslora.commands.experiment import ExperimentConfig

    lines = []
    for f in dataclasses.fields(ExperimentConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  experiment.{f.name} = {default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nslora", description="Neurosymbolic LoRA: route each training sample to a LoRA step or a prompt rewrite.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    from nslora.report.cli import add_commands

    add_commands(sub)
    _add_experiment(sub)
    _add_train(sub)
    res = sub.add_parser("resume", help="continue a stopped run from its last checkpoint",
                         description="Continue RUN_DIR from its last checkpoint: finished rewrites are not requested again.")
    res.add_argument("run_dir", metavar="RUN_DIR")
    exp = sub.add_parser("export", help="the run's model with its LoRA merged in, as a transformers folder to serve",
                         description="Merge RUN_DIR's adapter into its base model and save model, tokenizer and chat template to "
                                     "DIR (loadable by AutoModelForCausalLM.from_pretrained, vLLM, TGI); checked against the adapter's "
                                     "logits before the folder is put in place.")
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument("--merged", metavar="DIR", help="folder to write the merged model to")
    exp.add_argument("--gguf", metavar="FILE", help="GGUF file of the merged model for llama.cpp / Ollama (llama-architecture models)")
    exp.add_argument("--gguf-type", default="f16", choices=["f16", "q8_0"], help="GGUF weight type (default: f16)")
    exp.add_argument("--trl", metavar="FILE", help="JSONL of the augmented training data in TRL's prompt-completion format")
    exp.add_argument("--overwrite", action="store_true", help="replace DIR / FILE if it exists (refused otherwise, before anything is written)")
    ev = sub.add_parser("eval", help="score a run, an adapter or a base model on a test file (strict and flexible accuracy)",
                        description="Answer every sample of FILE with TARGET (a run folder, an adapter folder or a base model) by "
                                    "batched greedy generation; print strict and flexible accuracy with 95%% bootstrap intervals and "
                                    "write replies.jsonl and summary.json (default folder: RUN/evals/<file name>-<split>-<task>-first<N>, else evals/...; "
                                    "an existing folder is refused unless --overwrite).")
    ev.add_argument("target", metavar="TARGET")
    ev.add_argument("--data", required=True, metavar="FILE", help="test data in the task's own format (for sft: JSONL / CSV / Parquet / a saved dataset)")
    ev.add_argument("--task", default=None, help="task name (default: the run's); needed for an adapter or a base model")
    ev.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a task.params entry, e.g. --param answer=label (repeatable)")
    ev.add_argument("--out", default=None, help="folder for replies.jsonl and summary.json")
    ev.add_argument("--split", default=None, help="one split of a DatasetDict folder or hub data set, e.g. test (sft, gsm8k's hub copy)")
    ev.add_argument("--limit", type=int, default=None, help="only the first N samples of the file")
    ev.add_argument("--overwrite", action="store_true", help="replace the evaluation folder if it exists")
    ev.add_argument("--max-new-tokens", type=int, default=32)
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--max-length", type=int, default=512, help="prompt tokens allowed (default 512)")
    ev.add_argument("--long", choices=["refuse", "truncate"], default="refuse",
                    help="a longer prompt: refuse (default), or drop story lines from the front, keeping the question")
    _add_policy(sub)
    return parser


def _add_run(sub) -> None:
    from nslora.commands.plugins_help import render

    run = sub.add_parser("run", help="run routed fine-tuning (no CONFIG: the embedded default, bAbI task 1 on SmolLM2-135M)",
                         description="Run routed fine-tuning and write a run folder (config.yaml, run.sqlite, adapter/, augmented/, metrics.json).",
                         epilog=render() + "\n" + _config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", nargs="?", help="YAML config file, or a shipped config by name (babi, gsm8k, clinifact, babi-openai); omitted: the embedded default")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config value, e.g. --set train.epochs=3 (repeatable)")
    run.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    run.add_argument("--dry-run", action="store_true", help="validate config and data, estimate LLM calls and cost, write nothing")


def _add_experiment(sub) -> None:
    ex = sub.add_parser("experiment", help="run the paper's arms (lora-only, textgrad-only, NS-LoRA per policy, random) over seeds and tabulate",
                        description="Run every arm x seed of each CONFIG as its own run folder (<out>/<name>/<arm>/seed-<s>), then write "
                                    "results.json and results.md, or experiment.table's files (mean ± std, paired differences with bootstrap intervals). Rerunning "
                                    "the same command skips finished runs and resumes stopped ones.",
                        epilog="experiment keys (the YAML's experiment: section, or --set experiment.key=value):\n" + _experiment_help(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML run config with an experiment: section, or a shipped one by name (experiments/babi, experiments/controlled, ...)")
    ex.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a value of every run (or experiment.key), e.g. --set experiment.seeds=[0,1]")
    ex.add_argument("--jobs", type=int, default=1, help="runs side by side (each gets cores / jobs threads)")
    ex.add_argument("--out", default=None, help="folder for the experiments (default: experiment.out_dir)")
    ex.add_argument("--pack", default=None, metavar="DIR",
                    help="run nothing: copy what the table reads of each finished run (a few KB: no replies, signals or adapter), "
                         "the configs and the reward policy to DIR/<name>; copied into another machine's --out, the same "
                         "command runs only the rest")


def _add_train(sub) -> None:
    tr_ = sub.add_parser("train", help="fine-tune a model on a run's augmented prompts against the original prompts (transfer)",
                         description="Fine-tune MODEL with plain LoRA on the prompts a run ended with (RUN_DIR/augmented) and, with the "
                                     "same samples, steps and budget, on the task's original prompts; both answer the run's held-out set. "
                                     "Writes the runs and results.md under --out.")
    tr_.add_argument("--data", required=True, help="RUN_DIR, RUN_DIR/augmented or RUN_DIR/augmented.jsonl")
    tr_.add_argument("--model", required=True, help="the model to fine-tune: hub id, local folder, .gguf file, smollm2-135m-instruct or gemma3-270m")
    tr_.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each repetition")
    tr_.add_argument("--out", default="experiments", help="folder for the transfer runs")
    tr_.add_argument("--name", default=None, help="experiment folder name (default: transfer-<run>-to-<model>)")
    tr_.add_argument("--jobs", type=int, default=1, help="runs side by side")
    tr_.add_argument("--pack", default=None, metavar="DIR",
                     help="run nothing: copy what the table reads of each finished run to DIR/<name>, as experiment --pack does")
    tr_.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a value of both arms' runs, e.g. --set train.epochs=3")


def _add_policy(sub) -> None:
    pol = sub.add_parser("policy", help="train, evaluate and show a learned (reward) routing policy")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    tr = psub.add_parser("train", help="build preference pairs from finished runs and train a reward classifier with TRL",
                         description="Build preference pairs from RUN_DIRs (train samples only) and train, calibrate and save a reward policy.")
    tr.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    tr.add_argument("--out", required=True, help="folder for the saved policy (a new one, or an existing one with --overwrite)")
    tr.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tr.add_argument("--criterion", default="c1",
                    help="what makes a sample 'needs symbolic': least progress (c1), smallest gradient norm (c2), an accepted "
                         "rewrite that helped (rewrite), or any recorded signal's name, high first (-NAME: low first), e.g. "
                         "-confidence, q_top, presentation (policies/reward/pairs.py lists them)")
    tr.add_argument("--max-pairs", type=int, default=2000)
    tr.add_argument("--high-share", type=float, default=0.5, help="share of still-wrong samples counted as high-criterion")
    from policies.reward.train import RewardPolicyConfig

    for f in dataclasses.fields(RewardPolicyConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            tr.add_argument(flag, action="store_true", help=f.metadata.get("help"))
        else:
            tr.add_argument(flag, type=str, default=None, help=f.metadata.get("help"))
    ev = psub.add_parser("eval", help="pairwise accuracy, ROC-AUC, ECE, agreement with the signal policy, deferral share")
    ev.add_argument("policy_dir")
    ev.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ev.add_argument("--criterion", default=None, help="default: the one the policy was trained on")
    be = psub.add_parser("bench", help="score a routing policy on a small controlled benchmark where the right route is known",
                         description="Run lora-only, lora-clean and each POLICY on the controlled task (planted presentation faults; the "
                                     "reference runs are reused by later benches of the same settings) and print routing precision / "
                                     "recall / F1 per round, the held-out difference to lora-only and the recovered headroom.")
    be.add_argument("policy", metavar="POLICY", nargs="+", help="a built-in policy name, a saved reward-policy folder, or "
                    "package.module:ClassName; several are run on the same reference runs and compared side by side")
    be.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change the bench's run config, e.g. --set task.n_train=96 (repeatable)")
    be.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each repetition (default: 0)")
    be.add_argument("--jobs", type=int, default=2, help="runs side by side (default: 2)")
    be.add_argument("--out", default="experiments", help="folder for the bench's runs (default: experiments)")
    sh = psub.add_parser("show", help="summarise a saved policy folder and write its report (calibration curve, score histogram)")
    sh.add_argument("policy_dir")
    sh.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="runs whose pairs to score in the report (default: the policy's JSON only)")
    sh.add_argument("--out", default=None, help="report file (default: POLICY_DIR/report.html)")


def _policy_command(args) -> int:
    import json

    from router.run import _quiet_libraries

    _quiet_libraries()

    if args.policy_command == "show":
        from policies.reward.evaluate import describe_policy

        from nslora.report.policy import write_policy_report

        print(json.dumps(describe_policy(args.policy_dir), indent=2))
        print(f"report: {write_policy_report(args.policy_dir, run_dirs=args.run_dirs or None, out=args.out)}")
        return 0
    if args.policy_command == "bench":
        from nslora.commands.policy_bench import policy_bench

        if args.jobs < 1:
            raise UserError(f"--jobs={args.jobs} must be >= 1")
        policy_bench(args.policy, args.overrides, jobs=args.jobs, out=args.out, seeds=args.seeds)
        return 0
    if args.policy_command == "eval":
        from policies.reward.evaluate import evaluate_policy

        print(json.dumps(evaluate_policy(args.policy_dir, args.run_dirs, criterion=args.criterion), indent=2))
        return 0
    from policies.reward.pairs import build_pairs
    from policies.reward.train import RewardPolicyConfig, train_reward_policy

    kwargs = {}
    for f in dataclasses.fields(RewardPolicyConfig):
        value = getattr(args, f.name)
        if value is None or value is False:
            continue
        if f.type in (bool, "bool"):
            kwargs[f.name] = True
            continue
        caster = {"int": int, "float": float}.get(str(f.type), str)
        try:
            kwargs[f.name] = caster(value)
        except ValueError:
            raise UserError(f"--{f.name.replace('_', '-')}={value!r} must be a {str(f.type)}") from None
    cfg = RewardPolicyConfig(**kwargs)
    if not args.overwrite:
        from nslora.core.atomic import refuse_existing

        refuse_existing(args.out, "--out")
    pairs = build_pairs(args.run_dirs, args.criterion, max_pairs=args.max_pairs, high_share=args.high_share)
    metrics = train_reward_policy(pairs, cfg, args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def _run_command(args) -> int:
    import yaml

    from router import config as config_mod

    cfg = config_mod.load(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False), end="")
        return 0
    from router.run import dry_run, run
    from nslora.commands.summary import summary

    if args.dry_run:
        print(dry_run(cfg))
        return 0
    metrics = run(cfg)
    if metrics:  # only the main process of a multi-process run reports
        print(summary(metrics))
    return 0


def _experiment_command(args) -> int:
    from nslora.commands.experiment import run_experiments
    from router.run import _quiet_libraries

    _quiet_libraries()
    if args.jobs < 1:
        raise UserError(f"--jobs={args.jobs} must be >= 1")
    run_experiments(args.configs, args.overrides, jobs=args.jobs, out=args.out, pack=args.pack)
    return 0


def _train_command(args) -> int:
    from nslora.report.stats import markdown_table
    from nslora.commands.transfer import transfer

    if args.jobs < 1:
        raise UserError(f"--jobs={args.jobs} must be >= 1")
    table = transfer(args.data, args.model, args.seeds, args.out, args.name, args.overrides, jobs=args.jobs, pack=args.pack)
    if table is not None:
        print(markdown_table([table]))
    return 0


def _report_command(args) -> int:
    from nslora.report.cli import run_command

    return run_command(args)


def _resume_command(args) -> int:
    from router.run import resume
    from nslora.commands.summary import summary

    metrics = resume(args.run_dir)
    if metrics:
        print(summary(metrics))
    return 0


def _eval_command(args) -> int:
    import yaml

    from nslora.commands.evaluate import evaluate, table
    from router.run import _quiet_libraries

    params = {}
    for item in args.param:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--param {item!r}: write it as key=value, e.g. answer=label")
        params[key] = yaml.safe_load(value)
    _quiet_libraries()
    summary = evaluate(args.target, args.data, task=args.task, params=params, out=args.out, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, max_length=args.max_length, long=args.long, progress=sys.stderr.isatty(),
                       limit=args.limit, split=args.split, overwrite=args.overwrite)
    print(table(summary))
    return 0


def _export_command(args) -> int:
    import json

    from nslora.commands.model_export import export_model
    from router.run import _quiet_libraries

    from nslora.commands.model_export import export_trl

    from nslora.core.atomic import refuse_existing

    if not (args.merged or args.gguf or args.trl):
        raise UserError("nslora export needs --merged DIR, --gguf FILE and / or --trl FILE")
    if not args.overwrite:  # every target checked before any is written
        for flag, target in (("--merged", args.merged), ("--gguf", args.gguf), ("--trl", args.trl)):
            if target:
                refuse_existing(target, flag)
    _quiet_libraries()
    report = {}
    if args.trl:
        report.update(export_trl(args.run_dir, args.trl, overwrite=args.overwrite))
    if args.merged or args.gguf:
        report.update(export_model(args.run_dir, args.merged, args.gguf, args.gguf_type, overwrite=args.overwrite))
    print(json.dumps(report, indent=2))
    return 0


COMMANDS = {"eval": _eval_command, "export": _export_command, "run": _run_command, "experiment": _experiment_command, "train": _train_command, "inspect": _report_command,
            "compare": _report_command, "resume": _resume_command, "policy": _policy_command}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"nslora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nslora: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from adapters.train import NonFiniteLoss
        from nslora.core.interrupt import Interrupted

        if isinstance(e, Interrupted):
            print(f"nslora: interrupted: {e}", file=sys.stderr)
            return 130
        if isinstance(e, NonFiniteLoss):
            print(f"nslora: error: {e}", file=sys.stderr)
            return 1
        raise


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def entry() -> None:
    try:
        code = main()
    finally:
        if "torch" in sys.modules:
            _shutdown()
    sys.exit(code)


if __name__ == "__main__":
    entry()
