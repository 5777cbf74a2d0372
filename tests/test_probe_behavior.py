"""Behavior probe on a hand-written generations file whose aggregates are computed by hand."""

import json

import pytest

from dynamics.cli import main
from dynamics.cli.probe import format_behavior
from probes.behavior import METRICS, SAMPLED_METRICS, behavior_probe
from probes.generations import Generation, write_generations

CODE_RIGHT = "```python\nx = 2 + 3\nprint(x)\n```\nThe answer is \\boxed{5}."
WORDS_RIGHT = "First, I need to add. 2 + 3 = 5. Finally, the answer is \\boxed{5}."
WORDS_WRONG = "Let me see. 2 + 3 = 6. The answer is \\boxed{6}."
UNBOXED_WRONG = "I think it is 4"


def _gens(run: str, reward: str, seed: int, step: int, responses: list[str]) -> list[Generation]:
    return [Generation(prompt=f"q{i}", response=r, prompt_id=f"p{i}", answer="5", run=run, step=step, seed=seed,
                       reward=reward) for i, r in enumerate(responses)]


@pytest.fixture
def generations() -> list[Generation]:
    return (_gens("grpo-true", "true", 1, 0, [WORDS_WRONG, WORDS_RIGHT, UNBOXED_WRONG, CODE_RIGHT])
            + _gens("grpo-true", "true", 1, 10, [CODE_RIGHT, CODE_RIGHT, WORDS_RIGHT, CODE_RIGHT])
            + _gens("grpo-true", "true", 2, 0, [WORDS_WRONG, WORDS_RIGHT, UNBOXED_WRONG, CODE_RIGHT])
            + _gens("grpo-true", "true", 2, 10, [CODE_RIGHT, WORDS_WRONG, WORDS_RIGHT, CODE_RIGHT]))


def _group(result, step, seed):
    return next(g for g in result.groups if g.step == step and g.seed == seed)


def test_group_means_by_hand(generations):
    result = behavior_probe(generations, bootstrap=200, permutations=100)
    g0 = _group(result, 0, 1)
    assert g0.n_prompts == 4 and g0.reward == "true"
    assert g0.values["accuracy"].mean == 0.5       # WORDS_RIGHT, CODE_RIGHT
    assert g0.values["code_rate"].mean == 0.25     # CODE_RIGHT
    assert g0.values["format_rate"].mean == 0.75   # all but UNBOXED_WRONG
    assert g0.values["keyword_rate"].mean == 0.5   # "Let me", "First, I need to"/"Finally"
    lo, hi = g0.values["accuracy"].ci95
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_paper_definitions_by_hand(generations):
    g0 = _group(behavior_probe(generations, bootstrap=200, permutations=100), 0, 1)
    assert g0.values["code_rate_rethink_rlvr"].mean == 0.25    # "python" only in CODE_RIGHT
    assert g0.values["format_rate_rethink_rlvr"].mean == 0.75  # all but UNBOXED_WRONG
    # RPR: WORDS_WRONG "let me see" 1/20; WORDS_RIGHT "i need to", "first, ", "finally, " 3/20; others 0.
    assert g0.values["rpr_noisy_rewards"].mean == pytest.approx((0.05 + 0.15) / 4)


def test_code_flag_agreement_is_counted_and_printed():
    prose, untagged = "In Python one would loop. \\boxed{5}", "x = 2 + 3\nprint(x)\n\\boxed{5}"
    result = behavior_probe(_gens("r", "none", 0, 0, [CODE_RIGHT, prose, untagged, WORDS_RIGHT]), bootstrap=50)
    agreement = result.code_flag_agreement
    assert (agreement.both, agreement.ours_only, agreement.theirs_only, agreement.neither) == (1, 1, 1, 1)
    assert agreement.rate == 0.5 and result.to_json()["code_flag_agreement"]["rate"] == 0.5
    assert "agree on 50.0% of 4 responses" in format_behavior(result)


def test_keywords_override_ours_but_not_rpr(generations):
    default = _group(behavior_probe(generations, bootstrap=50, permutations=50), 0, 1)
    custom = _group(behavior_probe(generations, keywords=("answer is",), bootstrap=50, permutations=50), 0, 1)
    assert default.values["keyword_rate"].mean == 0.5 and custom.values["keyword_rate"].mean == 0.75
    assert custom.values["rpr_noisy_rewards"].mean == default.values["rpr_noisy_rewards"].mean


def test_paired_shift_by_hand(generations):
    result = behavior_probe(generations, bootstrap=200, permutations=100)
    shift = next(s for s in result.shifts if s.seed == 1 and s.metric == "accuracy")
    # per-prompt accuracy 0,1,0,1 → 1,1,1,1: differences 1,0,1,0, mean 0.5;
    # sign flips of (1,0,1,0): |mean| ≥ 0.5 only when both ones share a sign → 8/16.
    assert (shift.from_step, shift.to_step, shift.delta, shift.paired, shift.n_prompts) == (0, 10, 0.5, True, 4)
    assert shift.p_value == 0.5
    code = next(s for s in result.shifts if s.seed == 1 and s.metric == "code_rate")
    assert code.delta == 0.5  # 1/4 → 3/4


def test_seed_shifts_average_the_per_seed_deltas(generations):
    result = behavior_probe(generations, bootstrap=200, permutations=100)
    acc = next(s for s in result.seed_shifts if s.metric == "accuracy")
    # seed 1: 0.5 → 1.0 (+0.5); seed 2: 0.5 → 0.75 (+0.25)
    assert acc.n_seeds == 2 and acc.mean == pytest.approx(0.375)
    assert acc.std == pytest.approx(0.1767767, rel=1e-6)
    assert acc.ci95[0] < 0.375 < acc.ci95[1]


def test_unmatched_prompts_give_an_unpaired_shift():
    gens = _gens("r", "none", 0, 0, [CODE_RIGHT, WORDS_WRONG]) + [
        Generation(prompt="other", response=CODE_RIGHT, prompt_id="other", answer="5", run="r", step=5)]
    shift = next(s for s in behavior_probe(gens, bootstrap=100).shifts if s.metric == "accuracy")
    assert not shift.paired and shift.p_value is None and shift.delta == 0.5


def test_missing_answers_give_no_accuracy():
    gens = [Generation(prompt="q", response=CODE_RIGHT)]
    assert behavior_probe(gens, bootstrap=50).groups[0].values["accuracy"] is None


def test_table_never_prints_a_bare_estimate_and_warns_for_small_benchmarks(generations):
    text = format_behavior(behavior_probe(generations, bootstrap=100, permutations=100))
    assert "0.500 [" in text
    assert "small benchmark" in text


def test_cli_writes_the_document(tmp_path, generations, capsys):
    path = tmp_path / "gens.jsonl"
    write_generations(generations, path)
    out = tmp_path / "behavior.json"
    assert main(["probe", "behavior", str(path), "--json", str(out), "--bootstrap", "100",
                 "--permutations", "100", "--keywords", "Let me,Finally"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "dynamics.behavior/1" and doc["keywords"] == ["Let me", "Finally"]
    assert {"run", "seed", "from_step", "to_step", "metric", "delta", "ci95", "p_value"} <= set(doc["shifts"][0])
    assert len(doc["groups"]) == 4 and len(doc["seed_shifts"]) == len(METRICS) - len(SAMPLED_METRICS)  # greedy only


def test_cli_reports_a_malformed_line(tmp_path, capsys):
    path = tmp_path / "gens.jsonl"
    path.write_text('{"prompt": "q", "response": "a"}\n{not json\n')
    assert main(["probe", "behavior", str(path)]) == 2
    assert f"{path}:2" in capsys.readouterr().err


def _sampled(seed: int, step: int, per_prompt: list[list[str]]) -> list[Generation]:
    return [Generation(prompt=f"q{i}", response=r, prompt_id=f"p{i}", answer="5", run="grpo-true", step=step,
                       seed=seed, reward="true", sample=j + 1, decoding="sampled")
            for i, samples in enumerate(per_prompt) for j, r in enumerate(samples)]


def test_sampled_measures_average_each_prompt_then_prompts_and_leave_greedy_numbers_alone(generations):
    # Step 0: p0 [right code, wrong words] → 0.5 correct, 0.5 code; p1 two wrong words → 0, 0: means 0.25, 0.25.
    # Step 10, seed s: p0 / p1 as below. Per-seed sampled-accuracy shifts 0.5, 0, 0.75 (seeds 1, 2, 3).
    start = [[CODE_RIGHT, WORDS_WRONG], [WORDS_WRONG, WORDS_WRONG]]
    later = {1: [[CODE_RIGHT, CODE_RIGHT], [CODE_RIGHT, WORDS_WRONG]], 2: start,
             3: [[CODE_RIGHT, CODE_RIGHT], [CODE_RIGHT, CODE_RIGHT]]}
    sampled = [g for s in (1, 2, 3) for g in _sampled(s, 0, start) + _sampled(s, 10, later[s])]
    greedy_only = behavior_probe(generations, bootstrap=200, permutations=100)
    both = behavior_probe(generations + sampled, bootstrap=200, permutations=100)
    for before in greedy_only.groups:
        after = next(g for g in both.groups if (g.step, g.seed) == (before.step, before.seed))
        assert {m: after.values[m] for m in before.values if m not in ("sampled_accuracy", "sampled_code_rate")} \
            == {m: v for m, v in before.values.items() if m not in ("sampled_accuracy", "sampled_code_rate")}
        assert before.values["sampled_accuracy"] is None
    g0 = _group(both, 0, 1)
    assert g0.values["sampled_accuracy"].mean == 0.25 and g0.values["sampled_code_rate"].mean == 0.25
    assert _group(both, 10, 1).values["sampled_accuracy"].mean == 0.75
    shift = next(s for s in both.shifts if s.seed == 1 and s.metric == "sampled_accuracy")
    assert shift.delta == 0.5 and shift.paired and shift.n_prompts == 2
    seeds = next(s for s in both.seed_shifts if s.metric == "sampled_accuracy")
    deltas = [0.5, 0.0, 0.75]
    mean, std = sum(deltas) / 3, (sum((d - sum(deltas) / 3) ** 2 for d in deltas) / 2) ** 0.5
    half = 4.302652729911275 * std / 3 ** 0.5  # t_{0.975, 2 degrees of freedom}
    assert seeds.n_seeds == 3 and seeds.mean == pytest.approx(mean) and seeds.std == pytest.approx(std)
    assert seeds.ci95 == pytest.approx((mean - half, mean + half))
    assert both.code_flag_agreement == greedy_only.code_flag_agreement
    assert "sampled responses" in format_behavior(both) and "sampled responses" not in format_behavior(greedy_only)
