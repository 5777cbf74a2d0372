"""Fisher alignment: the closed-form Fisher of a linear softmax model, hand-built shares, Spearman, end to end."""

import json

import pytest
import torch

from dynamics.cli import main
from probes.fisher import (
    align,
    empirical_fisher_diagonal,
    fisher_alignment,
    fisher_spearman,
    parse_layers,
    top_fisher_energy,
)
from probes.models import ProbeError, Prompt, load_model
from tests.tiny_lm import save_tiny_lm


def test_linear_softmax_fisher_matches_the_closed_form():
    # logits = W x; ∂ log p(y|x) / ∂W = (onehot(y) − p) xᵀ, so F = mean_n ((onehot(y_n) − p_n) x_nᵀ)².
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=False)
    xs = torch.randn(50, 4)
    with torch.no_grad():
        probs = torch.softmax(xs @ model.weight.T, dim=1)
    ys = torch.multinomial(probs, 1).squeeze(1)  # the model's own samples
    losses = [lambda x=x, y=y: torch.nn.functional.cross_entropy(model(x[None]), y[None]) for x, y in zip(xs, ys)]
    fisher, n = empirical_fisher_diagonal({"w": model.weight}, losses)
    residual = torch.nn.functional.one_hot(ys, 3).float() - probs
    expected = ((residual[:, :, None] * xs[:, None, :]) ** 2).mean(dim=0)
    assert n == 50
    torch.testing.assert_close(fisher["w"], expected, rtol=1e-5, atol=1e-7)


def test_top_q_share_on_a_3x4_update_by_hand():
    fisher = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # largest: (2,3)=11, (2,2)=10, (2,1)=9, ...
    delta = torch.zeros(3, 4)
    delta[2, 3], delta[0, 0], delta[1, 1] = 1.0, 2.0, 1.0  # ‖Δ‖² = 1 + 4 + 1 = 6
    assert top_fisher_energy(delta, fisher, 10) == 1.0  # ⌈1.2⌉ = 2 coords: (2,3), (2,2)
    row, energies, total = align("w", delta, fisher, (1, 10, 50))
    assert total == 6.0 and energies == {"1": 1.0, "10": 1.0, "50": 1.0}  # top 6 = row 2 and (1,2),(1,3)
    assert row.share_top_q == {"1": pytest.approx(1 / 6), "10": pytest.approx(1 / 6), "50": pytest.approx(1 / 6)}
    assert row.n_changed == 3
    assert align("w", torch.zeros(3, 4), fisher)[0].share_top_q["5"] is None


def test_spearman_known_cases():
    fisher = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert fisher_spearman(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), fisher) == pytest.approx(1.0)
    assert fisher_spearman(torch.tensor([-0.5, 0.4, -0.3, 0.2, 0.1]), fisher) == pytest.approx(-1.0)
    assert fisher_spearman(torch.tensor([0.0, 0.0, 0.3, 0.0, 0.1]), fisher) is None  # 2 changed
    # zeros are left out: changed coords (|Δ| 3, 1, 2) at F (2, 4, 5) → ranks (3,1,2) vs (1,2,3): ρ = −0.5
    assert fisher_spearman(torch.tensor([0.0, 3.0, 0.0, -1.0, 2.0]), fisher) == pytest.approx(-0.5)


def test_parse_layers():
    assert parse_layers("0,2-4") == {0, 2, 3, 4} and parse_layers(None) is None
    with pytest.raises(ProbeError, match="--layers"):
        parse_layers("a-b")


def test_end_to_end_only_the_changed_tensor_has_energy(tmp_path):
    base = save_tiny_lm(tmp_path / "base", seed=0)
    tuned_model = load_model(base, torch.device("cpu"))
    name = "model.layers.1.mlp.up_proj.weight"
    with torch.no_grad():
        dict(tuned_model.named_parameters())[name].add_(0.01 * torch.randn_like(tuned_model.get_parameter(name)))
    tuned = save_tiny_lm(tmp_path / "tuned", model=tuned_model)
    prompts = [Prompt("Question: 2 + 3?", "a"), Prompt("Q", "b")]
    result = fisher_alignment(base, tuned, prompts, max_new_tokens=6, layers={1}, device="cpu")
    assert result.samples == 2
    assert all(layer_name.startswith("model.layers.1.") for layer_name in (t.name for t in result.tensors))
    changed = [t for t in result.tensors if t.n_changed]
    assert [t.name for t in changed] == [name]
    assert result.model["share_top_q"] == changed[0].share_top_q
    assert 0.0 <= result.model["share_top_q"]["1"] <= result.model["share_top_q"]["10"] <= 1.0


def test_cli_writes_the_document(tmp_path):
    base = save_tiny_lm(tmp_path / "base", seed=0)
    tuned = save_tiny_lm(tmp_path / "tuned", seed=1)
    prompts, out = tmp_path / "p.jsonl", tmp_path / "fisher.json"
    prompts.write_text(json.dumps({"prompt": "Q"}) + "\n")
    assert main(["probe", "fisher", str(base), str(tuned), "--prompts", str(prompts), "--max-new-tokens", "4",
                 "--layers", "0", "--device", "cpu", "--json", str(out), "-q"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "dynamics.fisher/1" and doc["q_percent"] == [1, 5, 10]
    assert set(doc["model"]["share_top_q"]) == {"1", "5", "10"}
    assert {"name", "share_top_q", "spearman", "n_changed"} == set(doc["tensors"][0])
