"""Options shared by several commands, declared once: `--device`, `-q`, the matrix-pass options."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.devices import DEVICE_CHOICES
from dynamics.documents import check_output
from dynamics.errors import DynamicsError
from dynamics.geometry_options import GeometryOptions

Subparsers = argparse._SubParsersAction


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to the help of every option that takes a value and has a default, unless
    its help already says "default"; on/off flags are off by default and say what "on" does."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        has_default = action.default not in (None, argparse.SUPPRESS)
        if action.option_strings and action.nargs != 0 and has_default and "default" not in text:
            text += " (default: %(default)s)"
        return text


class DynamicsParser(argparse.ArgumentParser):
    """The parser of `dynamics` and of every subcommand (add_subparsers reuses the parser's class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def device_and_quiet() -> argparse.ArgumentParser:
    """Parent parser: `--device auto|cpu|cuda` and `-q/--quiet` (no progress bars)."""
    p = DynamicsParser(add_help=False)
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="device to run on: auto = cuda when available, else cpu")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def add_rank_k(p: argparse.ArgumentParser, what: str = "--geometry") -> None:
    p.add_argument("--rank-k", type=int, default=None,
                   help=f"top-k singular subspaces for {what} (default min(64, max(1, min(m, n) // 8)) per "
                        "m × n matrix; a larger k is clamped to min(m, n), with a caution)")


def add_geometry(p: argparse.ArgumentParser) -> None:
    """`--geometry`, `--rank-k K`, `--geometry-exact`; read back with `geometry_options(args)`."""
    p.add_argument("--geometry", action="store_true",
                   help="also measure update geometry of 2-D weights (principal angles, energy, rank)")
    add_rank_k(p)
    p.add_argument("--geometry-exact", action="store_true", help="exact SVD instead of randomized (small models)")


def add_weights_choice(p: argparse.ArgumentParser) -> None:
    """`--component NAME` and `--masters`: which weights a training framework's folder gives."""
    p.add_argument("--component", help="verl component of a global_step_N folder (default actor), e.g. critic")
    p.add_argument("--masters", action="store_true",
                   help="read fp32 master weights where a checkpoint also holds them (DeepSpeed ZeRO, Megatron)")


def geometry_options(args: argparse.Namespace, always: bool = False) -> GeometryOptions | None:
    """The frozen matrix-pass options the flags ask for; None when `--geometry` is off (and not `always`)."""
    if args.rank_k is not None and args.rank_k < 1:
        raise DynamicsError("--rank-k must be at least 1")
    if not (always or getattr(args, "geometry", False)):
        return None
    return GeometryOptions(k=args.rank_k, exact=getattr(args, "geometry_exact", False))


def wrote(path: object) -> None:
    print(f"wrote {path}")


def add_output(p: argparse.ArgumentParser, *flags: str, folder: bool = False, **kwargs) -> None:
    """An output option (a Path; `folder`: a folder to write into) that `check_outputs` verifies before
    the command reads anything."""
    action = p.add_argument(*flags, type=Path, **kwargs)
    p.set_defaults(outputs=(*(p.get_default("outputs") or ()), (action.dest, folder)))


def check_outputs(args: argparse.Namespace) -> None:
    """OutputError (one line, exit 2) for the first output option given that cannot be written."""
    for dest, folder in getattr(args, "outputs", ()):
        if getattr(args, dest) is not None:
            check_output(getattr(args, dest), folder)
