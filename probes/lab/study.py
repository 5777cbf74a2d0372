"""The lab study: pretrain a base, then SFT and GRPO runs with true and spurious rewards, written as a lab folder.

    out/manifest.json                         {"schema": "dynamics.lab/1", "size", "base": "base", "runs": [...]}
    out/base/                                 the pretrained base, bf16 HF folder with tokenizer files
    out/<run>-s<seed>/run.json                {"schema": "dynamics.run/1", "run", "reward", "seed", "base": "../base",
                                               "trainer": "grpo" | "sft", "config": {...}}
    out/<run>-s<seed>/checkpoint-<N>/         bf16 HF folder after N optimizer steps
    out/<run>-s<seed>/fp32/checkpoint-<N>/    fp32 masters, on request, from N = 0 (the bf16 base upcast)
    out/<run>-s<seed>/generations.jsonl       greedy held-out generations at step 0 (the base) and every saved step
    out/<run>-s<seed>/train_log.jsonl         per optimizer step: reward mean, loss, clip fraction (GRPO) or loss

One base serves every run (as one released model serves a paper's runs); seeds vary the fine-tuning only.
Run `grpo-<reward>` with seed s samples prompts from `random.Random("prompts-s")` and responses from torch's
generator seeded with s, so the runs of one seed see the same first rollout and differ by their reward.

Trainer choice (own minimal GRPO rather than TRL's GRPOTrainer): docs/lab-results.md, "Why an own GRPO loop".
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from dynamics.devices import resolve_device
from dynamics.documents import LAB_SCHEMA, RUN_SCHEMA, write_json_document
from dynamics.errors import DynamicsError
from probes.generations import Generation
from probes.lab.checkpoints import checkpoint_name, load_for_training
from probes.lab.grpo import GRPOConfig, train_grpo
from probes.lab.pretrain import CorpusConfig, PretrainConfig, pretrain_base
from probes.lab.recorder import EvalConfig, RunLabels, RunRecorder, heldout_generations
from probes.lab.rewards import make_reward
from probes.lab.sft import SFTConfig, train_sft
from probes.lab.tasks import Problem, make_problems

DEFAULT_REWARDS = ("true", "format", "random", "incorrect", "noisy-0.3", "sft")
# CPU matmuls can split reductions by thread count; a fixed count keeps a seed's files bit-identical.
CPU_THREADS = 2


class LabError(DynamicsError):
    """A lab run cannot start (bad reward label, device, or output folder)."""


@dataclass(frozen=True)
class LabConfig:
    """Everything that defines a study except the seeds and rewards (presets in LAB_PRESETS)."""

    size: str
    max_operand: int
    train_problems: int
    heldout_problems: int
    corpus: CorpusConfig
    pretrain: PretrainConfig
    sft: SFTConfig
    grpo: GRPOConfig
    evaluation: EvalConfig
    rl_save_every_steps: int
    sft_save_every_steps: int
    save_fp32: bool = False
    parallel_runs: int = 1
    problem_seed: int = 0
    base_seed: int = 0


LAB_PRESETS = {
    "tiny": LabConfig(
        size="tiny", max_operand=9, train_problems=3000, heldout_problems=64,
        corpus=CorpusConfig(),
        pretrain=PretrainConfig(steps=800, batch_size=32, lr=3e-3, warmup_steps=80),
        sft=SFTConfig(steps=60, batch_size=16, lr=2e-5),
        grpo=GRPOConfig(steps=16, prompts_per_step=8, group_size=8, lr=1e-6, max_new_tokens=64),
        evaluation=EvalConfig(max_new_tokens=64, batch_size=64),
        rl_save_every_steps=8, sft_save_every_steps=30,
    ),
    "small": LabConfig(
        size="small", max_operand=30, train_problems=20000, heldout_problems=256,
        corpus=CorpusConfig(),
        pretrain=PretrainConfig(steps=1200, batch_size=128, lr=1e-3, warmup_steps=100),
        sft=SFTConfig(steps=300, batch_size=32, lr=2e-5),
        grpo=GRPOConfig(steps=60, prompts_per_step=16, group_size=8, lr=1e-6, max_new_tokens=80),
        evaluation=EvalConfig(max_new_tokens=80, batch_size=256),
        rl_save_every_steps=20, sft_save_every_steps=100, parallel_runs=6,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    run: str
    reward: str
    seed: int

    @property
    def folder_name(self) -> str:
        return f"{self.run}-s{self.seed}"

    @property
    def trainer(self) -> str:
        return "sft" if self.reward == "sft" else "grpo"


def run_specs(rewards: list[str], seeds: list[int]) -> list[RunSpec]:
    """One run per (reward, seed): `sft` for the SFT run, `grpo-<reward>` otherwise; rewards checked here."""
    specs = []
    for reward in rewards:
        if reward != "sft":
            try:
                make_reward(reward, 0)
            except DynamicsError as e:
                raise LabError(str(e)) from e
        for seed in seeds:
            specs.append(RunSpec("sft" if reward == "sft" else f"grpo-{reward}", reward, seed))
    return specs


def run_study(config: LabConfig, out: Path, seeds: list[int], rewards: list[str] | None = None,
              device: str = "auto", progress: bool = True) -> Path:
    """Pretrain the base and train every (reward, seed) run into `out`; return the manifest path.

    Example:
        >>> run_study(LAB_PRESETS["tiny"], Path("runs"), seeds=[1])  # doctest: +SKIP
        PosixPath('runs/manifest.json')
    """
    specs = run_specs(list(rewards or DEFAULT_REWARDS), seeds)
    torch_device = resolve_device(device)
    out = Path(out)
    if (out / "manifest.json").exists():
        raise LabError(f"{out}: already holds a lab study (manifest.json); choose an empty folder")
    previous_threads = torch.get_num_threads()
    if torch_device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            _run_study(config, out, specs, torch_device, progress)
    finally:
        torch.set_num_threads(previous_threads)
    manifest = {"schema": LAB_SCHEMA, "size": config.size, "base": "base",
                "runs": [{"run": s.run, "reward": s.reward, "seed": s.seed, "path": s.folder_name} for s in specs]}
    path = out / "manifest.json"
    write_json_document(manifest, path)
    return path


def _run_study(config: LabConfig, out: Path, specs: list[RunSpec], device: torch.device, progress: bool) -> None:
    train = make_problems(config.train_problems, "train", config.problem_seed, config.max_operand)
    heldout = make_problems(config.heldout_problems, "heldout", config.problem_seed + 1, config.max_operand)
    started = time.perf_counter()
    base_dir = pretrain_base(train, config.size, config.corpus, config.pretrain, config.base_seed, out / "base",
                             device, progress)
    model, tokenizer = load_for_training(base_dir, device)
    base_generations = heldout_generations(model, tokenizer, heldout, RunLabels("base", "none", 0), 0,
                                           config.evaluation)
    del model
    if progress:
        print(f"base: pretrained in {time.perf_counter() - started:.0f} s")
    jobs = [(config, spec, base_dir, out / spec.folder_name, train, heldout, base_generations, device,
             progress and config.parallel_runs == 1) for spec in specs]
    if config.parallel_runs > 1:
        with ProcessPoolExecutor(config.parallel_runs, mp_context=get_context("spawn")) as pool:
            for seconds, spec in pool.map(_train_run_job, jobs):
                if progress:
                    print(f"{spec.folder_name}: {seconds:.0f} s")
    else:
        for job in jobs:
            _train_run_job(job)


def _train_run_job(job: tuple) -> tuple[float, RunSpec]:
    started = time.perf_counter()
    train_run(*job)
    return time.perf_counter() - started, job[1]


def train_run(config: LabConfig, spec: RunSpec, base_dir: Path, run_dir: Path, train: list[Problem],
              heldout: list[Problem], base_generations: list[Generation], device: torch.device,
              progress: bool) -> Path:
    """One fine-tuning run from the bf16 base (fp32 masters): run.json, checkpoints, generations."""
    if device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    torch.manual_seed(spec.seed)
    model, tokenizer = load_for_training(base_dir, device)
    save_every = config.sft_save_every_steps if spec.trainer == "sft" else config.rl_save_every_steps
    recorder = RunRecorder(run_dir, RunLabels(spec.run, spec.reward, spec.seed), tokenizer, heldout,
                           config.evaluation, save_every, config.save_fp32)
    trainer_config = config.sft if spec.trainer == "sft" else config.grpo
    run_json = {"schema": RUN_SCHEMA, "run": spec.run, "reward": spec.reward, "seed": spec.seed,
                "base": "../base", "trainer": spec.trainer,
                "config": {"size": config.size, "device": device.type, "max_operand": config.max_operand,
                           "heldout_problems": config.heldout_problems, "save_every_steps": save_every,
                           "master_dtype": "float32", "checkpoint_dtype": "bfloat16", **asdict(trainer_config)}}
    write_json_document(run_json, run_dir / "run.json")
    recorder.start(model, base_generations)
    rng = random.Random(f"prompts-{spec.seed}")
    if spec.trainer == "sft":
        train_sft(model, tokenizer, train, config.sft, rng, recorder, progress)
    else:
        train_grpo(model, tokenizer, train, make_reward(spec.reward, spec.seed), config.grpo, rng, recorder,
                   progress, description=spec.folder_name)
    return run_dir


def last_checkpoint(run_dir: Path) -> Path:
    """The run's checkpoint with the most optimizer steps."""
    steps = [int(p.name.removeprefix("checkpoint-")) for p in Path(run_dir).glob("checkpoint-*") if p.is_dir()]
    if not steps:
        raise LabError(f"{run_dir}: no checkpoint-<N> folder")
    return Path(run_dir) / checkpoint_name(max(steps))


def study_config(size: str, device: str, save_fp32: bool = False, grpo_lr: float | None = None,
                 sft_lr: float | None = None) -> LabConfig:
    """The preset of `size` with the learning-rate knobs overridden where given; one run at a time on a CPU."""
    config = replace(LAB_PRESETS[size], save_fp32=save_fp32)
    if grpo_lr is not None:
        config = replace(config, grpo=replace(config.grpo, lr=grpo_lr))
    if sft_lr is not None:
        config = replace(config, sft=replace(config.sft, lr=sft_lr))
    if resolve_device(device).type == "cpu":
        config = replace(config, parallel_runs=1)
    return config
