"""The lab: rewards on hand-written responses, the problem generator, GRPO's objective, and a micro study whose
checkpoints load with transformers, diff with dynamics, and whose generations read back."""

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lab_fixture import MICRO_REWARDS, MICRO_SEEDS, lab_dir, micro_lab_config  # noqa: F401
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from dynamics import diff
from dynamics.cli import main
from dynamics.metrics import derived_metrics
from probes.generations import read_generations
from probes.lab.checkpoints import load_for_training
from probes.lab.grpo import (
    GRPOConfig,
    exact_token_kl,
    first_token_style,
    group_advantages,
    kl_k3,
    policy_objective,
    sequence_mean,
    train_grpo,
)
from probes.lab.pretrain import BASES
from probes.lab.recorder import Evaluation, RunLabels, RunRecorder
from probes.lab.rewards import RewardError, majority_label, make_reward
from probes.lab.study import LAB_PRESETS, LabError, ablated, last_checkpoint, run_specs, run_study
from probes.lab.tasks import (
    NO_SLIPS,
    STYLE_CODE_PROBABILITY,
    TEMPLATES,
    Problem,
    Slips,
    Step,
    code_trace,
    corpus_trace,
    has_carry_or_borrow,
    language_trace,
    make_problems,
    split_of,
)
from probes.lab.tokenizer import format_prompt, train_tokenizer
from probes.sampling import decode_responses, generate, response_mask, token_log_probs
from probes.style import read_style_records, style_probability

RIGHT = "First, 2 + 3 = 5. Finally, the answer is \\boxed{5}."
WRONG = "```python\ntotal = 2\ntotal = total + 3  # 6\nprint(total)\n```\nThe answer is \\boxed{6}."
NO_ANSWER = "First, add the pens. Finally, the answer is"  # no box and no number: no final answer
EMPTY_BOX = "The answer is \\boxed{}."
RESPONSES = [RIGHT, WRONG, NO_ANSWER, EMPTY_BOX]
ANSWERS = ["5"] * 4


# Rewards ---------------------------------------------------------------------------------------------------

def test_true_reward_pays_only_the_right_answer() -> None:
    assert make_reward("true", 0, 1)(RESPONSES, ANSWERS) == [1.0, 0.0, 0.0, 0.0]


def test_format_reward_pays_any_extractable_box_even_an_empty_one() -> None:
    # Rethink_RLVR: a boxed answer can be extracted; `\boxed{}` extracts "" and counts, no box does not.
    assert make_reward("format", 0, 1)(RESPONSES, ANSWERS) == [1.0, 1.0, 0.0, 1.0]


def test_incorrect_reward_pays_only_the_wrong_majority_label() -> None:
    samples = [WRONG, WRONG, RIGHT, NO_ANSWER]  # final answers 6, 6, 5, none
    label = majority_label(samples)
    assert label == "6" and majority_label([NO_ANSWER]) is None
    # The study trains on the problem with answer = the wrong label: only a response answering 6 is paid.
    assert make_reward("incorrect", 0, 1)(RESPONSES, [label] * 4) == [0.0, 1.0, 0.0, 0.0]


def test_random_reward_is_seeded_and_ignores_the_response() -> None:
    first = make_reward("random", 7, 1)([RIGHT] * 400, ["5"] * 400)
    again = make_reward("random", 7, 1)([WRONG] * 400, ["5"] * 400)
    other = make_reward("random", 8, 1)([RIGHT] * 400, ["5"] * 400)
    assert first == again and first != other
    assert set(first) == {0.0, 1.0} and 0.4 < sum(first) / 400 < 0.6
    rare = make_reward("random-0.1", 7, 1)([RIGHT] * 1000, ["5"] * 1000)
    assert 0.07 < sum(rare) / 1000 < 0.13


def test_noisy_reward_flips_whole_groups() -> None:
    group = [RIGHT, WRONG, RIGHT, NO_ANSWER]  # true rewards 1 0 1 0
    assert make_reward("noisy-0", 1, 4)(group * 2, ["5"] * 8) == [1.0, 0.0, 1.0, 0.0] * 2
    assert make_reward("noisy-1", 1, 4)(group * 2, ["5"] * 8) == [0.0, 1.0, 0.0, 1.0] * 2
    rewards = make_reward("noisy-0.3", 1, 4)(group * 500, ["5"] * 2000)
    groups = [tuple(rewards[i:i + 4]) for i in range(0, 2000, 4)]
    assert set(groups) == {(1.0, 0.0, 1.0, 0.0), (0.0, 1.0, 0.0, 1.0)}  # never a partly flipped group
    assert 0.25 < groups.count((0.0, 1.0, 0.0, 1.0)) / 500 < 0.35
    with pytest.raises(ValueError, match="groups of 4"):
        make_reward("noisy-0.3", 1, 4)(group[:3], ["5"] * 3)


def test_rpr_caps_at_one_penalises_repetition_and_needs_a_box() -> None:
    rpr = make_reward("rpr", 0, 1)
    language = "First, 2 + 3 = 5. Then, 5 - 1 = 4. Finally, the answer is \\boxed{4}."
    phrases = ("i need to, we need to, wait, alternatively, let me check, let me see, let's focus on, we know that, "
               "we can observe , we can see , let me try, let's try, let us try, first, firstly, next, finally, "
               "let us first, let's first, let me first, try again, still not, ")
    many = f"{phrases}so \\boxed{{4}}"  # 22 distinct phrases present: min(1, 22/20) = 1
    repeated = " ".join(["a b c d e"] * 10) + " First, 2 + 3 = 5. Finally, \\boxed{5}"  # 50 words + 10
    # Lab traces: "first, " and "finally, " → 2/20; the code style has none → 0; no box → 0.
    assert rpr([language, WRONG, "First, 2 + 3 = 5. Finally, 5"], ["4"] * 3) == [0.1, 0.0, 0.0]
    assert rpr([many], ["4"]) == [1.0]
    words = repeated.split()
    ngrams = [tuple(words[i:i + 20]) for i in range(len(words) - 19)]
    repeats = sum(1 for g in set(ngrams) if ngrams.count(g) > 1) / len(ngrams)
    assert repeats > 0 and rpr([repeated], ["5"]) == [pytest.approx(max(0.0, 0.1 - repeats))]


@pytest.mark.parametrize("label", ["noisy-1.5", "noisy-x", "random-2", "majority", "sft"])
def test_unknown_reward_label_raises(label: str) -> None:
    with pytest.raises(RewardError, match=label):
        make_reward(label, 0, 1)


# Tasks and tokenizer ---------------------------------------------------------------------------------------

def test_same_seed_draws_the_same_problems() -> None:
    assert make_problems(50, "train", 3, 20) == make_problems(50, "train", 3, 20)
    assert make_problems(50, "train", 3, 20) != make_problems(50, "train", 4, 20)


def test_train_and_heldout_never_share_a_problem() -> None:
    train = make_problems(2000, "train", 0, 9)
    heldout = make_problems(300, "heldout", 0, 9)
    assert not {p.text for p in train} & {p.text for p in heldout}
    assert all(split_of(p.text) == "heldout" for p in heldout)
    assert len({p.text for p in train}) == 2000


def test_answers_are_the_exact_result_of_the_steps() -> None:
    for p in make_problems(300, "train", 1, 30):
        value = p.steps[0].left
        for step in p.steps:
            assert step.left == value
            value = {"+": value + step.right, "-": value - step.right, "*": value * step.right}[step.op]
            assert step.result == value >= 0
        assert p.answer == str(value)


def test_traces_spell_out_steps_and_box_the_result() -> None:
    steps = make_problems(1, "train", 2, 9)[0].steps
    result = steps[-1].result
    assert language_trace(steps).startswith("First, ")
    assert language_trace(steps).endswith(f"Finally, the answer is \\boxed{{{result}}}.")
    code = code_trace(steps)
    assert code.startswith("```python\n") and f"\n```\nThe answer is \\boxed{{{result}}}." in code


def _corpus_accuracy(base: str, problems: list[Problem]) -> tuple[float, dict[str, float]]:
    """(share of code traces, share of right traces per style) of the base's corpus writer."""
    rng = random.Random(0)
    corpus = BASES[base]
    right: dict[str, list[bool]] = {"code": [], "language": []}
    for p in problems:
        style, text = corpus_trace(p, rng, corpus.slips, corpus.code_probability)
        right[style].append(text.endswith(f"\\boxed{{{p.answer}}}."))
    share = {style: sum(r) / len(r) if r else float("nan") for style, r in right.items()}
    return len(right["code"]) / len(problems), share


def test_bases_differ_in_which_style_slips_and_how_often_code_is_written() -> None:
    problems = make_problems(3000, "train", 5, 20)
    helps_code, helps = _corpus_accuracy("code-helps", problems)
    hurts_code, hurts = _corpus_accuracy("code-hurts", problems)
    no_code, _ = _corpus_accuracy("no-code", problems)
    template_code, template = _corpus_accuracy("template", problems)
    assert helps["code"] > helps["language"] + 0.2 and hurts["language"] > hurts["code"] + 0.2
    assert abs(helps_code - STYLE_CODE_PROBABILITY) < 0.03 and abs(hurts_code - STYLE_CODE_PROBABILITY) < 0.03
    assert no_code == 0.0 and template["code"] > template["language"] + 0.2 and 0.5 < template_code < 0.9


def test_soft_style_preference_is_the_same_for_every_template() -> None:
    rng = random.Random(1)
    problems = make_problems(6000, "train", 6, 20)
    for template in TEMPLATES:
        drawn = [corpus_trace(p, rng, NO_SLIPS, STYLE_CODE_PROBABILITY)[0] for p in problems
                 if p.template == template.name]
        assert abs(drawn.count("code") / len(drawn) - STYLE_CODE_PROBABILITY) < 0.06
    assert any(t.code_probability < 0.5 for t in TEMPLATES) and any(t.code_probability > 0.5 for t in TEMPLATES)


def test_language_slip_drops_the_carry_and_no_slips_writes_the_truth() -> None:
    assert has_carry_or_borrow(Step(48, "+", 7, 55)) and has_carry_or_borrow(Step(42, "-", 7, 35))
    assert not has_carry_or_borrow(Step(41, "+", 7, 48)) and not has_carry_or_borrow(Step(4, "*", 7, 28))
    problem = Problem(text="t", steps=(Step(48, "+", 7, 55), Step(55, "-", 3, 52)), answer="52", template="buy_buy")
    always = Slips(random=0.0, language_carry=1.0)
    rng = random.Random(0)
    written = {corpus_trace(problem, rng, always, 0.5)[1] for _ in range(50)}
    assert "First, 48 + 7 = 45. Then, 45 - 3 = 42. Finally, the answer is \\boxed{42}." in written
    assert all("55" in t for t in written if t.startswith("```python"))  # code keeps the carry
    code_forgets = Slips(random=0.0, language_carry=0.0, code_carry=1.0)
    written = {corpus_trace(problem, rng, code_forgets, 0.5)[1] for _ in range(50)}
    assert any(t.startswith("```python") and "# 45" in t and t.endswith("\\boxed{42}.") for t in written)
    assert all(t.endswith("\\boxed{52}.") for t in written if t.startswith("First"))  # language keeps it
    assert all(t.endswith("\\boxed{52}.") for t in (corpus_trace(problem, rng, NO_SLIPS, 0.5)[1] for _ in range(50)))


def test_tokenizer_splits_digits_and_round_trips_code(tmp_path: Path) -> None:
    problems = make_problems(100, "train", 0, 30)
    texts = [format_prompt(p.text) + code_trace(p.steps) for p in problems]
    tokenizer = train_tokenizer(texts, 300)
    assert all(len(tokenizer.decode([t]).strip()) <= 1 for t in tokenizer("1234 567")["input_ids"])
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.decode(loaded(texts[0])["input_ids"]) == texts[0]
    assert loaded.eos_token == "<|endoftext|>" and loaded.pad_token_id != loaded.eos_token_id


# GRPO objective ----------------------------------------------------------------------------------------------

def test_group_advantages_normalise_within_each_group() -> None:
    advantages = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    std = torch.tensor([1.0, 0.0, 1.0, 0.0]).std().item()  # Bessel: sqrt(1/3)
    assert torch.allclose(advantages[:4], torch.tensor([0.5, -0.5, 0.5, -0.5]) / (std + 1e-4))
    assert torch.equal(advantages[4:], torch.zeros(4))


def test_clipped_objective_caps_the_ratio_on_the_side_the_advantage_favours() -> None:
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    mask = torch.ones(1, 3)
    up = policy_objective(new, old, torch.tensor([1.0]), mask, clip_epsilon=0.2, clip=True)
    # A > 0: min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(1.1, 1.1) = 1.1; loss = −those.
    assert torch.allclose(up.per_token, torch.tensor([[-1.2, -0.5, -1.1]]))
    assert (up.clip_fraction_high.item(), up.clip_fraction_low.item()) == (pytest.approx(1 / 3), 0.0)
    down = policy_objective(new, old, torch.tensor([-1.0]), mask, clip_epsilon=0.2, clip=True)
    # A < 0: min(−1.5, −1.2) = −1.5; min(−0.5, −0.8) = −0.8; −1.1.
    assert torch.allclose(down.per_token, torch.tensor([[1.5, 0.8, 1.1]]))
    assert (down.clip_fraction_low.item(), down.clip_fraction_high.item()) == (pytest.approx(1 / 3), 0.0)


def test_clip_off_is_the_unclipped_ratio_times_advantage() -> None:
    ratio = torch.tensor([[1.5, 0.5, 1.1], [3.0, 0.9, 0.1]])
    advantages = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    off = policy_objective(torch.log(ratio), torch.zeros(2, 3), advantages, mask, clip_epsilon=0.2, clip=False)
    assert torch.allclose(off.per_token, torch.tensor([[-3.0, -1.0, -2.2], [3.0, 0.9, 0.1]]))
    # Where the clip would bind, over the 5 masked tokens: 1.5 with A > 0 (high); 3.0 with A < 0 is not clipped
    # (min picks the unclipped −3.0), 0.1 is masked out.
    assert off.clip_fraction_high.item() == pytest.approx(1 / 5) and off.clip_fraction_low.item() == 0.0
    assert sequence_mean(off.per_token, mask).item() == pytest.approx(((-3.0 - 1.0 - 2.2) / 3 + (3.0 + 0.9) / 2) / 2)


def test_exact_token_kl_is_the_kl_of_the_next_token_distributions() -> None:
    p = torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]])
    q = torch.tensor([[[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]]])
    mask = torch.tensor([[1.0, 0.0]])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)  # Σ p log(p/q) at the one masked-in position
    assert exact_token_kl(p.log(), q.log(), mask).item() == pytest.approx(expected)
    assert exact_token_kl(p.log(), p.log(), torch.ones(1, 2)).item() == 0.0


def test_first_token_style_is_entropy_and_code_mass_of_the_first_position() -> None:
    first = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]])
    log_softmax = torch.stack([first, torch.full((2, 3), 1 / 3)], dim=1).log()  # (2 rows, 2 positions, 3 tokens)
    entropy, p_code = first_token_style(log_softmax, code_ids=[1])
    expected = -sum(float(v) * math.log(v) for row in first.tolist() for v in row) / 2
    assert entropy == pytest.approx(expected) and p_code == pytest.approx((0.25 + 0.6) / 2)


def test_grpo_config_refuses_mini_batches_that_split_a_rollout_unevenly() -> None:
    with pytest.raises(ValueError, match="must divide"):
        GRPOConfig(steps=1, rollout_prompts=6, group_size=2, updates_per_rollout=4, lr=1e-6, max_new_tokens=4)


def _previous_one_iteration_grpo(model, tokenizer, problems, reward, steps: int, prompts: int, group_size: int,
                                 lr: float, max_new_tokens: int, rng: random.Random) -> None:
    """The lab's GRPO before mini-batches, at inner_iterations = 1, written out."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        chosen = rng.sample(problems, prompts)
        batch = generate(model, tokenizer, [format_prompt(p.text) for p in chosen for _ in range(group_size)],
                         max_new_tokens, sample=True, temperature=1.0)
        answers = [p.answer for p in chosen for _ in range(group_size)]
        advantages = group_advantages(torch.tensor(reward(decode_responses(tokenizer, batch), answers)), group_size)
        mask = batch.response_mask.float()
        with torch.no_grad():
            old = token_log_probs(model, batch)
        ratio = torch.exp(token_log_probs(model, batch) - old)
        a = advantages[:, None]
        loss = sequence_mean(-torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def _micro_grpo(lab_dir: Path, tmp_path: Path, settings: GRPOConfig, seed: int = 3):  # noqa: F811
    config = micro_lab_config()
    model, tokenizer = load_for_training(lab_dir / "base-code-helps", torch.device("cpu"))
    problems = make_problems(config.train_problems, "train", 0, config.max_operand)
    heldout = make_problems(4, "heldout", 1, config.max_operand)
    recorder = RunRecorder(tmp_path / "run", RunLabels("r", "random", seed), tokenizer, heldout,
                           replace(config.evaluation, samples_per_prompt=0), 1000, False)
    recorder.start(model, Evaluation([], []))
    torch.manual_seed(seed)
    train_grpo(model, tokenizer, problems, make_reward("random", seed, settings.group_size), settings,
               random.Random(seed), recorder, False, "test")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    return model, tokenizer, problems, log


def test_mini_batch_grpo_at_one_update_is_the_previous_grpo(lab_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    settings = GRPOConfig(steps=2, rollout_prompts=2, group_size=4, updates_per_rollout=1, lr=1e-3,
                          max_new_tokens=16)
    model, tokenizer, problems, log = _micro_grpo(lab_dir, tmp_path, settings)
    previous, _ = load_for_training(lab_dir / "base-code-helps", torch.device("cpu"))
    torch.manual_seed(3)
    _previous_one_iteration_grpo(previous, tokenizer, problems, make_reward("random", 3, 4), 2, 2, 4, 1e-3, 16,
                                 random.Random(3))
    for (name, a), b in zip(model.state_dict().items(), previous.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["clip_fraction"] for r in log] == [0.0, 0.0]  # every update on-policy: ratio = 1


def test_later_mini_batches_are_off_policy_and_the_log_has_every_field(lab_dir: Path,  # noqa: F811
                                                                        tmp_path: Path) -> None:
    settings = GRPOConfig(steps=2, rollout_prompts=4, group_size=4, updates_per_rollout=2, lr=3e-2,
                          max_new_tokens=16)
    _, tokenizer, problems, log = _micro_grpo(lab_dir, tmp_path, settings)
    assert [r["step"] for r in log] == [1, 2]
    assert set(log[0]) == {"step", "reward_mean", "loss", "clip_fraction_low", "clip_fraction_high", "clip_fraction",
                           "entropy_style", "p_code_style", "kl_to_base", "response_tokens_mean"}
    assert log[0]["clip_fraction"] == 0.0 and log[0]["kl_to_base"] == 0.0  # first mini-batch: π_θ = π_old = base
    assert log[1]["clip_fraction"] > 0.0 and log[1]["kl_to_base"] > 0.0  # after one step at a large lr
    assert log[1]["clip_fraction"] == pytest.approx(log[1]["clip_fraction_low"] + log[1]["clip_fraction_high"])
    # "```" is one token of the lab tokenizer, so the first-token p(code) is the exact p(code) of probes.style.
    assert [tokenizer.decode([i]) for i in tokenizer("```python")["input_ids"]] == ["```", "python"]
    base, _ = load_for_training(lab_dir / "base-code-helps", torch.device("cpu"))
    first_prompts = [format_prompt(p.text) for p in random.Random(3).sample(problems, 4)[:2]]
    exact = style_probability(base, tokenizer, first_prompts, ["```"]).mean().item()
    assert log[0]["p_code_style"] == pytest.approx(exact, rel=1e-4)


def test_sequence_mean_weights_each_response_equally() -> None:
    per_token = torch.tensor([[1.0, 3.0, 100.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert sequence_mean(per_token, mask).item() == pytest.approx((2.0 + 4.0) / 2)


def test_kl_k3_is_zero_at_equal_policies_and_positive_elsewhere() -> None:
    log_probs = torch.log(torch.tensor([0.2, 0.5]))
    assert torch.equal(kl_k3(log_probs, log_probs), torch.zeros(2))
    assert (kl_k3(log_probs, torch.log(torch.tensor([0.4, 0.1]))) > 0).all()


def test_response_mask_keeps_tokens_through_the_first_eos() -> None:
    ids = torch.tensor([[5, 6, 0, 9, 9], [5, 6, 7, 8, 4]])
    assert response_mask(ids, eos_token_id=0).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


# Micro study -------------------------------------------------------------------------------------------------

def test_lab_folder_follows_the_contract(lab_dir: Path) -> None:  # noqa: F811
    manifest = json.loads((lab_dir / "manifest.json").read_text())
    assert manifest["schema"] == "dynamics.lab/1" and manifest["size"] == "tiny"
    assert manifest["bases"] == {"code-helps": "base-code-helps"}
    expected = {(("sft" if r == "sft" else f"grpo-{r}") + "@code-helps", r, s) for r in MICRO_REWARDS
                for s in MICRO_SEEDS}
    assert {(e["run"], e["reward"], e["seed"]) for e in manifest["runs"]} == expected
    for entry in manifest["runs"]:
        run_dir = lab_dir / entry["path"]
        assert entry["base"] == "base-code-helps" and run_dir.parent.name == "code-helps"
        run = json.loads((run_dir / "run.json").read_text())
        assert run["schema"] == "dynamics.run/1" and (run_dir / run["base"]).resolve() == lab_dir / "base-code-helps"
        assert (run["run"], run["reward"], run["seed"]) == (entry["run"], entry["reward"], entry["seed"])
        assert (run["base_name"], run["ablation"]) == ("code-helps", None)
        assert run["trainer"] == ("sft" if entry["reward"] == "sft" else "grpo") and run["config"]["lr"] > 0
        assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
        assert sorted(p.name for p in (run_dir / "fp32").iterdir()) == ["checkpoint-0", "checkpoint-1", "checkpoint-2"]
        assert last_checkpoint(run_dir) == run_dir / "checkpoint-2"
        assert not list(run_dir.rglob("*.partial"))


def test_checkpoints_load_standalone_as_bf16_with_their_tokenizer(lab_dir: Path) -> None:  # noqa: F811
    runs = lab_dir / "code-helps"
    for folder in (lab_dir / "base-code-helps", runs / "grpo-random-s1" / "checkpoint-2", runs / "sft-s2" / "checkpoint-1"):
        assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {torch.bfloat16}
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        assert model.config.model_type == "qwen2" and tokenizer.eos_token_id == model.config.eos_token_id
    master = load_file(runs / "grpo-true-s1" / "fp32" / "checkpoint-0" / "model.safetensors")
    base = load_file(lab_dir / "base-code-helps" / "model.safetensors")
    assert all(torch.equal(master[name], base[name].float()) for name in base)  # fp32 start = upcast bf16 base


def test_checkpoints_diff_against_the_base(lab_dir: Path) -> None:  # noqa: F811
    # The barely pretrained micro base is rarely right, so true rewards may all be 0 and carry no gradient;
    # random rewards do. Two AdamW steps at lr 1e-6 (RL) move a few bf16 weights; at 2e-5 (SFT) many more.
    base, runs = lab_dir / "base-code-helps", lab_dir / "code-helps"
    rl = derived_metrics(diff(base, runs / "grpo-random-s1" / "checkpoint-2", device="cpu").summary())
    sft = derived_metrics(diff(base, runs / "sft-s1" / "checkpoint-2", device="cpu").summary())
    assert 0.5 < rl["bitwise_sparsity"] < 1.0
    assert sft["bitwise_sparsity"] < rl["bitwise_sparsity"]


def test_generations_and_style_records_read_back_per_run_and_step(lab_dir: Path) -> None:  # noqa: F811
    config = micro_lab_config()
    n, k = config.heldout_problems, config.evaluation.samples_per_prompt
    base_rows = None
    for entry in json.loads((lab_dir / "manifest.json").read_text())["runs"]:
        run_dir = lab_dir / entry["path"]
        generations = read_generations(run_dir / "generations.jsonl")
        assert {(g.run, g.seed, g.reward) for g in generations} == {(entry["run"], entry["seed"], entry["reward"])}
        assert sorted({g.step for g in generations}) == [0, 1, 2] and all(g.answer for g in generations)
        for step in (0, 1, 2):
            at = [g for g in generations if g.step == step]
            assert sorted((g.decoding, g.sample) for g in at) == sorted(
                [("greedy", 0)] * n + [("sampled", i) for i in range(k)] * n)
        style = read_style_records(run_dir / "style.jsonl")
        assert len(style) == 3 * n and all(0.0 < r.p_style < 1.0 for r in style)
        assert {(r.run, r.seed, r.reward) for r in style} == {(entry["run"], entry["seed"], entry["reward"])}
        assert {r.prompt_id for r in style} == {g.prompt_id for g in generations}
        step0 = ([(g.prompt_id, g.decoding, g.sample, g.response) for g in generations if g.step == 0],
                 [(r.prompt_id, r.p_style) for r in style if r.step == 0])
        assert base_rows is None or step0 == base_rows  # step 0 is the one base in every run
        base_rows = step0


def test_incorrect_runs_train_on_wrong_majority_labels_only(lab_dir: Path) -> None:  # noqa: F811
    config = micro_lab_config()
    labels = json.loads((lab_dir / "majority-code-helps.json").read_text())
    train = {p.prompt_id: p for p in make_problems(config.train_problems, "train", 0, config.max_operand)}
    wrong = [pid for pid, label in list(labels.items()) if label != train[pid].answer]
    run = json.loads((lab_dir / "code-helps" / "grpo-incorrect-s1" / "run.json").read_text())
    assert run["config"]["train_problems"] == len(wrong) >= config.grpo.rollout_prompts
    assert set(labels) <= {p.prompt_id for p in list(train.values())[:config.majority_problems]}


def test_same_seed_gives_identical_checkpoints(lab_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    again = run_study(micro_lab_config(), tmp_path / "again", seeds=[1], rewards=["random"], device="cpu",
                      progress=False).parent
    for name in ("base-code-helps/model.safetensors", "code-helps/grpo-random-s1/checkpoint-2/model.safetensors",
                 "code-helps/grpo-random-s1/style.jsonl", "code-helps/grpo-random-s1/generations.jsonl"):
        assert (again / name).read_bytes() == (lab_dir / name).read_bytes()


def test_study_resumes_complete_runs_and_retrains_broken_ones(tmp_path: Path) -> None:
    config = micro_lab_config()
    out = tmp_path / "lab"
    run_study(config, out, seeds=[1], rewards=["random"], device="cpu", progress=False)
    done = out / "code-helps" / "grpo-random-s1"
    stamp = (done / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns
    base_stamp = (out / "base-code-helps" / "model.safetensors").stat().st_mtime_ns
    (out / "code-helps" / "grpo-true-s1" / "checkpoint-1").mkdir(parents=True)  # a killed run's leftovers
    manifest = run_study(config, out, seeds=[1], rewards=["random", "true"], ablations=["clip-off"], device="cpu",
                         progress=False)
    assert (done / "checkpoint-2" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "base-code-helps" / "model.safetensors").stat().st_mtime_ns == base_stamp
    assert (out / "code-helps" / "grpo-true-s1" / "checkpoint-2").is_dir()
    runs = {e["run"] for e in json.loads(manifest.read_text())["runs"]}
    assert runs == {"grpo-random@code-helps", "grpo-true@code-helps", "grpo-random-clip-off@code-helps",
                    "grpo-true-clip-off@code-helps"}
    ablation = json.loads((out / "code-helps" / "grpo-random-clip-off-s1" / "run.json").read_text())
    assert ablation["ablation"] == "clip-off" and ablation["config"]["clip"] is False


def test_a_killed_study_lists_the_runs_it_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from probes.lab import study

    trained = study.train_run

    def dies_on_true(*job):
        if job[1].reward == "true":
            raise KeyboardInterrupt  # the study is killed while it trains its second run
        return trained(*job)

    monkeypatch.setattr(study, "train_run", dies_on_true)
    out = tmp_path / "lab"
    with pytest.raises(KeyboardInterrupt):
        run_study(micro_lab_config(), out, seeds=[1], rewards=["random", "true"], device="cpu", progress=False)
    runs = json.loads((out / "manifest.json").read_text())["runs"]
    assert [e["path"] for e in runs] == ["code-helps/grpo-random-s1"]


def test_ablations_change_only_their_knob() -> None:
    grpo = LAB_PRESETS["small"].grpo
    assert ablated(grpo, None) == grpo and ablated(grpo, "clip-off") == replace(grpo, clip=False)
    on_policy = ablated(grpo, "on-policy")
    assert on_policy.updates_per_rollout == 1
    # the same mini-batch per optimizer step, sampled fresh for each step
    assert on_policy.rollout_prompts == grpo.rollout_prompts // grpo.updates_per_rollout
    specs = run_specs(["random", "sft"], [1, 2], ["code-helps", "no-code"], ["on-policy"])
    assert len(specs) == 2 * (2 + 1) * 2 and {s.folder_name for s in specs} >= {
        "no-code/grpo-random-on-policy-s2", "code-helps/sft-s1"}


def test_study_refuses_unknown_labels_and_another_preset(lab_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    for kwargs, message in (({"rewards": ["bogus"]}, "bogus"), ({"bases": ["qwen"]}, "qwen"),
                            ({"ablations": ["no-kl"]}, "no-kl")):
        with pytest.raises(LabError, match=message):
            run_study(micro_lab_config(), tmp_path, seeds=[1], device="cpu", progress=False, **kwargs)
    with pytest.raises(LabError, match="size 'tiny'"):
        run_study(replace(micro_lab_config(), size="small"), lab_dir, seeds=[1], rewards=["true"], device="cpu",
                  progress=False)


def test_lab_cli_reports_a_bad_reward_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lab", "run", "--out", str(tmp_path), "--rewards", "noisy-2", "-q", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("dynamics: error: unknown reward 'noisy-2'")


def test_learning_rate_knobs_override_only_the_learning_rates():
    from probes.lab.study import study_config

    preset = LAB_PRESETS["small"]
    config = study_config("small", "cpu", grpo_lr=3e-6, sft_lr=3e-5)
    assert (config.grpo.lr, config.sft.lr, config.parallel_runs) == (3e-6, 3e-5, 1) != (preset.grpo.lr, preset.sft.lr, 1)
    assert config.grpo.steps == preset.grpo.steps and config.pretrain == preset.pretrain
    assert study_config("small", "cpu").grpo.lr == preset.grpo.lr
