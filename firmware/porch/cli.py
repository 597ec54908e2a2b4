"""Command line: porch run | check-config | passwd | tools | bench."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/porch/porch.toml")
DEFAULT_STATE_DIR = Path("/var/lib/porch")
SIM_STATE_DIR = Path(".porch-sim")

# Offline tools: subcommand -> module exposing add_arguments(parser) and run(args) -> int.
TOOLS = {
    "netsim": ("porch.media.netsim", "run the receive path offline over an impaired network"),
    "aec": ("porch.media.echo", "run the echo canceller offline on WAV files"),
}


def build_parser(with_tools: bool = True) -> argparse.ArgumentParser:
    """The parser; tool options (and their heavy imports) only when a tool runs."""
    parser = argparse.ArgumentParser(prog="porch", description="SIP door-phone firmware")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the firmware")
    run.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument("--sim", action="store_true", help="simulated GPIO, audio and reader")
    run.add_argument("--state-dir", type=Path, help=f"state folder (default {DEFAULT_STATE_DIR})")

    check = sub.add_parser("check-config", help="validate a porch.toml")
    check.add_argument("path", type=Path)

    passwd = sub.add_parser("passwd", help="set the admin password from stdin")
    passwd.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)

    tools = sub.add_parser("tools", help="offline audio tools")
    tools_sub = tools.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for name, (_module, help_text) in TOOLS.items():
        tool_parser = tools_sub.add_parser(name, help=help_text)
        tool_parser.set_defaults(tool_module=_module)
        if with_tools:
            _add_tool_arguments(name, tool_parser)

    bench = sub.add_parser("bench", help="run the benchmarks")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions")
    bench.add_argument("--out", type=Path, default=Path("bench-results.json"))
    bench.add_argument("--only", action="append", help="benchmark module (repeatable)")
    return parser


def _add_tool_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    module_name = TOOLS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        parser.set_defaults(tool_missing=True)
        return
    module.add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_tools=bool(argv) and argv[0] == "tools")
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "tool_missing", False):
        # Say plainly that the tool is not built, whatever options were given.
        print(f"porch tools {args.tool}: not available in this build yet", file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        from porch.app import run_from_cli

        return run_from_cli(args)
    if args.command == "check-config":
        from porch.config import check_config_cli

        return check_config_cli(args.path)
    if args.command == "passwd":
        from porch.provisioning.auth import passwd_cli

        return passwd_cli(args.state_dir)
    if args.command == "tools":
        return importlib.import_module(args.tool_module).run(args)
    if args.command == "bench":
        from porch.bench.runner import main as bench_main

        modules = [m if "." in m else f"porch.bench.{m}" for m in args.only or []] or None
        return bench_main(json_only=args.json, out=args.out, modules=modules, quick=args.quick)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
