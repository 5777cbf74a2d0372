"""`dynamics --version` and option help: every option with a default says it."""

import argparse
from importlib.metadata import version

import pytest

from dynamics.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, path: str = "dynamics"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def test_version_comes_from_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"dynamics {version('dynamics')}"


def test_every_option_with_a_default_says_it_in_its_help():
    missing, checked = [], 0
    for path, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            takes_value = action.option_strings and action.nargs != 0
            if not takes_value or action.default in (None, argparse.SUPPRESS):
                continue
            checked += 1
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text:
                missing.append(f"{path} {action.option_strings[0]}")
    assert missing == [] and checked > 30


def test_the_rendered_help_shows_the_default_value():
    demo = dict(_parsers(build_parser()))["dynamics demo"]
    text = " ".join(demo.format_help().split())
    assert "seed of the lab runs (default: 1)" in text and "(default: auto)" in text

