"""Adam's state and fp32 masters: Gate II from v and m, Gate III flips explained and predicted, training logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dynamics.adam_curvature import average_ranks, spearman
from dynamics.bf16_flips import classify, drift_histogram, half_ulp_units
from dynamics.checkpoints import open_checkpoint
from dynamics.checkpoints.adam_state import AdamHyper, find_adam_state, open_adam_state
from dynamics.cli import main
from dynamics.errors import CheckpointError
from dynamics.metrics import optimizer_metrics_of
from dynamics.optimizer_analysis import OptimizerResult, optimizer_analysis, tensor_counts
from dynamics.optimizer_counts import OptimizerCounts
from dynamics.training_log import read_training_log
from probes.parameter_order import trainer_parameter_groups

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRL_RUN = FIXTURES / "trl_sft" / "run"
DEEPSPEED = FIXTURES / "deepspeed"
HYPER = AdamHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)


def bf16(x: float) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.bfloat16)


# --- Gate II by hand -------------------------------------------------------------------------------

def test_v_top_shares_and_spearman_of_a_3x4_state_by_hand():
    # v ranks row-major 1..12; the top-5% and top-10% of 12 elements are round(0.6) = round(1.2) = 1 element,
    # v = 12 at (2, 3), where Δ = 2: share 4 / (10·1 + 4) = 4/14; top-1% is round(0.12) = 0 elements.
    v = torch.arange(1, 13, dtype=torch.float32).reshape(3, 4)
    delta = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2], dtype=torch.float32).reshape(3, 4)
    a = torch.zeros(3, 4)
    counts, rho = tensor_counts(a, a + delta, a.bfloat16(), (a + delta).bfloat16(), (torch.zeros(3, 4), v), HYPER)
    metrics = optimizer_metrics_of(counts)
    assert counts.top_v_count == (0, 1, 1)
    assert metrics["v_top_share"] == {"1": 0.0, "5": pytest.approx(4 / 14), "10": pytest.approx(4 / 14)}
    assert metrics["v_top_share_chance"] == {"1": 0.0, "5": 1 / 12, "10": 1 / 12}
    assert metrics["v_top_share_over_chance"]["1"] is None
    assert metrics["v_top_share_over_chance"]["5"] == pytest.approx(48 / 14)
    # Changed: 11 elements; |Δ| ranks ten 5.5s and 11, v ranks 1..11: ρ = 27.5 / sqrt(27.5 · 110) = 0.5.
    assert rho == pytest.approx(0.5)
    assert metrics["v_spearman"] == pytest.approx(0.5)
    assert counts.spearman_weight == 11


def test_average_ranks_share_ties_and_spearman_matches_a_float64_reference():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    torch.manual_seed(0)
    x, y = torch.randn(200).double(), torch.randn(200).double()
    y = y + x
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()  # no ties in continuous data
    reference = float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])
    assert spearman(x, y) == pytest.approx(reference, abs=1e-12)
    assert spearman(torch.ones(5), torch.arange(5.0)) is None


def test_momentum_cosine_is_one_along_minus_m_and_zero_across():
    a = torch.zeros(1, 2)
    b = torch.tensor([[3.0, 4.0]])
    v = torch.ones(1, 2)
    along, _ = tensor_counts(a, b, a.bfloat16(), b.bfloat16(), (-b, v), HYPER)
    across, _ = tensor_counts(a, b, a.bfloat16(), b.bfloat16(), (torch.tensor([[4.0, -3.0]]), v), HYPER)
    assert optimizer_metrics_of(along)["momentum_cosine"] == pytest.approx(1.0)
    assert optimizer_metrics_of(across)["momentum_cosine"] == pytest.approx(0.0, abs=1e-12)


# --- Gate III by hand ------------------------------------------------------------------------------

def test_half_ulp_units_at_a_power_of_two_differ_above_and_below():
    # bf16 has 8 significand bits: the gap above 1.0 is 2^-7, below it 2^-8.
    one = bf16(1.0)
    assert half_ulp_units(one, torch.tensor([1 + 2**-8])).item() == 1.0
    assert half_ulp_units(one, torch.tensor([1 + 2**-9])).item() == 0.5
    assert half_ulp_units(one, torch.tensor([1 - 2**-9])).item() == 1.0
    assert half_ulp_units(one, torch.tensor([1.0])).item() == 0.0
    assert half_ulp_units(bf16(-1.0), torch.tensor([-1 - 2**-8])).item() == 1.0


def test_flip_classification_at_exactly_half_a_ulp_just_below_and_just_above():
    tiny = 2**-20
    odd = 1 + 2**-7  # last mantissa bit 1: a tie rounds away from it, to the even 1 + 2^-6
    a = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, odd, 1.0])
    b = torch.tensor([1 + 2**-8, 1 + 2**-8 - tiny, 1 + 2**-8 + tiny, 1 - 2**-9, 1 - 2**-9 - tiny,
                      odd + 2**-8, 1.0])
    sa, sb = a.bfloat16(), b.bfloat16()
    masks = classify(a, b, sa, sb)
    assert masks["moved_hidden"].tolist() == [True, True, False, True, False, False, False]
    assert masks["moved_flipped"].tolist() == [False, False, True, False, True, True, False]
    assert masks["unmoved"].tolist() == [False] * 6 + [True]
    assert not masks["flipped_unmoved"].any()
    units = half_ulp_units(sb, b)[masks["moved_hidden"]]
    assert units.tolist() == [1.0, pytest.approx(1 - tiny / 2**-8), 1.0]
    assert drift_histogram(units) == (0,) * 9 + (3, 0)
    assert drift_histogram(torch.tensor([0.0, 0.05, 0.55, 1.5])) == (2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1)


def test_shares_and_prediction_precision_recall_by_hand():
    c = OptimizerCounts(classified=10, moved_flipped=3, moved_hidden=5, unmoved=2, predicted_flips=4, next_flips=5,
                        predicted_and_next=3)
    m = optimizer_metrics_of(c)
    assert (m["moved_flipped_share"], m["moved_hidden_share"], m["unmoved_share"]) == (0.3, 0.5, 0.2)
    assert m["hidden_of_moved"] == 5 / 8
    assert (m["flip_prediction_precision"], m["flip_prediction_recall"]) == (0.75, 0.6)
    assert optimizer_metrics_of(OptimizerCounts())["flip_prediction_recall"] is None


# --- a real AdamW run whose next step is known -----------------------------------------------------

def test_next_step_flip_prediction_on_a_real_adamw_run(tmp_path):
    # A constant gradient keeps m̂ and v̂ constant, so Adam's next step is the one its state predicts.
    torch.manual_seed(0)
    w = torch.nn.Parameter(0.02 * torch.randn(48, 64))
    gradient = torch.randn(48, 64)
    optimizer = torch.optim.AdamW([w], lr=3e-5, weight_decay=0.01)
    for step in (1, 2, 3):
        w.grad = gradient.clone()
        optimizer.step()
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"model.layers.0.mlp.up_proj.weight": w.detach().clone()}, str(folder / "model.safetensors"))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    adam = open_adam_state(tmp_path / "checkpoint-2", [["model.layers.0.mlp.up_proj.weight"]])
    result = optimizer_analysis(tmp_path / "checkpoint-1", tmp_path / "checkpoint-2", adam=adam,
                                next_checkpoint=tmp_path / "checkpoint-3")
    summary = result.to_json()["summary"]
    assert 0 < summary["next_flips"] < summary["numel"]
    assert summary["flip_prediction_precision"] > 0.99 and summary["flip_prediction_recall"] > 0.99
    assert summary["momentum_cosine"] > 0.999
    assert summary["moved_hidden"] + summary["moved_flipped"] + summary["unmoved"] == summary["numel"]


def test_optimizer_pt_with_names_that_do_not_fit_is_an_error(tmp_path):
    w = torch.nn.Parameter(torch.ones(2, 3))
    optimizer = torch.optim.AdamW([w])
    w.grad = torch.ones(2, 3)
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    with pytest.raises(CheckpointError, match="param groups of"):
        open_adam_state(tmp_path, [["a", "b"]])
    with pytest.raises(CheckpointError, match="tensor a: moments of shape"):
        open_adam_state(tmp_path, [["a"]], shapes={"a": (3, 2)})
    with pytest.raises(CheckpointError, match="by index"):
        open_adam_state(tmp_path)


# --- a real TRL run ---------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [1, 2, 3])
def test_trl_optimizer_pt_names_match_the_live_optimizer(step):
    folder = TRL_RUN / f"checkpoint-{step}"
    shapes = {name: info.shape for name, info in open_checkpoint(folder).tensors.items()}
    adam = open_adam_state(folder, trainer_parameter_groups(folder), shapes)
    expected = load_file(str(FIXTURES / "trl_sft" / f"expected_moments_step{step}.safetensors"))
    assert len(adam.shapes) * 2 == len(expected) == 52
    for name in adam.shapes:
        m, v = adam.moments(name)
        assert torch.equal(m, expected[f"{name}.exp_avg"]) and torch.equal(v, expected[f"{name}.exp_avg_sq"]), name
    assert {h.step for h in adam.hyper.values()} == {step}
    assert adam.hyper["model.norm.weight"].weight_decay == 0.0
    assert adam.hyper["model.layers.1.mlp.down_proj.weight"].weight_decay == 0.01


def test_trl_trainer_state_log_history_is_read_per_step():
    log = read_training_log(TRL_RUN / "checkpoint-3" / "trainer_state.json")
    assert log.global_step == 3 and sorted(log.steps) == [1, 2, 3]
    canonical = log.canonical(2)
    assert set(canonical) == {"loss", "entropy", "learning_rate"}
    assert canonical["learning_rate"] == pytest.approx(5e-4 * 2 / 3)


def test_jsonl_log_with_nested_data_and_step_fields(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "data": {"critic/score/mean": 0.25, "actor/pg_clipfrac": 0.1}}\n'
                    '{"step": 1, "actor/ppo_kl": 0.002, "note": "x"}\n{"no_step": 1}\n')
    log = read_training_log(path)
    assert log.canonical(1) == {"reward": 0.25, "kl": 0.002, "clip_fraction": 0.1}


def test_optimizer_command_on_the_trl_run_writes_a_document_that_reads_back(tmp_path, capsys):
    out = tmp_path / "optimizer.json"
    code = main(["optimizer", str(TRL_RUN / "checkpoint-1"), str(TRL_RUN / "checkpoint-2"),
                 "--next", str(TRL_RUN / "checkpoint-3"), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "next-step flip precision" in printed and "log at step 2" in printed
    doc = json.loads(out.read_text())
    assert doc["schema"] == "dynamics.optimizer/1"
    summary = doc["summary"]
    assert summary["classified"] == summary["numel"] == sum(
        summary[k] for k in ("moved_flipped", "moved_hidden", "unmoved", "flipped_unmoved"))
    assert summary["momentum_cosine"] > 0.99  # one step apart: Δ is Adam's last step, up to weight decay
    assert summary["flip_prediction_precision"] > 0.9 and summary["flip_prediction_recall"] > 0.9
    assert doc["log"]["loss"] == pytest.approx(5.7051825523376465)
    again = OptimizerResult.read_json(out)
    assert json.loads(json.dumps(again.to_json())) == doc


# --- DeepSpeed -------------------------------------------------------------------------------------

def test_deepspeed_moments_are_cut_like_the_masters():
    states = {z: open_adam_state(DEEPSPEED / z) for z in ("zero1", "zero2", "zero3")}
    assert find_adam_state(DEEPSPEED / "zero1")[0] == "deepspeed"
    names = set(states["zero1"].shapes)
    assert names == set(states["zero3"].shapes) and "model.norm.weight" not in names  # frozen: no state
    for name in names:
        m1, v1 = states["zero1"].moments(name)
        m2, v2 = states["zero2"].moments(name)
        assert torch.equal(m1, m2) and torch.equal(v1, v2)
        assert (v1 >= 0).all() and states["zero3"].moments(name)[0].shape == m1.shape
    result = optimizer_analysis(DEEPSPEED / "base", DEEPSPEED / "zero3", adam=states["zero3"])
    assert result.to_json()["summary"]["momentum_cosine"] > 0.5  # a wrong cut would scatter the direction
    assert math.isfinite(result.to_json()["summary"]["v_spearman"])


def test_series_puts_the_trl_log_beside_the_weights(tmp_path):
    from dynamics.series import Series, series
    from probes.parameter_order import adam_state_beside
    from reports.series import render_series_report

    result = series(TRL_RUN, base=FIXTURES / "trl_sft" / "base", out=tmp_path, device="cpu",
                    optimizer=adam_state_beside)
    assert [s.step for s in result.steps] == [1, 2, 3]
    assert result.steps[2].log["learning_rate"] == pytest.approx(5e-4 / 3)
    again = Series.read_json(tmp_path / "series.json")
    assert again.steps[0].log == result.steps[0].log
    assert [s.optimizer["flip_prediction_recall"] is None for s in again.steps] == [False, False, True]  # no step 4
    assert again.steps[1].optimizer["momentum_cosine"] > 0.99
    render_series_report(result, tmp_path)
    text = (tmp_path / "series.md").read_text()
    assert "Training log against step" in text and "next-step flip recall" in text


def test_three_gate_report_shows_adam_curvature_and_flips_or_says_what_to_run(tmp_path):
    from dynamics import diff
    from reports.three_gate import render_three_gate_report

    before, after = TRL_RUN / "checkpoint-1", TRL_RUN / "checkpoint-2"
    result = diff(before, after, device="cpu")
    render_three_gate_report(result, tmp_path / "without")
    text = (tmp_path / "without" / "three-gate.md").read_text()
    assert text.count("No optimizer analysis: run `dynamics optimizer") == 2
    groups = trainer_parameter_groups(after)
    analysis = optimizer_analysis(before, after, adam=open_adam_state(after, groups), next_checkpoint=TRL_RUN / "checkpoint-3")
    render_three_gate_report(result, tmp_path / "with", optimizer=analysis)
    text = (tmp_path / "with" / "three-gate.md").read_text()
    assert "top-q% of Adam's v" in text and "accumulated drift (half-ULPs)" in text
    assert "No optimizer analysis" not in text


def test_verl_optim_shards_are_named_by_the_model_shard_order(tmp_path):
    from tests.framework_writers import write_fsdp2_run

    root = write_fsdp2_run(tmp_path / "ckpts", steps=2)
    assert find_adam_state(root / "global_step_2") == ("verl", root / "global_step_2" / "actor")
    adam = open_adam_state(root / "global_step_2")
    expected = load_file(str(root / "expected_moments_step2_actor.safetensors"))
    assert "lm_head.weight" not in adam.shapes and len(adam.shapes) * 2 == len(expected)  # tied: one parameter
    for name in adam.shapes:
        m, v = adam.moments(name)
        assert torch.equal(m, expected[f"{name}.exp_avg"]) and torch.equal(v, expected[f"{name}.exp_avg_sq"]), name
    assert {h.step for h in adam.hyper.values()} == {2}
    summary = optimizer_analysis(root / "global_step_1", root / "global_step_2", adam=adam).to_json()["summary"]
    assert summary["momentum_cosine"] > 0.3 and summary["classified"] == summary["numel"]
