"""`nslora` — routed LoRA fine-tuning from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from router.errors import UserError


def _config_help() -> str:
    from router.config import Config

    lines = ["config keys (YAML sections, or --set section.key=value):"]
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            lines.append(f"  {section.name}.{f.name} = {f.default if f.default is not dataclasses.MISSING else f.default_factory()!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nslora", description="Neurosymbolic LoRA: route each training sample to a LoRA step or a prompt rewrite.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run routed fine-tuning (no CONFIG: the embedded default, bAbI task 1 on SmolLM2-135M)",
                         description="Run routed fine-tuning and write a run folder (config.yaml, run.sqlite, adapter/, augmented/, metrics.json).",
                         epilog=_config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", nargs="?", help="YAML config (see configs/); omitted: the embedded default")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one config value, e.g. --set train.epochs=3 (repeatable)")
    run.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        if args.command == "run":
            import yaml

            from router import config as config_mod

            cfg = config_mod.load(args.config, args.overrides)
            if args.print_config:
                print(yaml.safe_dump(config_mod.to_dict(cfg), sort_keys=False), end="")
                return 0
            from router.run import run, summary

            metrics = run(cfg)
            if metrics:  # only the main process of a multi-process run reports
                print(summary(metrics))
            return 0
    except UserError as e:
        print(f"nslora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nslora: interrupted", file=sys.stderr)
        return 130
    return 1


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
