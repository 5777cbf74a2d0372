"""The lab study: pretrain one or more bases, then SFT and GRPO runs with true and spurious rewards (and the
clipping ablations), written as a lab folder that a killed study resumes.

    out/manifest.json                      {"schema": "dynamics.lab/1", "size", "bases": {name: "base-<name>"},
                                            "runs": [{"run", "reward", "seed", "path", "base"}, ...]}
    out/base-<name>/                       a pretrained base (`probes.lab.pretrain.BASES`), bf16 HF folder
    out/majority-<name>.json               the incorrect reward's pseudo-labels on that base (see below)
    out/<name>/<run>-s<seed>/run.json      {"schema": "dynamics.run/1", "run": "<run>@<name>", "reward", "seed",
                                            "base": "../../base-<name>", "base_name", "ablation", "trainer",
                                            "config": {...}}
    out/<name>/<run>-s<seed>/checkpoint-<N>/        bf16 HF folder after N optimizer steps (written last, whole)
    out/<name>/<run>-s<seed>/fp32/checkpoint-<N>/   fp32 masters, on request, from N = 0 (the bf16 base upcast)
    out/<name>/<run>-s<seed>/generations.jsonl      held-out generations at step 0 (the base) and every saved
                                                    step: greedy, and `samples_per_prompt` sampled (T = 1)
    out/<name>/<run>-s<seed>/style.jsonl            p(code) per held-out prompt at the same steps
    out/<name>/<run>-s<seed>/train_log.jsonl        per optimizer step (probes.lab.grpo.train_grpo; SFT: loss)

`<run>` is `sft`, `grpo-<reward>` or `grpo-<reward>-<ablation>`; the run label carries the base
(`grpo-random@code-helps`), so runs group across seeds and never across bases. Ablations (`ABLATIONS`):
  clip-off   the unclipped ratio·A objective, same rollout shape
  on-policy  one update per rollout: rollout_prompts / updates_per_rollout prompts per rollout, so the
             mini-batch and the samples per optimizer step are those of the recipe, every step on-policy.

The incorrect reward (Rethink_RLVR): for each of the first `majority_problems` training problems, the base
draws `majority_samples` responses (T = 1, torch seeded with the base seed); the majority final answer is the
pseudo-label; the runs train only on the problems whose label is wrong, rewarded for giving it.

One base serves every run of its name (as one released model serves a paper's runs); seeds vary the
fine-tuning only. Run seed s samples prompts from `random.Random("prompts-s")` and responses from torch's
generator seeded with s, so the runs of one seed see the same first rollout and differ by their reward.
Resume: a base folder that exists is reused (checkpoints are renamed into place whole), a run whose last
checkpoint exists is skipped, any other run folder is trained again from scratch.

Trainer choice (own minimal GRPO rather than TRL's GRPOTrainer): docs/lab-results.md, "Why an own GRPO loop".
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from dynamics.devices import resolve_device
from dynamics.documents import LAB_SCHEMA, RUN_SCHEMA, write_json_document
from dynamics.errors import DynamicsError
from probes.features import answers_match
from probes.lab.checkpoints import checkpoint_name, load_for_training
from probes.lab.grpo import GRPOConfig, train_grpo
from probes.lab.pretrain import BASES, PretrainConfig, pretrain_base
from probes.lab.recorder import EvalConfig, Evaluation, RunLabels, RunRecorder, evaluate
from probes.lab.rewards import majority_label, make_reward
from probes.lab.sft import SFTConfig, train_sft
from probes.lab.tasks import Problem, make_problems
from probes.lab.tokenizer import format_prompt
from probes.sampling import decode_responses, generate

DEFAULT_BASES = ("code-helps",)
DEFAULT_REWARDS = ("true", "format", "random", "random-0.3", "incorrect", "noisy-0.2", "noisy-0.4", "noisy-0.5",
                   "rpr", "sft")
ABLATIONS = ("clip-off", "on-policy")
# CPU matmuls can split reductions by thread count; a fixed count keeps a seed's files bit-identical.
CPU_THREADS = 2
# On a GPU each of the parallel run processes needs one core for its Python loop; more would oversubscribe.
GPU_WORKER_THREADS = 1


class LabError(DynamicsError):
    """A lab run cannot start (bad reward, base or ablation label, device, or output folder)."""


@dataclass(frozen=True)
class LabConfig:
    """Everything that defines a study except the bases, seeds and rewards (presets in LAB_PRESETS)."""

    size: str
    max_operand: int
    train_problems: int
    heldout_problems: int
    pretrain: PretrainConfig
    sft: SFTConfig
    grpo: GRPOConfig
    evaluation: EvalConfig
    rl_save_every_steps: int
    sft_save_every_steps: int
    majority_problems: int
    majority_samples: int
    save_fp32: bool = False
    parallel_runs: int = 1
    problem_seed: int = 0
    base_seed: int = 0


LAB_PRESETS = {
    "tiny": LabConfig(
        size="tiny", max_operand=9, train_problems=3000, heldout_problems=64,
        pretrain=PretrainConfig(steps=800, batch_size=32, lr=3e-3, warmup_steps=80),
        sft=SFTConfig(steps=40, batch_size=16, lr=2e-5),
        grpo=GRPOConfig(steps=16, rollout_prompts=16, group_size=8, updates_per_rollout=4, lr=1e-5,
                        max_new_tokens=64),
        evaluation=EvalConfig(max_new_tokens=64, batch_size=128, samples_per_prompt=2),
        rl_save_every_steps=8, sft_save_every_steps=20, majority_problems=256, majority_samples=8,
    ),
    "small": LabConfig(
        size="small", max_operand=30, train_problems=20000, heldout_problems=256,
        pretrain=PretrainConfig(steps=1200, batch_size=128, lr=1e-3, warmup_steps=100),
        sft=SFTConfig(steps=120, batch_size=32, lr=2e-5),
        grpo=GRPOConfig(steps=104, rollout_prompts=32, group_size=8, updates_per_rollout=8, lr=1e-5,
                        max_new_tokens=72),
        evaluation=EvalConfig(max_new_tokens=72, batch_size=1024, samples_per_prompt=4),
        rl_save_every_steps=26, sft_save_every_steps=40, majority_problems=1024, majority_samples=8,
        parallel_runs=16,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    base: str
    reward: str
    seed: int
    ablation: str | None = None

    @property
    def name(self) -> str:
        """`sft`, `grpo-<reward>` or `grpo-<reward>-<ablation>` (without base and seed)."""
        if self.reward == "sft":
            return "sft"
        return f"grpo-{self.reward}" + (f"-{self.ablation}" if self.ablation else "")

    @property
    def run(self) -> str:
        """The run label (groups seeds): `<name>@<base>`."""
        return f"{self.name}@{self.base}"

    @property
    def folder_name(self) -> str:
        return f"{self.base}/{self.name}-s{self.seed}"

    @property
    def trainer(self) -> str:
        return "sft" if self.reward == "sft" else "grpo"


def run_specs(rewards: list[str], seeds: list[int], bases: list[str], ablations: list[str]) -> list[RunSpec]:
    """One run per (base, reward, seed), and per ablation one more for every GRPO reward; labels checked here."""
    for base in bases:
        if base not in BASES:
            raise LabError(f"unknown base {base!r}: use {', '.join(BASES)}")
    for ablation in ablations:
        if ablation not in ABLATIONS:
            raise LabError(f"unknown ablation {ablation!r}: use {', '.join(ABLATIONS)}")
    for reward in rewards:
        if reward != "sft":
            try:
                make_reward(reward, 0, 1)
            except DynamicsError as e:
                raise LabError(str(e)) from e
    specs = []
    for base in bases:
        for reward in rewards:
            for ablation in [None, *(ablations if reward != "sft" else [])]:
                specs += [RunSpec(base, reward, seed, ablation) for seed in seeds]
    return specs


def ablated(settings: GRPOConfig, ablation: str | None) -> GRPOConfig:
    """The GRPO settings of an ablation (module docstring); None: unchanged."""
    if ablation == "clip-off":
        return replace(settings, clip=False)
    if ablation == "on-policy":
        return replace(settings, rollout_prompts=settings.rollout_prompts // settings.updates_per_rollout,
                       updates_per_rollout=1)
    return settings


def run_study(config: LabConfig, out: Path, seeds: list[int], rewards: list[str] | None = None,
              bases: list[str] | None = None, ablations: list[str] | None = None, device: str = "auto",
              progress: bool = True) -> Path:
    """Pretrain the bases and train every (base, reward, ablation, seed) run into `out`, resuming what a
    previous call of the same preset left there; return the manifest path.

    Example:
        >>> run_study(LAB_PRESETS["tiny"], Path("runs"), seeds=[1])  # doctest: +SKIP
        PosixPath('runs/manifest.json')
    """
    specs = run_specs(list(rewards or DEFAULT_REWARDS), seeds, list(bases or DEFAULT_BASES), list(ablations or []))
    torch_device = resolve_device(device)
    out = Path(out)
    entries = {e["path"]: e for e in _previous_runs(out, config.size)}
    path = out / "manifest.json"

    def finished(spec: RunSpec) -> None:
        """List a run in the manifest as soon as it is complete, so a killed study lists what it finished."""
        entries[spec.folder_name] = {"run": spec.run, "reward": spec.reward, "seed": spec.seed,
                                     "path": spec.folder_name, "base": base_folder_name(spec.base)}
        names = sorted({e["base"] for e in entries.values()})
        write_json_document({"schema": LAB_SCHEMA, "size": config.size,
                             "bases": {n.removeprefix("base-"): n for n in names}, "runs": list(entries.values())},
                            path)

    previous_threads = torch.get_num_threads()
    if torch_device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            _run_study(config, out, specs, torch_device, progress, finished)
    finally:
        torch.set_num_threads(previous_threads)
    return path


def base_folder_name(base: str) -> str:
    return f"base-{base}"


def _previous_runs(out: Path, size: str) -> list[dict]:
    """The runs of an earlier study in `out` (resumed and extended); refused when it used another preset."""
    path = out / "manifest.json"
    if not path.exists():
        return []
    try:
        manifest = json.loads(path.read_text())
        previous_size, runs = manifest["size"], list(manifest["runs"])
    except (ValueError, KeyError, TypeError) as e:
        raise LabError(f"{path}: not a lab manifest ({e}); choose an empty folder") from e
    if previous_size != size:
        raise LabError(f"{path}: already holds a lab study of size {previous_size!r}; choose an empty folder")
    return runs


def _run_study(config: LabConfig, out: Path, specs: list[RunSpec], device: torch.device, progress: bool,
               finished: Callable[[RunSpec], None]) -> None:
    """Prepare the bases the pending runs need (in parallel on a GPU), then train the pending runs; `finished`
    is called with every run that is complete, in order, those of an earlier call first."""
    train = make_problems(config.train_problems, "train", config.problem_seed, config.max_operand)
    heldout = make_problems(config.heldout_problems, "heldout", config.problem_seed + 1, config.max_operand)
    pending = [s for s in specs if not run_complete(config, s, out / s.folder_name)]
    for spec in specs:
        if spec not in pending:
            finished(spec)
    bases = list(dict.fromkeys(s.base for s in pending))
    base_jobs = [(config, base, out, train, heldout, any(s.reward == "incorrect" for s in pending if s.base == base),
                  device, progress) for base in bases]
    prepared = dict(zip(bases, _map(_prepare_base, base_jobs, config.parallel_runs)))
    jobs = [(config, spec, out / base_folder_name(spec.base), out / spec.folder_name,
             prepared[spec.base][1] if spec.reward == "incorrect" else train, heldout, prepared[spec.base][0],
             device, progress and config.parallel_runs == 1) for spec in pending]
    for seconds, spec in _map(_train_run_job, jobs, config.parallel_runs):
        finished(spec)
        if progress and config.parallel_runs > 1:
            print(f"{spec.folder_name}: {seconds:.0f} s")


def _map(function, jobs: list[tuple], parallel: int) -> Iterator:
    """`function` over `jobs` (results in job order, each as soon as it and those before it are done), in
    `parallel` spawned processes when more than one (each job's own CUDA context)."""
    if parallel > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(parallel, len(jobs)), mp_context=get_context("spawn")) as pool:
            yield from pool.map(function, jobs)
    else:
        yield from (function(job) for job in jobs)


def _prepare_base(job: tuple) -> tuple[Evaluation, list[Problem]]:
    """Pretrain the base unless its folder exists; its step-0 evaluation; the incorrect reward's problems."""
    config, base, out, train, heldout, needs_majority, device, progress = job
    torch.set_num_threads(CPU_THREADS if device.type == "cpu" else GPU_WORKER_THREADS)
    started = time.perf_counter()
    base_dir = out / base_folder_name(base)
    if not (base_dir / "model.safetensors").is_file():
        pretrain_base(train, config.size, BASES[base], config.pretrain, config.base_seed, base_dir, device,
                      progress and config.parallel_runs == 1)
    model, tokenizer = load_for_training(base_dir, device)
    base_eval = evaluate(model, tokenizer, heldout, RunLabels("base", "none", 0), 0, config.evaluation)
    wrong = (incorrect_reward_problems(model, tokenizer, train, config, out / f"majority-{base}.json")
             if needs_majority else [])
    if progress:
        print(f"{base_dir.name}: ready in {time.perf_counter() - started:.0f} s")
    return base_eval, wrong


def run_complete(config: LabConfig, spec: RunSpec, run_dir: Path) -> bool:
    """True when the run's last checkpoint exists (written whole, after its generations and style records)."""
    steps = config.sft.steps if spec.trainer == "sft" else config.grpo.steps
    return (run_dir / checkpoint_name(steps)).is_dir()


def incorrect_reward_problems(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, train: list[Problem],
                              config: LabConfig, path: Path) -> list[Problem]:
    """The incorrect reward's training problems: the first `majority_problems` training problems whose majority
    answer over `majority_samples` base samples is wrong, each with that wrong answer as its label; cached in
    `path` ({prompt_id: label} of every problem with a label)."""
    chosen = train[:config.majority_problems]
    if path.is_file():
        labels = json.loads(path.read_text())
    else:
        labels = {}
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(config.base_seed)
            per_call = max(1, config.evaluation.batch_size // config.majority_samples)  # problems per call
            for start in range(0, len(chosen), per_call):
                chunk = chosen[start:start + per_call]
                prompts = [format_prompt(p.text) for p in chunk for _ in range(config.majority_samples)]
                responses = decode_responses(tokenizer, generate(model, tokenizer, prompts,
                                                                 config.grpo.max_new_tokens, sample=True))
                for i, problem in enumerate(chunk):
                    label = majority_label(responses[i * config.majority_samples:(i + 1) * config.majority_samples])
                    if label is not None:
                        labels[problem.prompt_id] = label
        write_json_document(labels, path)
    wrong = [replace(p, answer=labels[p.prompt_id]) for p in chosen
             if p.prompt_id in labels and not answers_match(labels[p.prompt_id], p.answer)]
    if len(wrong) < config.grpo.rollout_prompts:
        raise LabError(f"{path}: only {len(wrong)} problems with a wrong majority label, fewer than a rollout's "
                       f"{config.grpo.rollout_prompts} prompts; raise majority_problems")
    return wrong


def _train_run_job(job: tuple) -> tuple[float, RunSpec]:  # a top-level function: spawned workers import it
    started = time.perf_counter()
    train_run(*job)
    return time.perf_counter() - started, job[1]


def train_run(config: LabConfig, spec: RunSpec, base_dir: Path, run_dir: Path, train: list[Problem],
              heldout: list[Problem], base_eval: Evaluation, device: torch.device, progress: bool) -> Path:
    """One fine-tuning run from the bf16 base (fp32 masters), into a fresh `run_dir`: run.json, checkpoints,
    generations, style records, training log."""
    torch.set_num_threads(CPU_THREADS if device.type == "cpu" else GPU_WORKER_THREADS)
    shutil.rmtree(run_dir, ignore_errors=True)
    torch.manual_seed(spec.seed)
    model, tokenizer = load_for_training(base_dir, device)
    save_every = config.sft_save_every_steps if spec.trainer == "sft" else config.rl_save_every_steps
    recorder = RunRecorder(run_dir, RunLabels(spec.run, spec.reward, spec.seed), tokenizer, heldout,
                           config.evaluation, save_every, config.save_fp32)
    grpo = ablated(config.grpo, spec.ablation)
    trainer_config = config.sft if spec.trainer == "sft" else grpo
    run_json = {"schema": RUN_SCHEMA, "run": spec.run, "reward": spec.reward, "seed": spec.seed,
                "base": f"../../{base_dir.name}", "base_name": spec.base, "ablation": spec.ablation,
                "trainer": spec.trainer,
                "config": {"size": config.size, "device": device.type, "max_operand": config.max_operand,
                           "heldout_problems": config.heldout_problems, "train_problems": len(train),
                           "save_every_steps": save_every, "master_dtype": "float32",
                           "checkpoint_dtype": "bfloat16", **asdict(trainer_config)}}
    write_json_document(run_json, run_dir / "run.json")
    recorder.start(model, base_eval)
    rng = random.Random(f"prompts-{spec.seed}")
    if spec.trainer == "sft":
        train_sft(model, tokenizer, train, config.sft, BASES[spec.base].code_probability, rng, recorder, progress)
    else:
        train_grpo(model, tokenizer, train, make_reward(spec.reward, spec.seed, grpo.group_size), grpo, rng,
                   recorder, progress, description=spec.folder_name)
    return run_dir


def last_checkpoint(run_dir: Path) -> Path:
    """The run's checkpoint with the most optimizer steps."""
    steps = [int(p.name.removeprefix("checkpoint-")) for p in Path(run_dir).glob("checkpoint-*") if p.is_dir()]
    if not steps:
        raise LabError(f"{run_dir}: no checkpoint-<N> folder")
    return Path(run_dir) / checkpoint_name(max(steps))


def study_config(size: str, device: str, save_fp32: bool = False, grpo_lr: float | None = None,
                 sft_lr: float | None = None, parallel_runs: int | None = None) -> LabConfig:
    """The preset of `size` with the learning-rate and parallelism knobs overridden where given; one run at a
    time on a CPU."""
    config = replace(LAB_PRESETS[size], save_fp32=save_fp32)
    if parallel_runs is not None:
        config = replace(config, parallel_runs=parallel_runs)
    if grpo_lr is not None:
        config = replace(config, grpo=replace(config.grpo, lr=grpo_lr))
    if sft_lr is not None:
        config = replace(config, sft=replace(config.sft, lr=sft_lr))
    if resolve_device(device).type == "cpu":
        config = replace(config, parallel_runs=1)
    return config
