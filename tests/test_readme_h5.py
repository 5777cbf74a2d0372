"""README "Reading the HDF5 file": the example runs on a real `dynamics diff --h5` file and reads what it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from dynamics.cli import main
from tests.checkpoint_factory import write_safetensors

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    start = text.index("### Reading the HDF5 file")
    return re.findall(r"```python\n(.*?)```", text[start: text.index("\n## ", start)], flags=re.DOTALL)[0]


def test_readme_h5_example_reads_strings_nan_layers_geometry_and_masks(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(5)
    base = {"model.layers.0.self_attn.q_proj.weight": torch.randn(24, 16, generator=g).to(torch.bfloat16),
            "model.norm.weight": torch.ones(16, dtype=torch.bfloat16)}
    tuned = {k: (v.float() + 0.05 * torch.randn(v.shape, generator=g)).to(torch.bfloat16) for k, v in base.items()}
    a, b = write_safetensors(tmp_path / "a", base), write_safetensors(tmp_path / "b", tuned)
    monkeypatch.chdir(tmp_path)
    assert main(["diff", str(a), str(b), "--device", "cpu", "-q", "--geometry", "--h5", "diff.h5", "--save-masks"]) == 0
    scope: dict = {}
    exec(compile(_example(), "README HDF5 example", "exec"), scope)  # noqa: S102 - the README's own code
    assert list(scope["names"]) == ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
    assert scope["layer"][0] == 0 and np.isnan(scope["layer"][1])
    assert scope["shapes"] == [(24, 16), (16,)] and list(scope["dtypes"]) == ["bfloat16", "bfloat16"]
    assert scope["labels"][:3] == ["1", "2", "3-4"] and scope["ulp"].shape == (2, 33)
    assert scope["ulp"].sum() + scope["crossings"].sum() == (1 - scope["sparsity"]).dot([384, 16]).round()
    assert list(scope["tau"]) == [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3]
    assert set(scope["gap"]) == {"model.layers.0.self_attn.q_proj.weight"}
    assert scope["percents"] == ["1", "5", "10", "20"] and scope["overlap"].shape == (1, 4)
    expected = base["model.layers.0.self_attn.q_proj.weight"].view(torch.int16) != \
        tuned["model.layers.0.self_attn.q_proj.weight"].view(torch.int16)
    assert (scope["mask"] == expected.numpy()).all()
