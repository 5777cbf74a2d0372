"""`dynamics.live`: the monitor's numbers by hand, against `dynamics diff` of checkpoints saved at the same
steps by a real TRL GRPOTrainer run, and training numerics untouched."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dynamics import diff
from dynamics.live import Monitor
from dynamics.metrics import bitwise_sparsity, hidden_by_bf16_fraction, relative_update_norm
from dynamics.series import Series


def _module(**tensors: torch.Tensor) -> torch.nn.Module:
    module = torch.nn.Module()
    for name, t in tensors.items():
        setattr(module, name, torch.nn.Parameter(t.clone()))
    return module


def test_two_hand_built_steps():
    # W0 = [[1, 2], [3, 4]] fp32. Step 1 adds 2^-7 (one bf16 ULP of 1.0) to w[0,0]; step 2 adds 1e-4 to w[1,1]
    # (ULP of 4 in bf16 is 2^-5: rounds back to 4, a change bf16 hides).
    model = _module(w=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    monitor = Monitor(model, every=1, masters=True)
    with torch.no_grad():
        model.w[0, 0] += 2**-7
    first = monitor.step(model)
    assert first["dynamics/bitwise_sparsity"] == 0.75  # 1 of 4 bf16 values changed
    assert first["dynamics/one_ulp_fraction"] == 1.0
    assert first["dynamics/relative_update_norm"] == pytest.approx(2**-7 / math.sqrt(30))
    assert first["dynamics/masters/hidden_by_bf16_fraction"] == 0.0
    assert not any(k.startswith("dynamics/previous/") for k in first)  # the previous step is the base
    with torch.no_grad():
        model.w[1, 1] += 1e-4
    second = monitor.step(model)
    assert second["dynamics/bitwise_sparsity"] == 0.75  # bf16 still differs at w[0,0] only
    assert second["dynamics/previous/bitwise_sparsity"] == 1.0  # no bf16 value changed in step 2
    assert second["dynamics/masters/bitwise_sparsity"] == 0.5  # two fp32 values moved since the start
    assert second["dynamics/masters/hidden_by_bf16_fraction"] == 0.5  # w[1,1]'s move is hidden, w[0,0]'s not
    assert second["dynamics/previous/masters/hidden_by_bf16_fraction"] == 1.0
    delta = torch.tensor(4.0 + 1e-4, dtype=torch.float32).double() - 4.0
    expected = math.sqrt(2**-14 + float(delta) ** 2) / math.sqrt(30)
    assert second["dynamics/masters/relative_update_norm"] == pytest.approx(expected, rel=1e-6)
    assert [s.step for s in monitor.steps] == [1, 2]


def test_frozen_parameters_have_no_snapshot_and_count_as_unchanged():
    model = _module(w=torch.zeros(4), f=torch.ones(12))
    model.f.requires_grad_(False)
    monitor = Monitor(model, every=1, masters=True)
    assert monitor.snapshots.nbytes == 2 * 4 * 4  # two float32 copies of w only
    for _ in range(2):
        with torch.no_grad():
            model.w += 1.0
        logged = monitor.step(model)
    assert logged["dynamics/bitwise_sparsity"] == 12 / 16  # w changed, f did not
    assert logged["dynamics/previous/masters/bitwise_sparsity"] == 12 / 16


def test_bad_options_fail_before_training():
    model = _module(w=torch.zeros(2))
    with pytest.raises(ValueError, match="every must be at least 1"):
        Monitor(model, every=0)
    with pytest.raises(ValueError, match="storage_dtype"):
        Monitor(model, storage_dtype=torch.float64)
    with pytest.raises(ValueError, match="multiple of every=2"):
        Monitor(model, every=2, geometry_every=3)


def test_every_n_steps_and_series_file(tmp_path):
    model = _module(w=torch.zeros(3))
    monitor = Monitor(model, every=2, out=tmp_path)
    logged = []
    for _ in range(4):
        with torch.no_grad():
            model.w += 1.0
        logged.append(monitor.step(model))
    assert [x is None for x in logged] == [True, False, True, False]
    series = Series.read_json(tmp_path / "series.json")
    assert [s.step for s in series.steps] == [2, 4]
    assert series.steps[1].vs_base["bitwise_sparsity"] == 0.0
    assert series.steps[1].vs_base["relative_update_norm"] is None  # ‖W0‖ = 0
    assert series.steps[1].vs_previous["relative_update_norm"] == 1.0  # W_2 = 2, W_4 = 4 everywhere
    assert series.options["live"]["every"] == 2


def _train(monitor_on: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # the matrix pass at step 2 uses random projections; step 3 then draws data from the global RNG
    monitor = Monitor(model, every=1, masters=True, geometry_every=2) if monitor_on else None
    for _ in range(steps):
        x = torch.randn(5, 8)  # global RNG: a monitor drawing random numbers would change the data
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if monitor is not None:
            assert monitor.step(model, optimizer)["dynamics/optimizer/momentum_cosine"] is not None
    if monitor is not None:
        assert [s.vs_base["geometry"] is not None for s in monitor.steps] == [False, True, False]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_monitor_never_changes_training_numerics():
    with_monitor, without = _train(True), _train(False)
    assert with_monitor.keys() == without.keys()
    for name in without:
        assert torch.equal(with_monitor[name].view(torch.int32), without[name].view(torch.int32)), name


class _SaveEveryStep:
    """At train begin and at every step end: the model's weights as bf16 (what a bf16 save stores) and fp32."""

    def __init__(self, root: Path):
        self.root = root

    def save(self, model: torch.nn.Module, step: int) -> None:
        weights = {name: p.detach().clone() for name, p in model.named_parameters()}
        for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            folder = self.root / tag / f"step-{step}"
            folder.mkdir(parents=True)
            save_file({k: v.to(dtype).contiguous().cpu() for k, v in weights.items()}, str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """A 3-step TRL GRPOTrainer run of a tiny Qwen2 on the CPU, watched every step, saving every step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dynamics.live import watch
    from tests.tiny_lm import save_tiny_lm

    root = tmp_path_factory.mktemp("grpo")
    folder = save_tiny_lm(root / "base")
    saver = _SaveEveryStep(root / "saved")
    reported: list[dict] = []

    class Save(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            saver.save(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            saver.save(model, state.global_step)

    class Reporter(TrainerCallback):  # stands for wandb / tensorboard: a reporting callback listed first
        def on_log(self, args, state, control, logs=None, **kwargs):
            reported.append(dict(logs))

    model = AutoModelForCausalLM.from_pretrained(folder)
    args = GRPOConfig(output_dir=str(root / "run"), max_steps=3, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, learning_rate=3e-5, logging_steps=1, save_strategy="no",
                      report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
                          args=args, train_dataset=Dataset.from_dict({"prompt": ["Question: what is 2 + 3?\nAnswer:"] * 8}),
                          processing_class=AutoTokenizer.from_pretrained(folder), callbacks=[Reporter(), Save()])
    watched = watch(trainer, every=1, masters=True)
    trainer.train()
    logged = {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}
    return root, logged, reported, watched


def test_grpo_logged_sparsity_equals_diff_of_saved_steps(grpo_run):
    root, logged, reported, _ = grpo_run
    assert sorted(logged) == [1, 2, 3]
    for step in (1, 2, 3):
        stored = diff(root / "saved/bf16/step-0", root / f"saved/bf16/step-{step}").summary()
        masters = diff(root / "saved/fp32/step-0", root / f"saved/fp32/step-{step}").summary()
        entry = logged[step]
        assert 0.0 < entry["dynamics/bitwise_sparsity"] < 1.0
        assert entry["dynamics/bitwise_sparsity"] == bitwise_sparsity(stored)
        assert entry["dynamics/relative_update_norm"] == relative_update_norm(stored)
        assert entry["dynamics/masters/bitwise_sparsity"] == bitwise_sparsity(masters)
        assert entry["dynamics/masters/hidden_by_bf16_fraction"] == hidden_by_bf16_fraction(masters)
        if step > 1:
            previous = diff(root / f"saved/bf16/step-{step - 1}", root / f"saved/bf16/step-{step}").summary()
            assert entry["dynamics/previous/bitwise_sparsity"] == bitwise_sparsity(previous)
        assert "dynamics/optimizer/momentum_cosine" in entry
    seen = [r for r in reported if "loss" in r]
    assert [r["dynamics/bitwise_sparsity"] for r in seen] == [logged[s]["dynamics/bitwise_sparsity"] for s in (1, 2, 3)]


def test_grpo_live_series_renders_like_saved_checkpoints(grpo_run):
    from reports.series import render_series_report

    root, logged, _, watched = grpo_run
    series = Series.read_json(root / "run" / "dynamics-live" / "series.json")
    assert [s.step for s in series.steps] == [s.step for s in watched.monitor.steps] == [1, 2, 3]
    assert series.steps[2].vs_base["bitwise_sparsity"] == logged[3]["dynamics/bitwise_sparsity"]
    assert series.steps[2].optimizer["with_state"] > 0
    assert series.steps[2].log["loss"] == logged[3]["loss"]
    report = render_series_report(series, root / "report")
    assert report.is_file()


def _sharded_worker(rank: int, world: int, port: int, results: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full, bias, delta = _sharded_case()
        model = torch.nn.Module()
        model.w = torch.nn.Parameter(distribute_tensor(full.clone(), mesh, [Shard(0)]))  # FSDP2-style shard
        model.b = torch.nn.Parameter(bias.clone())  # replicated on every rank (DDP-style)
        monitor = Monitor(model, every=1)
        with torch.no_grad():
            model.w.add_(distribute_tensor(delta, mesh, [Shard(0)]))
            model.b.add_(1.0)
        logged = monitor.step(model)
        if rank == 0:
            results.update(logged)
    finally:
        dist.destroy_process_group()


def _sharded_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    full = torch.randn(6, 4, generator=generator)
    delta = torch.where(torch.rand(6, 4, generator=generator) < 0.5, 1e-2, 0.0)
    return full, torch.zeros(3), delta


def test_sharded_parameters_are_measured_per_rank_and_summed():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.start_processes(_sharded_worker, args=(2, port, results), nprocs=2, join=True, start_method="fork")
    full, bias, delta = _sharded_case()
    single = _module(w=full, b=bias)
    monitor = Monitor(single, every=1)
    with torch.no_grad():
        single.w.add_(delta)
        single.b.add_(1.0)
    expected = monitor.step(single)
    for name in ("dynamics/bitwise_sparsity", "dynamics/one_ulp_fraction", "dynamics/headline_tolerance_sparsity"):
        assert results[name] == expected[name], name
    assert results["dynamics/relative_update_norm"] == pytest.approx(expected["dynamics/relative_update_norm"], rel=1e-12)


def test_report_compare_reads_live_runs(tmp_path):
    import json

    from probes.comparison import compare_runs
    from reports.compare import render_compare_report

    for seed in (1, 2):
        run = tmp_path / f"rl-s{seed}"
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(6, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        monitor = Monitor(model, every=1, out=run / "dynamics-live")
        for _ in range(2):
            model(torch.randn(4, 6)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            monitor.step(model, optimizer)
        (run / "run.json").write_text(json.dumps({"schema": "dynamics.run/1", "run": "rl", "reward": "true",
                                                  "seed": seed}))
    comparison = compare_runs([tmp_path / "rl-s1", tmp_path / "rl-s2"], device="cpu")
    assert [s.run["seed"] for s in comparison.series] == [1, 2]
    assert comparison.series[0].steps[1].vs_base == Series.read_json(
        tmp_path / "rl-s1" / "dynamics-live" / "series.json").steps[1].vs_base
    assert render_compare_report(comparison, tmp_path / "report").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pinned", [False, True])
def test_cuda_monitor_equals_cuda_diff_of_saved_steps(tmp_path, monkeypatch, pinned):
    from dynamics.live import snapshots

    if pinned:  # snapshots that do not fit on the device go to pinned host memory
        monkeypatch.setattr(snapshots, "FREE_SHARE", 0.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Tanh(), torch.nn.Linear(512, 64)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    saver = _SaveEveryStep(tmp_path)
    saver.save(model, 0)
    monitor = Monitor(model, every=1, masters=True, geometry_every=2)
    assert ("pinned" in monitor.snapshots.placement[0]) == pinned
    for step in (1, 2):
        model(torch.randn(32, 256, device="cuda")).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        logged = monitor.step(model, optimizer)
        saver.save(model, step)
        stored = diff(tmp_path / "bf16/step-0", tmp_path / f"bf16/step-{step}", device="cuda").summary()
        masters = diff(tmp_path / "fp32/step-0", tmp_path / f"fp32/step-{step}", device="cuda").summary()
        assert logged["dynamics/bitwise_sparsity"] == bitwise_sparsity(stored)
        assert logged["dynamics/masters/hidden_by_bf16_fraction"] == hidden_by_bf16_fraction(masters)
        assert logged["dynamics/relative_update_norm"] == pytest.approx(relative_update_norm(stored), rel=1e-6)


def test_next_step_flip_prediction_is_checked_one_step_later():
    from dynamics import bf16_flips
    from dynamics.checkpoints.adam_state import AdamHyper

    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 32)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=0.0)
    monitor = Monitor(layer, every=1, masters=True)
    logged, expected = [], _FlipTally()
    for step in (1, 2):
        layer(torch.randn(8, 32)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 1:
            hyper = AdamHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
            before = {n: p.detach().clone() for n, p in layer.named_parameters()}
            predicted = {n: bf16_flips.predicted_flips(p, p.to(torch.bfloat16), optimizer.state[p]["exp_avg"],
                                                       optimizer.state[p]["exp_avg_sq"], hyper)
                         for n, p in layer.named_parameters()}
        logged.append(monitor.step(layer, optimizer))
    for name, p in layer.named_parameters():
        flipped = p.detach().to(torch.bfloat16).view(torch.int16) != before[name].to(torch.bfloat16).view(torch.int16)
        expected.add(predicted[name], flipped)
    first = monitor.steps[0].optimizer
    assert (first["predicted_flips"], first["next_flips"], first["predicted_and_next"]) == expected.counts()
    assert first["next_flips"] > 0
    assert logged[1]["dynamics/optimizer/flip_prediction_recall"] == first["flip_prediction_recall"]
    assert "dynamics/optimizer/flip_prediction_recall" not in logged[0]
    assert monitor.steps[1].optimizer["predicted_numel"] == 0  # its prediction waits for step 3


class _FlipTally:
    """Σ predicted, Σ flipped, Σ both over tensors (the test's own tally)."""

    def __init__(self):
        self.predicted = self.flipped = self.both = 0

    def add(self, predicted: torch.Tensor, flipped: torch.Tensor) -> None:
        self.predicted += int(predicted.sum())
        self.flipped += int(flipped.sum())
        self.both += int((predicted & flipped).sum())

    def counts(self) -> tuple[int, int, int]:
        return self.predicted, self.flipped, self.both
