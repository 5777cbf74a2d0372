"""`dynamics report compare`: runs found from run, lab and manifest folders; parameter metrics from the
series beside behavior shifts that always carry their interval; Spearman ρ per panel; seed spread; one
colour per reward in every figure."""

import csv
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dynamics.cli import main
from dynamics.geometry_options import GeometryOptions
from dynamics.runs import RunInfo, SeriesError, find_runs, read_manifest
from dynamics.series import series
from probes.behavior import BehaviorResult, FlagAgreement, SeedShift, Shift
from probes.comparison import (
    Comparison,
    ComparisonError,
    Point,
    ZeroAdvantage,
    comparable_groups,
    correlate,
    rank_correlation,
    zero_advantage_steps,
)
from probes.generations import REWARD_LABELS, Generation, reward_family, write_generations
from probes.style import StyleRecord, style_shifts, write_style_records
from reports.compare import _styles, render_compare_report, shift_text
from reports.palette import REWARD_COLOURS, reward_colour
from tests.test_series import write_run

RUNS = (("grpo-true", "true", 1e-3), ("grpo-random", "random", 5e-4), ("sft", "sft", 2e-2))
SEEDS = (1, 2)
STEPS = (0, 1, 2)  # step 0 = the base's generations
PROMPTS = 12


def _generations(run: str, reward: str, seed: int) -> list[Generation]:
    """Step 0 (the base) and every checkpoint answer PROMPTS sums; the true-reward run gets better with
    steps, and code-style answers fade in the SFT run."""
    rng = random.Random(f"{run}-{seed}")
    out = []
    for step in STEPS:
        for i in range(PROMPTS):
            answer = 3 + i
            right = rng.random() < 0.3 + (0.15 * step if reward == "true" else 0.02 * step)
            code = rng.random() < (0.5 - 0.15 * step if reward == "sft" else 0.4)
            body = "```python\nprint(1 + 2)\n```\n" if code else "Let's add them.\n"
            out.append(Generation(prompt=f"What is 1 + {answer - 1}?", response=f"{body}\\boxed{{{answer if right else 0}}}",
                                  prompt_id=f"p{i}", answer=str(answer), run=run, step=step, seed=seed, reward=reward))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A lab folder: three runs × two seeds, two bf16 checkpoints each, generations.jsonl, style.jsonl,
    train_log.jsonl, manifest.json."""
    root = tmp_path_factory.mktemp("lab")
    entries = []
    for run, reward, scale in RUNS:
        for seed in SEEDS:
            run_dir = write_run(root, run, reward, seed, steps=STEPS[-1], scale=scale * seed)
            write_generations(_generations(run, reward, seed), run_dir / "generations.jsonl")
            write_style_records([StyleRecord(f"p{i}", step, 0.6 + 0.01 * i + 0.05 * step, run, seed, reward)
                                 for step in STEPS for i in range(PROMPTS)], run_dir / "style.jsonl")
            idle = run == "grpo-random" and seed == 2  # reward mean 1 at 3 of 4 logged steps
            (run_dir / "train_log.jsonl").write_text("".join(
                json.dumps({"step": i, "reward_mean": 1.0 if idle and i < 3 else 0.5}) + "\n" for i in range(4)))
            entries.append({"run": run, "reward": reward, "seed": seed, "path": run_dir.name})
    (root / "manifest.json").write_text(json.dumps({"schema": "dynamics.lab/1", "size": "test", "base": "base",
                                                    "runs": entries}))
    return root


@pytest.fixture(scope="module")
def series_docs(lab):
    """Each run's `Series` (geometry at k = 4), in run then seed order."""
    return [series(run.path, base=run.base, geometry=GeometryOptions(k=4), labels=run, device="cpu")
            for run in find_runs([lab])]


def _comparison(runs, behavior=None):
    """The comparison of the series `runs`, as `probes.comparison.compare_runs` returns it."""
    infos = tuple(RunInfo(s.run["run"], s.run["reward"], s.run["seed"], Path(s.run_dir), Path(s.base)) if s.run
                  else None for s in runs)
    return Comparison(infos, tuple(runs), behavior, ())


def _behavior(runs, n_prompts=40):
    """A hand-made behavior result for `runs`: accuracy shift = 0.1·step for the true reward, code-rate
    shift = −0.05·step for everyone, each with a ±0.1 interval."""
    shifts, seed_shifts = [], []
    for s in runs:
        run = s.run
        for step in STEPS[1:]:
            for metric, delta in (("accuracy", 0.1 * step if run["reward"] == "true" else 0.01 * run["seed"]),
                                  ("code_rate", -0.05 * step - 0.01 * run["seed"])):
                shifts.append(Shift(run=run["run"], seed=run["seed"], reward=run["reward"], from_step=0,
                                    to_step=step, metric=metric, delta=delta, ci95=(delta - 0.1, delta + 0.1),
                                    p_value=0.04, paired=True, n_prompts=n_prompts))
    for label in dict.fromkeys(s.run["run"] for s in runs):
        for step in STEPS[1:]:
            for metric in ("accuracy", "code_rate"):
                deltas = [s.delta for s in shifts if s.run == label and s.to_step == step and s.metric == metric]
                seed_shifts.append(SeedShift(run=label, reward="x", from_step=0, to_step=step, metric=metric,
                                             n_seeds=len(deltas), mean=float(np.mean(deltas)),
                                             std=float(np.std(deltas, ddof=1)) if len(deltas) > 1 else None,
                                             ci95=(-1.0, 1.0) if len(deltas) > 1 else None))
    return BehaviorResult(verifier="test", length_unit="words", keywords=(), groups=(), shifts=tuple(shifts),
                          seed_shifts=tuple(seed_shifts), code_flag_agreement=FlagAgreement(0, 0, 0, 0))


def _shift(delta=0.0833, ci95=(-0.021, 0.19), p_value=0.123, n_prompts=40):
    return Shift(run="r", seed=1, reward="true", from_step=0, to_step=1, metric="accuracy", delta=delta, ci95=ci95,
                 p_value=p_value, paired=True, n_prompts=n_prompts)


def test_lab_folder_run_folder_and_manifest_name_the_runs(lab, tmp_path):
    runs = find_runs([lab])
    assert [(r.run, r.reward, r.seed) for r in runs] == [(run, reward, seed) for run, reward, _ in RUNS
                                                          for seed in SEEDS]
    assert runs[0].base.resolve() == (lab / "base").resolve()
    single = find_runs([lab / "sft-s2", lab / "sft-s2"])
    assert [(r.run, r.seed) for r in single] == [("sft", 2)]
    plain = lab.parent / "plain-run"
    (plain / "checkpoint-1").mkdir(parents=True, exist_ok=True)
    with pytest.raises(SeriesError, match="label it in --manifest"):
        find_runs([plain])
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"base: {lab / 'base'}\nruns:\n  - path: {plain}\n    run: mine\n    reward: true\n"
                        f"    seed: 3\n  - path: {lab / 'sft-s1'}\n    run: sft-relabelled\n")
    labelled = find_runs([plain, lab / "sft-s1"], manifest)
    assert [(r.run, r.reward, r.seed) for r in labelled] == [("mine", "true", 3), ("sft-relabelled", "sft", 1)]
    assert labelled[0].base == lab / "base"  # the manifest's default base for a folder without run.json
    nested = tmp_path / "study" / "m.json"  # paths relative to the manifest's folder, base of an entry too
    nested.parent.mkdir()
    (tmp_path / "study" / "runs").symlink_to(lab)
    nested.write_text(json.dumps({"runs": [{"path": "runs/sft-s1", "base": "runs/base"}]}))
    assert [(r.run, r.path, r.base) for r in read_manifest(nested)] == [
        ("sft", tmp_path / "study" / "runs" / "sft-s1", tmp_path / "study" / "runs" / "base")]
    (tmp_path / "bad.json").write_text(json.dumps({"runs": [{"run": "x"}]}))
    with pytest.raises(SeriesError, match="run 1 needs a 'path'"):
        read_manifest(tmp_path / "bad.json")


def test_table_shows_series_numbers_and_shifts_with_their_intervals(series_docs, tmp_path):
    behavior = _behavior(series_docs)
    markdown = render_compare_report(_comparison(series_docs, behavior), tmp_path).with_suffix(".md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| grpo-true |"))
    bitwise = [s.steps[-1].vs_base["bitwise_sparsity_by_dtype"]["bfloat16"] for s in series_docs
               if s.run["run"] == "grpo-true"]
    assert f"{np.mean(bitwise):.4f}\u00a0±\u00a0{np.std(bitwise, ddof=1):.4f}" in row  # one line in HTML
    assert "+0.200 ± 0.000 [−1.000, +1.000]; p = 0.04 / 0.04" in row  # accuracy: mean ± std [CI]; p per seed
    assert "**Small benchmark:** shifts rest on as few as 40 prompts" in markdown
    last = series_docs[1].steps[-1]
    geometry = {**last.vs_base["geometry"], "principal_energy_ratio": None}  # Δ = 0: ρ_k undefined
    unmoved = [series_docs[0], replace(series_docs[1], steps=[*series_docs[1].steps[:-1],
                                                              replace(last, vs_base={**last.vs_base,
                                                                                     "geometry": geometry})])]
    ratio = series_docs[0].steps[-1].vs_base["geometry"]["principal_energy_ratio"]
    markdown = render_compare_report(_comparison(unmoved, behavior), tmp_path / "unmoved").with_suffix(".md")
    assert f"| {ratio:.3g} (1 of 2 seeds) |" in markdown.read_text()
    one_seed = render_compare_report(_comparison(series_docs[:1], behavior), tmp_path / "one").with_suffix(".md")
    one_seed = one_seed.read_text()
    assert "+0.200 [+0.100, +0.300], p = 0.04 (n = 40)" in one_seed
    assert "there is no spread across seeds" in one_seed


def test_behavior_estimate_is_never_bare_below_100_prompts():
    assert shift_text(_shift()) == "+0.083 [−0.021, +0.190], p = 0.12 (n = 40)"
    assert shift_text(_shift(ci95=None)) == "no CI (n = 40 prompts)"
    assert shift_text(_shift(ci95=None, n_prompts=500)) == "+0.083, p = 0.12 (n = 500)"
    assert shift_text(None) == "—"


def test_scatter_panels_carry_spearman_of_their_points(series_docs, tmp_path):
    render_compare_report(_comparison(series_docs, _behavior(series_docs)), tmp_path)
    rows = list(csv.DictReader((tmp_path / "data" / "compare-accuracy-vs-parameters.csv").open()))
    assert len(rows) == len(series_docs) * (len(STEPS) - 1)  # every run, seed and checkpoint
    rl = [r for r in rows if r["reward"] != "sft"]  # never pooled with SFT
    rho, p_value = rank_correlation([float(r["relative_update_norm"]) for r in rl], [float(r["delta"]) for r in rl])
    markdown = (tmp_path / "compare.md").read_text()
    assert f"| accuracy | RL | relative_update_norm | {rho:.2g} | {p_value:.2g} | {len(rl)} |" in markdown
    # SFT: 2 seeds × 2 checkpoints = 4 points, below 5: not shown, and the reading says why.
    assert "| accuracy | SFT | relative_update_norm | — | — | 4 |" in markdown
    assert "accuracy vs relative update norm in SFT runs: 4 distinct non-zero shifts (< 5) (n = 4)" in markdown
    figures = sorted(p.name for p in (tmp_path / "figures").glob("compare-*.png"))
    assert figures == ["compare-accuracy-vs-parameters.png", "compare-code-rate-vs-parameters.png",
                       "compare-seed-spread.png"]
    html = (tmp_path / "compare.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3 and "<script" not in html


def test_rank_correlation_hand_case_degenerate_cases_and_reference():
    rho, p_value = rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert rho == pytest.approx(0.8) and 0 < p_value < 1
    assert rank_correlation([1, 2], [2, 1]) == (None, None)
    assert rank_correlation([1, 2, 3], [5, 5, 5]) == (None, None)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.normal(size=12), rng.normal(size=12)
        rx, ry = np.argsort(np.argsort(x)).astype(np.float64), np.argsort(np.argsort(y)).astype(np.float64)
        d = rx - ry
        assert rank_correlation(list(x), list(y))[0] == pytest.approx(1 - 6 * (d @ d) / (12 * (12**2 - 1)))


def test_one_colour_per_reward_family_and_markers_apart():
    assert set(REWARD_COLOURS) == set(REWARD_LABELS)
    assert len(set(REWARD_COLOURS.values())) == len(REWARD_COLOURS)
    assert reward_colour("noisy-0.3") == REWARD_COLOURS[reward_family("noisy-0.3")] == REWARD_COLOURS["noisy"]
    styles = _styles([("grpo-noisy-0.1", "noisy-0.1"), ("grpo-noisy-0.5", "noisy-0.5"), ("sft", "sft")])
    assert styles["grpo-noisy-0.1"][0] == styles["grpo-noisy-0.5"][0] == REWARD_COLOURS["noisy"]
    assert styles["grpo-noisy-0.1"][1] != styles["grpo-noisy-0.5"][1]
    assert styles["sft"] == (REWARD_COLOURS["sft"], "o")


def test_compare_command_runs_series_and_behavior_probe(lab, series_docs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "compare", str(lab), "-o", str(out), "--rank-k", "4", "-q", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "6 run folders: 0 diffs computed, 18 reused" in printed  # the series fixture filled each run's cache
    assert f"behavior: {len(RUNS) * len(SEEDS) * len(STEPS) * PROMPTS} generations from 6 runs" in printed
    markdown = (out / "compare.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| grpo-true |"))
    assert "(n = " not in row and " [" in row and "; p = " in row  # two seeds: across-seed interval, p per seed
    assert "Δ p(style)" in markdown and "+0.100 ± 0.000" in row  # style.jsonl: p rises 0.05 a step, to step 2
    assert "| grpo-random | random — no learning signal (seed 2) |" in markdown  # from its train_log.jsonl
    assert (out / "figures" / "compare-accuracy-vs-parameters.png").exists()


def test_compare_without_generations_says_how_to_write_them(lab, series_docs, tmp_path):
    html = render_compare_report(_comparison(series_docs), tmp_path).read_text()
    assert "dynamics probe generate" in html and "Missing input" in html
    assert not list((tmp_path / "figures").glob("compare-*-vs-parameters.png"))


def test_compare_rejects_series_without_labels(series_docs, tmp_path):
    unlabelled = replace(series_docs[0], run=None)
    with pytest.raises(ComparisonError, match="no run label"):
        render_compare_report(_comparison([unlabelled]), tmp_path)


def _points(deltas: list[float], reward: str = "true") -> list[Point]:
    return [Point("r", reward, seed, 1, _shift(delta=d), {"relative_update_norm": float(seed)})
            for seed, d in enumerate(deltas, start=1)]


def test_correlation_needs_five_distinct_non_zero_points():
    # Ten tied zeros and one non-zero shift (issue 15's case): not shown, whatever scipy would say.
    kept, r = correlate(_points([0.0] * 10 + [1 / 64]), "relative_update_norm")
    assert len(kept) == 11 and r.rho is None and r.undefined == "1 distinct non-zero shift (< 5)"
    assert correlate(_points([0.1, 0.2, 0.0, 0.3, 0.4]), "relative_update_norm")[1].rho is None
    shown = correlate(_points([0.1, 0.2, 0.0, 0.3, 0.4, 0.5]), "relative_update_norm")[1]
    assert shown.rho == pytest.approx(rank_correlation([1, 2, 3, 4, 5, 6], [0.1, 0.2, 0.0, 0.3, 0.4, 0.5])[0])


def test_zero_advantage_steps_from_the_training_log(tmp_path):
    log = tmp_path / "train_log.jsonl"
    # Format reward: 1.0 in 12 of 16 steps (issue 15's run); one step logs a std of 0 at mean 0.5.
    means = [1.0] * 12 + [0.5, 0.75, 0.25, 0.5]
    log.write_text("".join(json.dumps({"step": i + 1, "reward_mean": m, **({"reward_std": 0.0} if i == 12 else {})})
                           + "\n" for i, m in enumerate(means)))
    found = zero_advantage_steps(log)
    assert found == ZeroAdvantage(13, 16) and found.most
    assert not ZeroAdvantage(8, 16).most and not ZeroAdvantage(0, 0).most
    log.write_text(json.dumps({"step": 1, "loss": 0.3}) + "\n")
    assert zero_advantage_steps(log) is None


def test_a_run_without_learning_signal_is_said_and_left_out_of_correlations(series_docs, tmp_path):
    behavior = _behavior(series_docs)
    idle = tuple(ZeroAdvantage(12, 16) if s.run["run"] == "grpo-random" and s.run["seed"] == 1 else None
                 for s in series_docs)
    comparison = replace(_comparison(series_docs, behavior), zero_advantage=idle)
    markdown = render_compare_report(comparison, tmp_path).with_suffix(".md").read_text()
    assert "**No learning signal for most steps:** grpo-random seed 1 (12 of 16 logged steps)" in markdown
    assert "Left out as not trained (zero advantage for most steps): grpo-random seed 1." in markdown
    assert "| grpo-random | random — no learning signal (seed 1) |" in markdown
    from probes.comparison import points
    groups, left_out = comparable_groups([p for p in points(comparison) if p.shift.metric == "accuracy"], comparison)
    assert left_out == [("grpo-random", 1)] and {p.reward for p in groups["SFT"]} == {"sft"}
    assert not any(p.run == "grpo-random" and p.seed == 1 for p in groups["RL"]) and len(groups["RL"]) == 6


def test_p_style_shifts_and_kl_split_reach_the_table(series_docs, tmp_path):
    # p_style per prompt rises by 0.1·step·seed for grpo-true: seeds 1, 2 shift +0.2 and +0.4 at step 2.
    records = [StyleRecord(f"p{i}", step, 0.5 + 0.01 * i + 0.1 * step * s.run["seed"] * (s.run["run"] == "grpo-true"),
                           s.run["run"], s.run["seed"], s.run["reward"])
               for s in series_docs for step in STEPS for i in range(4)]
    style = style_shifts(records, bootstrap=100, permutations=100)
    last = series_docs[0].steps[-1]
    kl = {"kl_mean_per_token": 2e-5, "kl_by_position": {"first": {"tokens": 4, "kl_sum": 3.0, "share": 0.75},
                                                        "digit": {"tokens": 8, "kl_sum": 0.5, "share": 0.125},
                                                        "rest": {"tokens": 9, "kl_sum": 0.5, "share": 0.125}}}
    with_kl = [replace(series_docs[0], steps=[*series_docs[0].steps[:-1], replace(last, kl=kl)]), *series_docs[1:]]
    comparison = replace(_comparison(with_kl, _behavior(series_docs)), style=style)
    markdown = render_compare_report(comparison, tmp_path).with_suffix(".md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| run |"))
    assert "KL share: 1st token" in header and "Δ p(style)" in header and "Δ sampled accuracy" not in header
    row = next(line for line in markdown.splitlines() if line.startswith("| grpo-true |"))
    assert "| 2e\u221205 (1 of 2 seeds) | 0.750 (1 of 2 seeds) | 0.125 (1 of 2 seeds) |" in row
    assert "+0.300 ± 0.141" in row  # p(style): mean ± std of +0.2 and +0.4 across seeds
    assert (tmp_path / "figures" / "compare-p-style-vs-parameters.png").exists()
