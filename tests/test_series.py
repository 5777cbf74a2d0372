"""`dynamics series`: step folders found and ordered, every step diffed against the base and the
previous step with hand-checkable numbers, diffs cached and resumed under a key of base and options,
KL files joined per step, and the series report rendered with its missing inputs stated."""

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import dynamics.api as api_module
import dynamics.comparisons as comparisons_module
import dynamics.pipeline as pipeline_module
from dynamics import diff
from dynamics.cli import main
from dynamics.documents import SERIES_SCHEMA as SCHEMA
from dynamics.geometry_options import GeometryOptions
from dynamics.runs import SeriesError, find_step_checkpoints
from dynamics.series import Series, model_metrics, series
from reports.series import render_series_report
from tests.checkpoint_factory import write_safetensors


def _base_tensors(seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(24, 16, generator=g)}
    for layer in range(2):
        prefix = f"model.layers.{layer}."
        tensors[prefix + "self_attn.q_proj.weight"] = torch.randn(16, 16, generator=g)
        tensors[prefix + "mlp.down_proj.weight"] = torch.randn(16, 32, generator=g)
        tensors[prefix + "input_layernorm.weight"] = torch.ones(16)
    return tensors


def write_run(root, run: str, reward: str, seed: int, steps: int = 3, scale: float = 1e-3, touched: float = 0.4,
              run_json: bool = True):
    """A lab-style run folder `root/<run>-s<seed>`: bf16 checkpoint-1..steps, each adding `scale`·noise
    to a random `touched` share of the weights, and run.json pointing at `root/base` (written once)."""
    base = _base_tensors()
    if not (root / "base").exists():
        write_safetensors(root / "base", {n: t.bfloat16() for n, t in base.items()})
    g = torch.Generator().manual_seed(1000 * seed + len(run))
    run_dir = root / f"{run}-s{seed}"
    weights = {n: t.bfloat16().float() for n, t in base.items()}
    for step in range(1, steps + 1):
        for w in weights.values():
            mask = torch.rand(w.shape, generator=g) < touched
            w += scale * torch.randn(w.shape, generator=g) * mask * w.abs().clamp(min=0.1)
        write_safetensors(run_dir / f"checkpoint-{step}", {n: w.bfloat16() for n, w in weights.items()})
    if run_json:
        (run_dir / "run.json").write_text(json.dumps({"schema": "dynamics.run/1", "run": run, "reward": reward,
                                                      "seed": seed, "base": "../base", "trainer": "grpo"}))
    return run_dir


def _write_kl(path, mean: float, p95: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": "dynamics.kl/1", "base": "base", "tuned": "tuned",
                                "kl_mean_per_token": mean, "kl_median_per_token": mean / 2, "kl_p95_per_token": p95,
                                "kl_reverse_mean_per_token": None, "kl_mean_per_sequence": 20 * mean,
                                "tokens": 640, "sequences": 32, "top_tokens": [], "sampling": {}}))


@pytest.fixture
def run_dir(tmp_path):
    return write_run(tmp_path, "grpo-true", "true", 1)


def test_step_folders_sort_by_number_and_take_every_naming(tmp_path):
    for name in ("checkpoint-10", "checkpoint-2", "global_step_7", "step_30", "notes", ".hidden-checkpoint-1"):
        (tmp_path / "run" / name).mkdir(parents=True)
    found = find_step_checkpoints(tmp_path / "run")
    assert [(c.step, c.path.name) for c in found] == [
        (2, "checkpoint-2"), (7, "global_step_7"), (10, "checkpoint-10"), (30, "step_30")]


def test_shallowest_level_wins_and_nested_trainer_layouts_are_found(tmp_path):
    for name in ("run/checkpoint-1", "run/checkpoint-2", "run/fp32/checkpoint-0", "run/fp32/checkpoint-1",
                 "verl/ckpts/global_step_5/actor/huggingface", "verl/ckpts/global_step_15/actor"):
        (tmp_path / name).mkdir(parents=True)
    assert [c.path.name for c in find_step_checkpoints(tmp_path / "run")] == ["checkpoint-1", "checkpoint-2"]
    assert [c.step for c in find_step_checkpoints(tmp_path / "verl")] == [5, 15]


def test_two_folders_for_one_step_or_none_at_all_are_errors(tmp_path):
    (tmp_path / "a" / "x" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "a" / "y" / "step_3").mkdir(parents=True)
    with pytest.raises(SeriesError, match="two folders for step 3"):
        find_step_checkpoints(tmp_path / "a")
    (tmp_path / "empty" / "logs").mkdir(parents=True)
    with pytest.raises(SeriesError, match="no checkpoint-N, global_step_N, global_stepN, iter_NNNNNNN or step_N folder"):
        find_step_checkpoints(tmp_path / "empty")


def test_hand_computed_steps_against_base_and_previous(tmp_path):
    """W0 = [[1,2],[3,4]]; step 1 changes one element by 1, step 2 one more by 1 (float32)."""
    write_safetensors(tmp_path / "base", {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])})
    write_safetensors(tmp_path / "run" / "checkpoint-1", {"w": torch.tensor([[1.0, 2.0], [3.0, 5.0]])})
    write_safetensors(tmp_path / "run" / "checkpoint-2", {"w": torch.tensor([[1.0, 2.0], [4.0, 5.0]])})
    result = series(tmp_path / "run", base=tmp_path / "base")
    first, second = result.steps
    assert first.vs_base["bitwise_sparsity"] == 0.75 and first.vs_previous is None
    assert first.vs_base["relative_update_norm"] == pytest.approx(1 / math.sqrt(30))
    assert second.vs_base["bitwise_sparsity"] == 0.5
    assert second.vs_base["relative_update_norm"] == pytest.approx(math.sqrt(2) / math.sqrt(30))
    assert second.vs_previous["bitwise_sparsity"] == 0.75
    assert second.vs_previous["relative_update_norm"] == pytest.approx(1 / math.sqrt(39))
    assert second.vs_base["bitwise_sparsity_by_dtype"] == {"float32": 0.5}
    assert second.vs_base["geometry"] is None


def test_series_matches_direct_diffs_and_writes_the_contract(run_dir):
    result = series(run_dir, geometry=GeometryOptions(k=4))
    doc = json.loads((run_dir / "series" / "series.json").read_text())
    assert doc["schema"] == SCHEMA and doc["base"] == str(run_dir.parent / "base")
    assert doc["run"] == {"run": "grpo-true", "reward": "true", "seed": 1}
    assert [s["step"] for s in doc["steps"]] == [1, 2, 3]
    direct = model_metrics(diff(run_dir.parent / "base", run_dir / "checkpoint-3", device="cpu", geometry=GeometryOptions(k=4)))
    step3 = doc["steps"][2]
    assert step3["vs_base"]["bitwise_sparsity"] == direct["bitwise_sparsity"]
    assert step3["vs_base"]["geometry"]["principal_energy_ratio"] == pytest.approx(
        direct["geometry"]["principal_energy_ratio"])
    between = diff(run_dir / "checkpoint-2", run_dir / "checkpoint-3", device="cpu").to_json()
    assert step3["vs_previous"]["bitwise_sparsity"] == between["summary"]["bitwise_sparsity"]
    cached = json.loads((run_dir / "series" / step3["vs_base"]["diff"]).read_text())
    assert cached["schema"] == "dynamics.diff/1" and cached["b"]["path"].endswith("checkpoint-3")
    assert (result.diffs_computed, result.diffs_cached) == (5, 0)
    assert doc["steps"][0]["vs_previous"] is None and doc["kl_source"] is None


def test_an_interrupted_series_resumes_without_recomputing_cached_steps(run_dir, monkeypatch):
    real_stats, calls = comparisons_module.element_stats, []

    def stats_then_stop(*args):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(args)
        return real_stats(*args)

    monkeypatch.setattr(comparisons_module, "element_stats", stats_then_stop)
    with pytest.raises(KeyboardInterrupt):
        series(run_dir)
    assert not (run_dir / "series" / "cache").exists() and not (run_dir / "series" / "series.json").exists()
    monkeypatch.setattr(comparisons_module, "element_stats", real_stats)
    assert series(run_dir).diffs_computed == 5
    for stale in (run_dir / "series" / "cache").glob("step-3-*.json"):
        stale.unlink()  # as if the series had stopped before step 3
    resumed = series(run_dir)
    assert (resumed.diffs_computed, resumed.diffs_cached) == (2, 3)
    assert (series(run_dir).diffs_computed, series(run_dir).diffs_cached) == (0, 5)


@pytest.mark.parametrize("raw", [True, False], ids=["file-reads", "checkpoint-reader"])
def test_a_series_reads_the_base_once_and_each_step_once(run_dir, monkeypatch, raw):
    """Every stored tensor of base, checkpoint-1..3 is read exactly once for the 5 diffs of the series:
    counted at the file reads (tensors stored raw) or through each Checkpoint's reader (locations off)."""
    reads = Counter()
    if raw:
        real_read_host = pipeline_module.read_host

        def counted_read_host(ckpt, name, info):
            path = ckpt.locations[name][0]
            reads[(path.parent.name, name)] += 1
            return real_read_host(ckpt, name, info)

        monkeypatch.setattr(pipeline_module, "read_host", counted_read_host)
    else:
        real_open = api_module.open_checkpoint

        def open_counted(path, **kwargs):
            ckpt = real_open(path, **kwargs)
            reader, folder = ckpt.reader, Path(path).name

            def counted(name):
                reads[(folder, name)] += 1
                return reader(name)

            ckpt.reader, ckpt.locations = counted, {}
            return ckpt

        monkeypatch.setattr(api_module, "open_checkpoint", open_counted)
    result = series(run_dir, device="cpu")
    assert result.diffs_computed == 5
    names = _base_tensors().keys()
    assert reads == {(folder, name): 1 for folder in ("base", "checkpoint-1", "checkpoint-2", "checkpoint-3")
                     for name in names}
    direct = diff(run_dir.parent / "base", run_dir / "checkpoint-2", device="cpu").to_json()["summary"]
    assert result.steps[1].vs_base["changed"] == direct["changed"]


def test_cache_made_for_other_options_or_another_base_is_not_reused(tmp_path):
    run_dir = write_run(tmp_path, "grpo-true", "true", 1, steps=2)
    assert series(run_dir).diffs_computed == 3
    with_geometry = series(run_dir, geometry=GeometryOptions(k=4))
    assert with_geometry.diffs_computed == 3 and with_geometry.steps[0].vs_base["geometry"] is not None
    assert series(run_dir, geometry=GeometryOptions(k=2)).diffs_computed == 3
    assert series(run_dir, geometry=GeometryOptions(k=4)).diffs_computed == 0
    other_base = write_safetensors(tmp_path / "other-base", {n: t.bfloat16() for n, t in _base_tensors(8).items()})
    moved = series(run_dir, base=other_base)
    assert (moved.diffs_computed, moved.diffs_cached) == (2, 1)  # the vs-previous diff does not involve the base
    assert moved.steps[0].vs_base["bitwise_sparsity"] < 0.1


def test_base_comes_from_run_json_and_is_required(tmp_path):
    run = write_run(tmp_path, "plain", "none", 1, steps=1, run_json=False)
    with pytest.raises(SeriesError, match="pass --base BASE"):
        series(run)
    with pytest.raises(SeriesError, match="base checkpoint does not exist"):
        series(run, base=tmp_path / "nowhere")
    assert series(run, base=tmp_path / "base").run is None


def test_kl_files_in_the_output_folder_or_given_are_joined_per_step(run_dir, tmp_path):
    out = run_dir / "series"
    _write_kl(out / "kl" / "step_2.json", 0.02, 0.09)
    found = series(run_dir)
    assert found.kl_source == str(out / "kl")
    assert [s.kl and s.kl["kl_mean_per_token"] for s in found.steps] == [None, 0.02, None]
    _write_kl(tmp_path / "given.json", 0.5, 1.5)
    given = series(run_dir, kl={3: tmp_path / "given.json"})
    assert given.kl_source == "--kl" and [s.kl is not None for s in given.steps] == [False, False, True]
    with pytest.raises(SeriesError, match="KL for step 9, but the run has steps 1, 2, 3"):
        series(run_dir, kl={9: tmp_path / "given.json"})
    (tmp_path / "wrong.json").write_text(json.dumps({"schema": "dynamics.diff/1"}))
    with pytest.raises(SeriesError, match="wrong.json: expected a dynamics.kl/1 document"):
        series(run_dir, kl={1: tmp_path / "wrong.json"})


def test_series_report_renders_every_section_or_says_what_to_run(run_dir, tmp_path):
    bare = series(run_dir)
    html = render_series_report(bare, tmp_path / "bare").read_text()
    assert "--geometry --rank-k K" in html and "dynamics probe kl" in html
    assert "<script" not in html and html.count('src="data:image/png;base64,') == 2

    _write_kl(run_dir / "series" / "kl" / "step_1.json", 0.01, 0.05)
    _write_kl(run_dir / "series" / "kl" / "step_3.json", 0.03, 0.2)
    full = series(run_dir, geometry=GeometryOptions(k=4))
    out = tmp_path / "full"
    html_path = render_series_report(Series.read_json(run_dir / "series" / "series.json"), out)
    html = html_path.read_text()
    assert "Missing input" not in html and "No KL for step 2: for each, run" in html
    figures = sorted(p.stem for p in (out / "figures").glob("series-*.png"))
    assert figures == ["series-kl", "series-principal-energy", "series-rotation", "series-sparsity",
                       "series-update-norm"]
    assert figures == sorted(p.stem for p in (out / "data").glob("series-*.csv"))
    rows = list(csv.DictReader((out / "data" / "series-sparsity.csv").open()))
    # step 0 is the base itself (bit-identical), then every checkpoint
    assert [float(r["bitwise_sparsity_vs_base"]) for r in rows] == [1.0, *(s.vs_base["bitwise_sparsity"] for s in full.steps)]
    assert rows[0]["step"] == "0" and rows[0]["bitwise_sparsity_vs_previous"] == ""
    kl_rows = list(csv.DictReader((out / "data" / "series-kl.csv").open()))
    assert [(r["step"], r["kl_mean_per_token"]) for r in kl_rows] == [("1", "0.01"), ("3", "0.03")]
    markdown = html_path.with_suffix(".md").read_text()
    assert f"| 3 | {full.steps[2].vs_base['bitwise_sparsity']:.4f} |" in markdown


def test_series_command_prints_what_it_reused_and_where_kl_came_from(run_dir, tmp_path, capsys):
    _write_kl(tmp_path / "kl2.json", 0.02, 0.1)
    out = tmp_path / "out"
    assert main(["series", str(run_dir), "-o", str(out), "--kl", f"2={tmp_path / 'kl2.json'}", "-q",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "5 diffs computed, 0 reused" in printed and "KL per step: 1 files from --kl" in printed
    assert (out / "series.json").exists() and (out / "series.html").exists()
    assert main(["series", str(run_dir), "-o", str(out), "-q"]) == 0
    assert "0 diffs computed, 5 reused" in capsys.readouterr().out
    assert main(["series", str(run_dir), "--kl", "two=kl.json", "-q"]) == 2
    assert "expected STEP=FILE" in capsys.readouterr().err
