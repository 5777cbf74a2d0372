"""KL drift: analytic KL on constant-logit models, exact zero for identical models, padding invariance, a
float64 reference at RLVR scale (~1e-8 nats/token), provenance."""

import copy
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynamics.cli import main
from probes.kl import KLResult, batch_token_kl, kl_drift, responses_batch, token_kl
from probes.models import Prompt, load_model, load_tokenizer
from tests.tiny_lm import constant_logits_lm, save_tiny_lm

PROMPTS = [Prompt("Question: what is 2 + 3?\nAnswer:\n", "a"), Prompt("Question: 7?\nAnswer:\n", "b"),
           Prompt("Q", "c")]


def test_token_kl_by_hand():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = ½ln2 + ½ln(2/3); KL(q||p) = ¼ln(½) + ¾ln(3/2).
    p, q = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]]))
    forward, reverse = token_kl(p, q)
    assert forward.item() == pytest.approx(0.5 * np.log(2) + 0.5 * np.log(2 / 3), rel=1e-6)
    assert reverse.item() == pytest.approx(0.25 * np.log(0.5) + 0.75 * np.log(1.5), rel=1e-6)
    assert forward.dtype == torch.float64


def test_token_kl_of_nearly_equal_logits_is_half_the_variance_of_the_difference():
    # For small δ = z_T − z_B: KL(π_T‖π_B) = ½·Var_{π_T}(δ) + O(|δ|³); here |δ| ~ 1e-5, KL ~ 5e-11.
    generator = torch.Generator().manual_seed(0)
    base = 3 * torch.randn(64, 5000, generator=generator)
    tuned = (base + 1e-5 * torch.randn(64, 5000, generator=generator)).float()
    forward, reverse = token_kl(tuned, base.float())
    delta = tuned.double() - base.float().double()
    p_t = torch.softmax(tuned.double(), -1)
    half_variance = 0.5 * ((p_t * delta**2).sum(-1) - (p_t * delta).sum(-1) ** 2)
    torch.testing.assert_close(forward, half_variance, rtol=1e-3, atol=0)
    torch.testing.assert_close(reverse, half_variance, rtol=1e-3, atol=0)
    assert forward.min() > 0 and torch.all(token_kl(base, base)[0] == 0)


def _perturbed_pair(root, dtype: torch.dtype, scale: float):
    """A tiny base and the same model with every weight moved by scale·mean|w|·N(0, 1), both stored in `dtype`."""
    save_tiny_lm(root / "seed", seed=1)
    base = load_model(root / "seed", torch.device("cpu"))
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=generator))
    return save_tiny_lm(root / "base", model=base.to(dtype)), save_tiny_lm(root / "tuned", model=tuned.to(dtype))


def _float64_reference_kl(base, tuned, pairs) -> np.ndarray:
    """KL(π_T‖π_B) per response token from float64 models and float64 log-softmaxes (independent of probes.kl)."""
    tokenizer = load_tokenizer(tuned)
    batch = responses_batch(tokenizer, [p for p, _ in pairs], [r for _, r in pairs], torch.device("cpu"))
    positions = (batch.attention_mask.cumsum(1) - 1).clamp(min=0)

    def log_probs(folder):
        model = load_model(folder, torch.device("cpu")).double()
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions,
                           use_cache=False).logits
        return F.log_softmax(logits[:, batch.prompt_length - 1:-1], -1)

    log_t, log_b = log_probs(tuned), log_probs(base)
    return (log_t.exp() * (log_t - log_b)).sum(-1)[batch.response_mask.bool()].numpy()


RLVR_PAIRS = [("Question: what is 2 + 3?\nAnswer:\n", "5 apples, so \\boxed{5}"),
              ("Q", "First, I need to add. Finally, the answer is \\boxed{9}."), ("Question: 7?", "print(7 - 4)")]


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 8e-4), (torch.bfloat16, 1.5e-4)])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_kl_at_rlvr_scale_matches_a_float64_reference(tmp_path, dtype, scale, device):
    base, tuned = _perturbed_pair(tmp_path, dtype, scale)
    result = kl_drift(base, tuned, responses=RLVR_PAIRS, chat_template=False, device=device)
    reference = _float64_reference_kl(base, tuned, RLVR_PAIRS)
    assert 2e-9 < reference.mean() < 5e-8  # the RLVR regime: ~1e-8 nats/token
    assert result.kl_mean_per_token == pytest.approx(reference.mean(), rel=1e-2)
    np.testing.assert_allclose(result.per_token.forward, reference, rtol=1e-2)
    assert result.per_token.forward.min() >= -3e-14  # token_kl's rounding bound: never negative beyond it
    assert result.sampling["forward"] == "float32"


def test_bf16_forward_is_an_explicit_labelled_option(tmp_path):
    base, tuned = save_tiny_lm(tmp_path / "b", seed=1), save_tiny_lm(tmp_path / "t", seed=2)
    result = kl_drift(base, tuned, responses=RLVR_PAIRS[:1], chat_template=False, bf16_forward=True, device="cpu")
    assert result.sampling["forward"] == "bf16-autocast" and result.kl_mean_per_token > 0


def test_provenance_says_on_policy_only_when_the_file_says_so(constant_pair):
    base, tuned, _ = constant_pair
    sampled = kl_drift(base, tuned, PROMPTS[:1], samples_per_prompt=1, max_new_tokens=3, device="cpu")
    scored = kl_drift(base, tuned, responses=RLVR_PAIRS[:1], chat_template=False, device="cpu")
    assert sampled.on_policy and sampled.provenance().startswith("on-policy")
    assert not scored.on_policy and scored.provenance().startswith("off-policy")
    assert "on-policy" not in scored.provenance()
    assert KLResult.from_json(scored.to_json()).provenance() == scored.provenance()


@pytest.fixture(scope="module")
def constant_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    tokenizer_vocab = len(load_tokenizer(save_tiny_lm(root / "probe")))
    rng = np.random.default_rng(0)
    logits_b, logits_t = (torch.tensor(rng.normal(size=tokenizer_vocab), dtype=torch.float32) for _ in range(2))
    base = save_tiny_lm(root / "base", model=constant_logits_lm(logits_b))
    tuned = save_tiny_lm(root / "tuned", model=constant_logits_lm(logits_t))
    p_t, p_b = torch.softmax(logits_t.double(), 0), torch.softmax(logits_b.double(), 0)
    analytic = float((p_t * (p_t.log() - p_b.log())).sum()), float((p_b * (p_b.log() - p_t.log())).sum())
    return base, tuned, analytic


def test_constant_logit_models_give_the_analytic_kl(constant_pair):
    base, tuned, (forward, reverse) = constant_pair
    result = kl_drift(base, tuned, PROMPTS, samples_per_prompt=2, max_new_tokens=6, device="cpu")
    assert result.tokens > 0
    np.testing.assert_allclose(result.per_token.forward, forward, rtol=1e-5)
    assert result.kl_mean_per_token == pytest.approx(forward, rel=1e-5)
    assert result.kl_reverse_mean_per_token == pytest.approx(reverse, rel=1e-5)
    assert result.kl_mean_per_sequence == pytest.approx(forward * result.tokens / result.sequences, rel=1e-5)


def test_identical_models_give_exactly_zero(tmp_path):
    model = save_tiny_lm(tmp_path / "m", seed=3)
    result = kl_drift(model, model, PROMPTS, samples_per_prompt=2, max_new_tokens=8, device="cpu")
    assert result.kl_mean_per_token == 0.0 and result.kl_reverse_mean_per_token == 0.0
    assert np.all(result.per_token.forward == 0.0)


def test_padding_and_batch_size_change_nothing(tmp_path):
    base, tuned = save_tiny_lm(tmp_path / "b", seed=1), save_tiny_lm(tmp_path / "t", seed=2)
    pairs = [("Question: what is 2 + 3?\nAnswer:\n", "5 apples"), ("Q", "The answer is \\boxed{9} because"),
             ("Question: 7?", "x")]
    one = kl_drift(base, tuned, responses=pairs, batch_size=1, device="cpu", chat_template=False)
    many = kl_drift(base, tuned, responses=pairs, batch_size=3, device="cpu", chat_template=False)
    np.testing.assert_allclose(one.per_token.forward, many.per_token.forward, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(one.per_token.token_id, many.per_token.token_id)
    tokenizer = load_tokenizer(tuned)
    assert one.tokens == sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r in pairs)


def test_padded_positions_contribute_zero(tmp_path):
    base, tuned = save_tiny_lm(tmp_path / "b", seed=1), save_tiny_lm(tmp_path / "t", seed=2)
    tokenizer = load_tokenizer(tuned)
    batch = responses_batch(tokenizer, ["Q", "Question: 7?"], ["5", "The answer is 9"], torch.device("cpu"))
    forward, reverse = batch_token_kl(load_model(tuned, torch.device("cpu")), load_model(base, torch.device("cpu")),
                                      batch)
    padded = batch.response_mask == 0
    assert padded.any() and torch.all(forward[padded] == 0) and torch.all(reverse[padded] == 0)
    assert torch.all(forward[~padded] > 0)


def test_cli_writes_json_and_h5(tmp_path, constant_pair, capsys):
    base, tuned, (forward, _) = constant_pair
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p.prompt}) for p in PROMPTS))
    out, h5 = tmp_path / "kl.json", tmp_path / "kl.h5"
    assert main(["probe", "kl", str(base), str(tuned), "--prompts", str(prompts), "--samples-per-prompt", "1",
                 "--max-new-tokens", "4", "--device", "cpu", "--json", str(out), "--h5", str(h5), "-q"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "dynamics.kl/1" and doc["sequences"] == 3
    assert doc["kl_mean_per_token"] == pytest.approx(forward, rel=1e-5)
    assert {"token", "token_id", "count", "kl_sum", "kl_mean"} == set(doc["top_tokens"][0])
    with h5py.File(h5) as f:
        assert len(f["per_token/forward"]) == doc["tokens"]


def test_cli_needs_exactly_one_source(tmp_path, capsys):
    model = save_tiny_lm(tmp_path / "m")
    assert main(["probe", "kl", str(model), str(model)]) == 2
    assert "--prompts" in capsys.readouterr().err


def test_missing_model_folder_is_one_line(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Q"}\n')
    assert main(["probe", "kl", str(tmp_path / "nope"), str(tmp_path / "nope"), "--prompts", str(prompts)]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_scores_match_the_cpu(tmp_path, constant_pair):
    base, tuned, (forward, reverse) = constant_pair
    pairs = [("Question: what is 2 + 3?\nAnswer:\n", "5 apples"), ("Q", "The answer is \\boxed{9} because")]
    cpu = kl_drift(base, tuned, responses=pairs, device="cpu", chat_template=False)
    gpu = kl_drift(base, tuned, responses=pairs, device="cuda", chat_template=False)
    np.testing.assert_array_equal(cpu.per_token.token_id, gpu.per_token.token_id)
    # Scoring runs in float32 on CUDA too (no autocast, no TF32): the analytic KL to float32 rounding.
    np.testing.assert_allclose(gpu.per_token.forward, forward, rtol=1e-5)
    assert gpu.kl_reverse_mean_per_token == pytest.approx(reverse, rel=1e-5)


def test_kl_split_by_position_class_on_a_hand_built_case():
    # Two responses: ["```", "5", "py"] and ["5", "7"]. KL 1, 2, 3 | 4, 5. First tokens: 1 + 4 = 5 (the leading
    # "5" is first, not digit); digit tokens after the first: 2 + 5 = 7; the rest: 3. Total 15.
    from probes.kl import TokenKL, kl_by_position_class
    from probes.lab.tokenizer import train_tokenizer
    from tests.tiny_lm import TEXTS

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    (fence,), (five,), (py, *_), (seven,) = (tokenizer(t, add_special_tokens=False)["input_ids"]
                                             for t in ("```", "5", "python", "7"))
    per_token = TokenKL(forward=np.array([1.0, 2, 3, 4, 5]), reverse=np.zeros(5), sequence_index=np.array([0, 0, 0, 1, 1]),
                        token_id=np.array([fence, five, py, five, seven]))
    split = kl_by_position_class(per_token, tokenizer)
    assert split == {"first": {"tokens": 2, "kl_sum": 5.0, "share": 5 / 15},
                     "digit": {"tokens": 2, "kl_sum": 7.0, "share": 7 / 15},
                     "rest": {"tokens": 1, "kl_sum": 3.0, "share": 3 / 15}}
    zero = kl_by_position_class(TokenKL(np.zeros(5), np.zeros(5), per_token.sequence_index, per_token.token_id),
                                tokenizer)
    assert zero["first"] == {"tokens": 2, "kl_sum": 0.0, "share": None}
