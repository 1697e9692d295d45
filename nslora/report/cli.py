"""`nslora inspect` and `nslora compare`, for nslora/commands/cli.py to wire in:

    from nslora.report.cli import add_commands, run_command     # in _parser(), after `sub = parser.add_subparsers(...)`
    add_commands(sub)                                     # in main(): if args.command in ("inspect", "compare"):
                                                          #                return run_command(args)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("inspect", "compare")


def add_commands(subparsers) -> None:
    """Add the `inspect` and `compare` subcommands to an argparse subparsers object."""
    ins = subparsers.add_parser(
        "inspect", help="summarise a run in the terminal and write a self-contained HTML report",
        description="Print per-epoch loss, held-out accuracy, saturation, routes by path, rewrites by verdict and "
                    "reason, LLM calls and cost; write RUN_DIR/report.html (plots inline; opens with no network).")
    ins.add_argument("run_dir", metavar="RUN_DIR")
    ins.add_argument("--sample", metavar="ID", help="add one sample's whole trajectory (losses, C1, C2, decisions, rewrites)")
    ins.add_argument("--out", metavar="FILE", help="where to write the HTML report (default RUN_DIR/report.html)")
    ins.add_argument("--no-html", action="store_true", help="only print the terminal summary")
    ins.add_argument("--overwrite", action="store_true", help="replace --out even if it is not an ns-lora report page")
    cmp = subparsers.add_parser(
        "compare", help="compare runs: held-out accuracy, training time, LLM calls and cost",
        description="One table of several runs (e.g. lora-only vs NS-LoRA vs textgrad-only) and an HTML page with "
                    "held-out accuracy per epoch, training time, LLM calls and cost.")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--out", metavar="FILE", default="compare.html", help="the HTML page (default ./compare.html)")
    cmp.add_argument("--no-html", action="store_true", help="only print the table")
    cmp.add_argument("--overwrite", action="store_true", help="replace --out even if it is not an ns-lora report page")


def run_command(args: argparse.Namespace, console=None) -> int:
    """Run `inspect` or `compare` from parsed args; returns the exit code (2 with a one-line error on bad input)."""
    from nslora.report.data import ReportError

    try:
        if args.command == "inspect":
            return _inspect(args, console)
        if args.command == "compare":
            return _compare(args, console)
    except ReportError as e:
        print(f"nslora: error: {e}", file=sys.stderr)
        return 2
    raise ValueError(f"nslora.report.cli.run_command got command {args.command!r}; it handles {COMMANDS}")


def _inspect(args, console) -> int:
    from nslora.report import data as D
    from nslora.report import terminal

    if not args.no_html:  # before anything is read
        from nslora.report.datamap import check_png
        from nslora.report.html import check_out

        page = Path(args.out) if args.out else Path(args.run_dir) / "report.html"
        check_out(page, getattr(args, "overwrite", False))
        check_png(page, getattr(args, "overwrite", False))
    run = D.load_run(args.run_dir)
    if args.sample:
        D.trajectory(run, args.sample)  # a bad id fails before anything is written
    out = None
    if not args.no_html:
        from nslora.report.datamap import write_png
        from nslora.report.html import render_run, write_atomic

        write_png(run, page, getattr(args, "overwrite", False))
        out = write_atomic(page, render_run(run, args.sample), overwrite=getattr(args, "overwrite", False))
    console = terminal._console(console)
    terminal.print_inspect(run, console, report_path=out)
    if args.sample:
        console.print(terminal.sample_table(run, args.sample))
    return 0


def _compare(args, console) -> int:
    from nslora.report import data as D
    from nslora.report import terminal

    if not args.no_html:
        from nslora.report.html import check_out

        check_out(args.out, getattr(args, "overwrite", False))
    runs = [D.load_run(d) for d in args.run_dirs]
    console = terminal._console(console)
    console.print(terminal.compare_table([D.summary(r) for r in runs]))
    if not args.no_html:
        from nslora.report.html import render_compare, write_atomic

        out = write_atomic(args.out, render_compare(runs), overwrite=getattr(args, "overwrite", False))
        console.print(f"HTML page: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m nslora.report.cli inspect RUN`) until nslora/commands/cli.py wires the commands in."""
    parser = argparse.ArgumentParser(prog="nslora")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
