"""`dynamics lab link`: the KL file of each saved step, from that step's own sampled responses, read by series."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lab_fixture import lab_dir  # noqa: F401

from dynamics.documents import read_json_document
from dynamics.series import series
from probes.generations import read_generations
from probes.kl import kl_drift
from probes.lab.link import LinkError, kl_file, link_kl


@pytest.fixture
def run_dir(lab_dir: Path, tmp_path: Path) -> Path:  # noqa: F811
    """A copy of one GRPO run and its base, so the session's lab folder stays as built."""
    manifest = json.loads((lab_dir / "manifest.json").read_text())
    entry = next(e for e in manifest["runs"] if e["reward"] == "random" and e["seed"] == 1)
    run = lab_dir / entry["path"]
    base = (run / json.loads((run / "run.json").read_text())["base"]).resolve()
    copy = tmp_path / "lab" / entry["path"]
    shutil.copytree(run, copy)
    shutil.copytree(base, (copy / json.loads((run / "run.json").read_text())["base"]).resolve())
    return copy


def test_kl_of_each_step_from_its_own_samples_and_series_reads_it(run_dir: Path) -> None:
    written = link_kl([run_dir], device="cpu")
    assert written == [kl_file(run_dir, 1), kl_file(run_dir, 2)]
    base = (run_dir / json.loads((run_dir / "run.json").read_text())["base"]).resolve()
    sampled = [g for g in read_generations(run_dir / "generations.jsonl") if g.decoding == "sampled" and g.step == 2]
    expected = kl_drift(base, run_dir / "checkpoint-2", responses=[(g.prompt, g.response) for g in sampled],
                        chat_template=False, device="cpu")
    doc = read_json_document(kl_file(run_dir, 2), "dynamics.kl/1")
    assert doc["sequences"] == len(sampled) > 0
    assert doc["kl_mean_per_token"] == pytest.approx(expected.to_json()["kl_mean_per_token"], rel=1e-12)
    steps = {s.step: s for s in series(run_dir, device="cpu").steps}
    assert steps[2].kl["kl_mean_per_token"] == pytest.approx(doc["kl_mean_per_token"], rel=1e-12)
    assert link_kl([run_dir], device="cpu") == []  # resume: nothing left to do


def test_a_folder_that_is_neither_lab_nor_run_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(LinkError, match="neither a lab folder"):
        link_kl([tmp_path], device="cpu")
