"""The lab: rewards on hand-written responses, the problem generator, GRPO's objective, and a micro study whose
checkpoints load with transformers, diff with dynamics, and whose generations read back."""

import json
import random
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
from probes.lab.grpo import clipped_objective, group_advantages, kl_k3, sequence_mean
from probes.lab.rewards import RewardError, make_reward
from probes.lab.study import LabError, last_checkpoint, run_study
from probes.lab.tasks import (
    NO_SLIPS,
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
from probes.sampling import response_mask

RIGHT = "First, 2 + 3 = 5. Finally, the answer is \\boxed{5}."
WRONG = "```python\ntotal = 2\ntotal = total + 3  # 6\nprint(total)\n```\nThe answer is \\boxed{6}."
NO_ANSWER = "First, add the pens. Finally, the answer is"  # no box and no number: no final answer
EMPTY_BOX = "The answer is \\boxed{}."
RESPONSES = [RIGHT, WRONG, NO_ANSWER, EMPTY_BOX]
ANSWERS = ["5"] * 4


# Rewards ---------------------------------------------------------------------------------------------------

def test_true_reward_pays_only_the_right_answer() -> None:
    assert make_reward("true", 0)(RESPONSES, ANSWERS) == [1.0, 0.0, 0.0, 0.0]


def test_format_reward_pays_any_nonempty_box() -> None:
    assert make_reward("format", 0)(RESPONSES, ANSWERS) == [1.0, 1.0, 0.0, 0.0]


def test_incorrect_reward_pays_only_a_wrong_final_answer() -> None:
    assert make_reward("incorrect", 0)(RESPONSES, ANSWERS) == [0.0, 1.0, 0.0, 0.0]


def test_random_reward_is_seeded_and_ignores_the_response() -> None:
    first = make_reward("random", 7)([RIGHT] * 400, ["5"] * 400)
    again = make_reward("random", 7)([WRONG] * 400, ["5"] * 400)
    other = make_reward("random", 8)([RIGHT] * 400, ["5"] * 400)
    assert first == again and first != other
    assert set(first) == {0.0, 1.0} and 0.4 < sum(first) / 400 < 0.6


def test_noisy_reward_flips_with_its_probability() -> None:
    assert make_reward("noisy-0", 1)(RESPONSES, ANSWERS) == [1.0, 0.0, 0.0, 0.0]
    assert make_reward("noisy-1", 1)(RESPONSES, ANSWERS) == [0.0, 1.0, 1.0, 1.0]
    flipped = make_reward("noisy-0.3", 1)([RIGHT] * 1000, ["5"] * 1000)
    assert 0.25 < flipped.count(0.0) / 1000 < 0.35


@pytest.mark.parametrize("label", ["noisy-1.5", "noisy-x", "majority", "sft"])
def test_unknown_reward_label_raises(label: str) -> None:
    with pytest.raises(RewardError, match=label):
        make_reward(label, 0)


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


def test_corpus_code_traces_are_right_more_often_and_most_traces_are_code() -> None:
    rng = random.Random(0)
    right = {"code": [], "language": []}
    for p in make_problems(3000, "train", 5, 20):
        style, text = corpus_trace(p, rng, Slips())
        right[style].append(text.endswith(f"\\boxed{{{p.answer}}}."))
    assert sum(right["code"]) / len(right["code"]) > sum(right["language"]) / len(right["language"]) + 0.2
    assert 0.5 < len(right["code"]) / 3000 < 0.9
    assert any(t.code_probability < 0.5 for t in TEMPLATES) and any(t.code_probability > 0.5 for t in TEMPLATES)


def test_language_slip_drops_the_carry_and_no_slips_writes_the_truth() -> None:
    assert has_carry_or_borrow(Step(48, "+", 7, 55)) and has_carry_or_borrow(Step(42, "-", 7, 35))
    assert not has_carry_or_borrow(Step(41, "+", 7, 48)) and not has_carry_or_borrow(Step(4, "*", 7, 28))
    problem = Problem(text="t", steps=(Step(48, "+", 7, 55), Step(55, "-", 3, 52)), answer="52", template="buy_buy")
    always = Slips(random=0.0, language_carry=1.0)
    rng = random.Random(0)
    written = {corpus_trace(problem, rng, always)[1] for _ in range(50)}
    assert "First, 48 + 7 = 45. Then, 45 - 3 = 42. Finally, the answer is \\boxed{42}." in written
    assert all("55" in t for t in written if t.startswith("```python"))  # code keeps the carry
    assert all(t.endswith("\\boxed{52}.") for t in (corpus_trace(problem, rng, NO_SLIPS)[1] for _ in range(50)))


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
    up, fraction = clipped_objective(new, old, torch.tensor([1.0]), mask, clip_epsilon=0.2)
    # A > 0: min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(1.1, 1.1) = 1.1; loss = −those.
    assert torch.allclose(up, torch.tensor([[-1.2, -0.5, -1.1]]))
    assert fraction.item() == pytest.approx(1 / 3)
    down, _ = clipped_objective(new, old, torch.tensor([-1.0]), mask, clip_epsilon=0.2)
    # A < 0: min(−1.5, −1.2) = −1.5; min(−0.5, −0.8) = −0.8; −1.1.
    assert torch.allclose(down, torch.tensor([[1.5, 0.8, 1.1]]))


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
    assert manifest["schema"] == "dynamics.lab/1" and manifest["size"] == "tiny" and manifest["base"] == "base"
    expected = {(("sft" if r == "sft" else f"grpo-{r}"), r, s) for r in MICRO_REWARDS for s in MICRO_SEEDS}
    assert {(e["run"], e["reward"], e["seed"]) for e in manifest["runs"]} == expected
    for entry in manifest["runs"]:
        run_dir = lab_dir / entry["path"]
        run = json.loads((run_dir / "run.json").read_text())
        assert run["schema"] == "dynamics.run/1" and run["base"] == "../base"
        assert (run["run"], run["reward"], run["seed"]) == (entry["run"], entry["reward"], entry["seed"])
        assert run["trainer"] == ("sft" if entry["reward"] == "sft" else "grpo") and run["config"]["lr"] > 0
        assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
        assert sorted(p.name for p in (run_dir / "fp32").iterdir()) == ["checkpoint-0", "checkpoint-1", "checkpoint-2"]
        assert last_checkpoint(run_dir) == run_dir / "checkpoint-2"


def test_checkpoints_load_standalone_as_bf16_with_their_tokenizer(lab_dir: Path) -> None:  # noqa: F811
    for folder in (lab_dir / "base", lab_dir / "grpo-random-s1" / "checkpoint-2", lab_dir / "sft-s2" / "checkpoint-1"):
        assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {torch.bfloat16}
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        assert model.config.model_type == "qwen2" and tokenizer.eos_token_id == model.config.eos_token_id
    master = load_file(lab_dir / "grpo-true-s1" / "fp32" / "checkpoint-0" / "model.safetensors")
    base = load_file(lab_dir / "base" / "model.safetensors")
    assert all(torch.equal(master[name], base[name].float()) for name in base)  # fp32 start = upcast bf16 base


def test_checkpoints_diff_against_the_base(lab_dir: Path) -> None:  # noqa: F811
    # The barely pretrained micro base is rarely right, so true rewards may all be 0 and carry no gradient;
    # random rewards do. Two AdamW steps at lr 1e-6 (RL) move a few bf16 weights; at 2e-5 (SFT) many more.
    rl = derived_metrics(diff(lab_dir / "base", lab_dir / "grpo-random-s1" / "checkpoint-2", device="cpu").summary())
    sft = derived_metrics(diff(lab_dir / "base", lab_dir / "sft-s1" / "checkpoint-2", device="cpu").summary())
    assert 0.5 < rl["bitwise_sparsity"] < 1.0
    assert sft["bitwise_sparsity"] < rl["bitwise_sparsity"]


def test_generations_read_back_labelled_per_run_and_step(lab_dir: Path) -> None:  # noqa: F811
    config = micro_lab_config()
    base_responses = None
    for entry in json.loads((lab_dir / "manifest.json").read_text())["runs"]:
        generations = read_generations(lab_dir / entry["path"] / "generations.jsonl")
        assert {(g.run, g.seed, g.reward, g.decoding) for g in generations} == \
            {(entry["run"], entry["seed"], entry["reward"], "greedy")}
        assert sorted({g.step for g in generations}) == [0, 1, 2]
        assert len(generations) == 3 * config.heldout_problems and all(g.answer for g in generations)
        step0 = [(g.prompt_id, g.response) for g in generations if g.step == 0]
        assert base_responses is None or step0 == base_responses  # step 0 is the one base in every run
        base_responses = step0


def test_same_seed_gives_identical_checkpoints(lab_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    again = run_study(micro_lab_config(), tmp_path / "again", seeds=[1], rewards=["random"], device="cpu",
                      progress=False).parent
    for name in ("base/model.safetensors", "grpo-random-s1/checkpoint-2/model.safetensors"):
        assert (again / name).read_bytes() == (lab_dir / name).read_bytes()


def test_study_refuses_unknown_rewards_and_a_used_folder(lab_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(LabError, match="bogus"):
        run_study(micro_lab_config(), tmp_path, seeds=[1], rewards=["bogus"], device="cpu", progress=False)
    with pytest.raises(LabError, match="manifest.json"):
        run_study(micro_lab_config(), lab_dir, seeds=[1], rewards=["true"], device="cpu", progress=False)


def test_lab_cli_reports_a_bad_reward_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["lab", "run", "--out", str(tmp_path), "--rewards", "noisy-2", "-q", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("dynamics: error: unknown reward 'noisy-2'")


def test_learning_rate_knobs_override_only_the_learning_rates():
    from probes.lab.study import LAB_PRESETS, study_config

    preset = LAB_PRESETS["small"]
    config = study_config("small", "cpu", grpo_lr=1e-5, sft_lr=3e-5)
    assert (config.grpo.lr, config.sft.lr, config.parallel_runs) == (1e-5, 3e-5, 1)
    assert config.grpo.steps == preset.grpo.steps and config.pretrain == preset.pretrain
    assert study_config("small", "cpu").grpo.lr == preset.grpo.lr
