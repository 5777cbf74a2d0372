"""The Path Not Taken's Table 4 in miniature: RLVR (true reward) training only a fixed mask of the weights.

On the lab's `small` base (`probes.lab.study`), GRPO with the true reward trains, for each seed:
  dense                 every weight;
  principal             M_princ: top-50% of |W0^(k)| per projection weight (`dynamics.select`, exact SVD);
  principal_complement  M_princ^c;
  low                   M_low: bottom-50% of |W0|;
  principal_c_or_low    M_princ^c ∪ M_low;
  random                `random_like(M_princ^c ∪ M_low)`: the same per-tensor density at random places.
Masks cover the 2-D projection weights (q, k, v, o, gate, up, down); embeddings, norms and lm_head train in
every run, so the runs differ only in the mask. Masked training is `dynamics.apply_mask` (gradient hooks plus a
restore after each optimizer step). Held-out accuracy: greedy answers to the lab's held-out problems at the last
step (`probes.features.is_correct`), per run; per mask the mean over seeds with a bootstrap interval over
prompts (per-prompt mean over seeds) and a t-interval across seeds. The dense runs' cross-seed Jaccard of
their bf16 update masks against chance comes from `dynamics.overlap`.

    python -m probes.lab.masked_rl --out OUT [--seeds 1 2 3] [--lr 1e-5] [--steps 60] [--parallel 9] [--size small]

writes OUT/base/, OUT/<mask>-s<seed>/ (run.json, generations.jsonl, checkpoint-<steps>/), OUT/runs.jsonl
(one line per finished run) and OUT/table4.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from dynamics import apply_mask, complement, overlap, random_like, select, union
from dynamics.devices import resolve_device
from dynamics.documents import write_json_document
from dynamics.selection import MaskSet, density
from probes.features import is_correct
from probes.generations import read_generations
from probes.lab.checkpoints import load_for_training
from probes.lab.grpo import train_grpo
from probes.lab.pretrain import BASES, pretrain_base
from probes.lab.recorder import Evaluation, RunLabels, RunRecorder, heldout_generations
from probes.lab.rewards import make_reward
from probes.lab.study import LAB_PRESETS, LabConfig, last_checkpoint
from probes.lab.tasks import make_problems
from probes.statistics import bootstrap_mean_ci, seed_interval

MASKED_RL_BASE = "template"  # the base of the Table 4 runs in docs/lab-results.md
MASKS = ("dense", "principal", "principal_complement", "low", "principal_c_or_low", "random")
PRINCIPAL_K = 64
FRACTION = 0.5


def build_mask(name: str, weights: dict[str, torch.Tensor], seed: int) -> MaskSet | None:
    """The mask of `name` (None for dense) from the base's fp32 weights."""
    if name == "dense":
        return None
    principal = select(weights, "principal", FRACTION, k=PRINCIPAL_K, exact=True)
    low = select(weights, "low_magnitude", FRACTION)
    masks = {"principal": principal, "principal_complement": complement(principal), "low": low,
             "principal_c_or_low": union(complement(principal), low)}
    if name == "random":
        return random_like(masks["principal_c_or_low"], seed=seed)
    return masks[name]


def _run(job: tuple) -> dict:
    config, mask_name, seed, base_dir, run_dir, device = job
    started = time.perf_counter()
    torch.manual_seed(seed)
    train = make_problems(config.train_problems, "train", config.problem_seed, config.max_operand)
    heldout = make_problems(config.heldout_problems, "heldout", config.problem_seed + 1, config.max_operand)
    model, tokenizer = load_for_training(base_dir, device)
    masks = build_mask(mask_name, {n: p.detach() for n, p in model.named_parameters()}, seed)
    labels = RunLabels(mask_name, "true", seed)
    recorder = RunRecorder(run_dir, labels, tokenizer, heldout, config.evaluation, config.grpo.steps, False)
    write_json_document({"mask": mask_name, "seed": seed, "grpo": config.grpo.__dict__}, run_dir / "run.json")
    recorder.start(model, Evaluation([], []))
    handle = apply_mask(model, masks, freeze_others=False) if masks is not None else None
    train_grpo(model, tokenizer, train, make_reward("true", seed, config.grpo.group_size), config.grpo, random.Random(f"prompts-{seed}"),
               recorder, False, description=f"{mask_name}-s{seed}")
    if handle is not None:
        handle.remove()
    final = [g for g in read_generations(recorder.generations_path) if g.step == config.grpo.steps and g.decoding == "greedy"]
    correct = {g.prompt_id: float(is_correct(g.response, g.answer)) for g in final}
    return {"mask": mask_name, "seed": seed, "accuracy": float(np.mean(list(correct.values()))),
            "correct": correct, "density": density(masks)["all"] if masks is not None else 1.0,
            "seconds": time.perf_counter() - started}


def mask_study_config(size: str = "small", lr: float = 1e-5, steps: int = 60) -> LabConfig:
    """The lab preset of `size` with GRPO at `lr` for `steps` optimizer steps, saved at the last step only,
    greedy evaluation only."""
    preset = LAB_PRESETS[size]
    return replace(preset, grpo=replace(preset.grpo, lr=lr, steps=steps), rl_save_every_steps=steps,
                   evaluation=replace(preset.evaluation, samples_per_prompt=0))


def run_mask_study(out: Path, config: LabConfig, seeds: list[int], parallel: int, device: str = "auto") -> dict:
    """Pretrain the lab base, train every (mask, seed) run, and summarise (see the module docstring)."""
    lr, steps = config.grpo.lr, config.grpo.steps
    target = resolve_device(device)
    train = make_problems(config.train_problems, "train", config.problem_seed, config.max_operand)
    heldout = make_problems(config.heldout_problems, "heldout", config.problem_seed + 1, config.max_operand)
    started = time.perf_counter()
    base_dir = pretrain_base(train, config.size, BASES[MASKED_RL_BASE], config.pretrain, config.base_seed,
                             out / "base", target, False)
    model, tokenizer = load_for_training(base_dir, target)
    base = heldout_generations(model, tokenizer, heldout, RunLabels("base", "none", 0), 0, config.evaluation)
    base_accuracy = float(np.mean([is_correct(g.response, g.answer) for g in base]))
    del model
    print(f"base pretrained and evaluated in {time.perf_counter() - started:.0f} s: accuracy {base_accuracy:.3f}",
          flush=True)
    jobs = [(config, m, s, base_dir, out / f"{m}-s{s}", target) for s in seeds for m in MASKS]
    runs = []
    with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
        for result in pool.map(_run, jobs) if parallel > 1 else map(_run, jobs):
            runs.append(result)
            with open(out / "runs.jsonl", "a") as f:
                f.write(json.dumps({k: v for k, v in result.items() if k != "correct"}) + "\n")
            print(f"{result['mask']}-s{result['seed']}: accuracy {result['accuracy']:.3f} "
                  f"({result['seconds']:.0f} s)", flush=True)
    summary = {"base_accuracy": base_accuracy, "lr": lr, "steps": steps, "seeds": seeds,
               "heldout_problems": len(heldout), "principal_k": PRINCIPAL_K, "fraction": FRACTION, "masks": {}}
    for mask in MASKS:
        mine = [r for r in runs if r["mask"] == mask]
        accuracies = np.array([r["accuracy"] for r in mine])
        per_prompt = np.mean([[r["correct"][p] for p in sorted(mine[0]["correct"])] for r in mine], axis=0)
        summary["masks"][mask] = {"accuracy_mean": float(accuracies.mean()), "accuracy_per_seed": accuracies.tolist(),
                                  "prompt_bootstrap_ci": bootstrap_mean_ci(per_prompt), "seed_t_interval":
                                  seed_interval(accuracies), "density": mine[0]["density"]}
    dense = [last_checkpoint(out / f"dense-s{s}") for s in seeds]
    consistency = overlap(base_dir, dense, device=target.type).to_json()
    summary["dense_cross_seed_overlap"] = {
        group: {k: row[k] for k in ("mean_jaccard", "mean_jaccard_chance", "mean_jaccard_over_chance")}
        for group, row in {"model": consistency["summary"], **consistency["by_module_kind"]}.items()}
    summary["seconds"] = time.perf_counter() - started
    write_json_document(summary, out / "table4.json")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--parallel", type=int, default=9)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="small", choices=sorted(LAB_PRESETS))
    args = parser.parse_args()
    config = mask_study_config(args.size, args.lr, args.steps)
    summary = run_mask_study(args.out, config, args.seeds, args.parallel, args.device)
    print(json.dumps({m: round(v["accuracy_mean"], 4) for m, v in summary["masks"].items()}))


if __name__ == "__main__":
    main()
