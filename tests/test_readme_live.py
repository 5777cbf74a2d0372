"""README "Watch a run live": both Python examples and the CLI line run (a tiny local Qwen2 as models/base;
without a GPU the GRPO example gets `use_cpu=True`, as TRL's bf16 default needs one)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from dynamics.cli import main
from dynamics.series import Series
from tests.tiny_lm import save_tiny_lm

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Watch a run live")
    return text[start: text.index("\n## ", start + 1)]


def _blocks(kind: str) -> list[str]:
    fenced = re.findall(r"^```(\w*)\n(.*?)^```", _section(), flags=re.DOTALL | re.MULTILINE)
    return [code for language, code in fenced if language == kind]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("live-readme")
    save_tiny_lm(root / "models" / "base")
    return root


@pytest.mark.parametrize("index", range(2))
def test_python_example_runs(folder, monkeypatch, index):
    monkeypatch.chdir(folder)
    code = _blocks("python")[index]
    if not torch.cuda.is_available():
        code = code.replace("report_to=[])", "report_to=[], use_cpu=True)")
    exec(compile(code, f"README live example {index + 1}", "exec"), {"__name__": "__readme__"})  # noqa: S102
    written = ["runs/grpo-live/dynamics-live/series.json", "runs/plain-live/series.json"][index]
    assert len(Series.read_json(folder / written).steps) == [2, 4][index]


def test_cli_line_runs(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    if not (folder / "runs/plain-live/series.json").is_file():
        test_python_example_runs(folder, monkeypatch, 1)
    for line in _blocks("")[0].strip().splitlines():
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "dynamics"
        main(argv[1:])
    assert "wrote runs/plain-live/series.html" in capsys.readouterr().out
    assert (folder / "runs/plain-live/series.md").is_file()
