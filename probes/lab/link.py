"""KL to the base at every saved step of a lab study, written where `dynamics series` reads it.

For run R and each saved step N > 0, the responses R sampled (T = 1) on the held-out prompts at step N
(`generations.jsonl`, decoding "sampled": samples of π_N itself) are teacher-forced through checkpoint-N and
R's base (`probes.kl.kl_drift`: float32 forward, KL from the logit difference in float64):

  KL(π_N ‖ π_base) per token = Σ_v p_N(v) (log p_N(v) − log p_base(v)), averaged over response tokens,

and where it sits (first response token, digit tokens, the rest). Each step's `dynamics.kl/1` document goes to
R/series/kl/step_N.json, so `dynamics series R` and `dynamics report compare` put it beside the parameter
metrics of that step. The file records the responses as scored (`sampling.on_policy` false): the KL probe did
not draw them, the recorder did, from the same policy at T = 1. A step whose file exists is skipped (resume).
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from dynamics.documents import write_json_document
from dynamics.errors import DynamicsError
from probes.generations import read_generations
from probes.kl import kl_drift
from probes.lab.checkpoints import checkpoint_name


class LinkError(DynamicsError):
    """A lab folder whose runs cannot be linked (no manifest, no sampled generations)."""


def kl_file(run_dir: Path, step: int) -> Path:
    return run_dir / "series" / "kl" / f"step_{step}.json"


def run_folders(paths: list[str | Path]) -> list[Path]:
    """The run folders named by `paths`: a run folder (run.json) itself, a lab folder (manifest.json) its runs."""
    runs = []
    for path in map(Path, paths):
        if (path / "manifest.json").is_file():
            runs += [path / entry["path"] for entry in json.loads((path / "manifest.json").read_text())["runs"]]
        elif (path / "run.json").is_file():
            runs.append(path)
        else:
            raise LinkError(f"{path}: neither a lab folder (manifest.json) nor a run folder (run.json)")
    return runs


def link_kl(paths: list[str | Path], device: str = "auto", batch_size: int = 256,
            progress: bool = False) -> list[Path]:
    """Write the KL file of every saved step of every run in `paths` (`run_folders`); return the new files."""
    runs = run_folders(paths)
    todo = []
    for run_dir in runs:
        base = (run_dir / json.loads((run_dir / "run.json").read_text())["base"]).resolve()
        sampled = [g for g in read_generations(run_dir / "generations.jsonl") if g.decoding == "sampled"]
        steps = sorted({g.step for g in sampled if g.step > 0})
        if not steps:
            raise LinkError(f"{run_dir / 'generations.jsonl'}: no sampled responses at a saved step")
        todo += [(run_dir, base, step, [(g.prompt, g.response) for g in sampled if g.step == step])
                 for step in steps if not kl_file(run_dir, step).is_file()]
    written = []
    for run_dir, base, step, responses in tqdm(todo, desc="kl per saved step", disable=not progress):
        result = kl_drift(base, run_dir / checkpoint_name(step), responses=responses, chat_template=False,
                          batch_size=batch_size, device=device)
        write_json_document(result.to_json(), kl_file(run_dir, step))
        written.append(kl_file(run_dir, step))
    return written
