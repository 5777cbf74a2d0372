"""`dynamics` command line: one module per command, each parse → library call → print/write.

Errors from the library (`DynamicsError`) become one line on stderr and exit code 2. Command modules
import their heavy dependencies inside `run` so `dynamics --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from dynamics.cli import demo, diff, extract_lora, lab, optimizer, overlap, paper_metrics, probe, report, series
from dynamics.cli.common import DynamicsParser, check_outputs
from dynamics.errors import DynamicsError

COMMANDS = (diff, overlap, extract_lora, paper_metrics, optimizer, report, series, probe, lab, demo)


class _Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked (a source checkout on
    PYTHONPATH has no package metadata and must still run every other command)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            found = version("dynamics")
        except PackageNotFoundError:
            found = "(not installed: running from a source checkout)"
        print(f"dynamics {found}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = DynamicsParser(prog="dynamics", description="Parameter-update dynamics inspector.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)  # an unwritable output fails here, before any checkpoint is read
        args.run(args)
    except DynamicsError as e:
        print(f"dynamics: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
