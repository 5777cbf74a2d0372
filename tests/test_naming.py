import pytest

from dynamics.naming import layer_index, module_kind


@pytest.mark.parametrize(
    "name, layer, kind",
    [
        ("model.embed_tokens.weight", None, "embed"),
        ("lm_head.weight", None, "lm_head"),
        ("model.norm.weight", None, "norm"),
        ("model.layers.3.self_attn.q_proj.weight", 3, "q"),
        ("model.layers.3.self_attn.k_proj.bias", 3, "k"),
        ("model.layers.3.self_attn.v_proj.weight", 3, "v"),
        ("model.layers.12.self_attn.o_proj.weight", 12, "o"),
        ("model.layers.0.mlp.gate_proj.weight", 0, "gate"),
        ("model.layers.0.mlp.up_proj.weight", 0, "up"),
        ("model.layers.27.mlp.down_proj.weight", 27, "down"),
        ("model.layers.1.input_layernorm.weight", 1, "norm"),
        ("model.layers.1.post_attention_layernorm.weight", 1, "norm"),
        ("transformer.h.2.attn.c_attn.weight", 2, "other"),
    ],
)
def test_layer_and_kind_come_from_the_name(name, layer, kind):
    assert layer_index(name) == layer
    assert module_kind(name) == kind
