import math

import pytest
import torch

from gptlab.errors import ConfigError
from gptlab.model.gpt import GPT, GPTConfig
from gptlab.model.sampling import sample_next


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8, "vocab_size": 11, **kw})


def test_shapes_and_initial_loss():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx, targets = torch.randint(0, 11, (2, 3, 8))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 8, 11)
    assert loss.shape == ()
    # small init: predictions start near uniform
    assert abs(loss.item() - math.log(11)) < 0.1


@pytest.mark.parametrize("kw", [{}, {"norm": "rmsnorm", "activation": "relu2", "bias": False}])
def test_causality_later_tokens_never_change_earlier_logits(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw)).eval()
    idx = torch.randint(0, 11, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 11
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_targets_of_minus_one_are_ignored():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 11, (2, 8))
    targets = idx.clone()
    targets[:, :3] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 11), idx[:, 3:].reshape(-1))
    assert torch.allclose(loss, expected)


def block_params(d: int, hidden: int, attn_bias: bool, mlp_bias: bool, norm: int) -> int:
    attn = 4 * d * d + (4 * d if attn_bias else 0)
    mlp = 2 * d * hidden + ((hidden + d) if mlp_bias else 0)
    return attn + mlp + 2 * norm


def test_parameter_count_gpt2_style_by_hand():
    # d=16, V=11, T=8, 2 layers, LayerNorm with bias (2*16 each), tied head
    model = GPT(tiny())
    block = block_params(16, 64, True, True, norm=32)
    assert block == 3280
    expected = 11 * 16 + 8 * 16 + 2 * block + 32
    breakdown = model.parameter_breakdown()
    assert breakdown["block 0"] == block
    assert breakdown["head (tied to wte)"] == 0
    assert breakdown["total"] == expected == 6896


def test_parameter_count_microgpt_by_hand():
    # RMSNorm without weights, ReLU², no biases, untied head: only matrices and embeddings remain
    cfg = tiny(norm="rmsnorm", norm_weight=False, activation="relu2", bias=False, tie_weights=False)
    model = GPT(cfg)
    expected = 11 * 16 + 8 * 16 + 2 * (4 * 16 * 16 + 2 * 16 * 64) + 11 * 16
    assert model.parameter_breakdown()["total"] == expected == 6624
    assert not [n for n, _ in model.named_parameters() if "bias" in n or "ln" in n]


def test_notebook_style_switches():
    model = GPT(tiny(attn_bias=False, mlp_bias=True, tie_weights=True, mlp_hidden=24))
    block = model.transformer.h[0]
    assert block.attn.c_attn.bias is None and block.attn.c_proj.bias is None
    assert block.mlp.c_fc.bias is not None and block.mlp.c_fc.out_features == 24
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.parameter_breakdown()["block 0"] == block_params(16, 24, False, True, norm=32)


def test_untied_head_has_its_own_weights():
    model = GPT(tiny(tie_weights=False))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.parameter_breakdown()["head"] == 11 * 16


def test_gpt2_initialisation():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=512)
    model = GPT(cfg)
    proj_std = model.transformer.h[0].mlp.c_proj.weight.std().item()
    fc_std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(fc_std - 0.02) < 0.002
    assert abs(proj_std - 0.02 / math.sqrt(16)) < 0.001
    assert torch.count_nonzero(model.transformer.h[0].mlp.c_fc.bias) == 0


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"n_embd": 30, "n_head": 4}, "divisible"),
        ({"n_layer": 0}, "model.n_layer"),
        ({"n_head": -2}, "model.n_head"),
        ({"block_size": 0}, "model.block_size"),
        ({"vocab_size": 0}, "model.vocab_size"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"norm": "batchnorm"}, "model.norm"),
        ({"activation": "swish"}, "model.activation"),
        ({"norm_weight": False}, "model.norm_weight"),
        ({"n_layer": 2.5}, "model.n_layer"),
    ],
)
def test_config_rejects_invalid_values_with_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        tiny(**kw)


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(torch.zeros(1, 9, dtype=torch.long))


def test_sampling_rules():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert sample_next(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {1}
    # probabilities ~ [0.09, 0.67, 0.24, 0.03]: top_p=0.8 keeps exactly tokens 1 and 2
    drawn = {sample_next(logits, 1.0, top_p=0.8, generator=g).item() for _ in range(200)}
    assert drawn == {1, 2}


def test_generate_appends_tokens_and_crops_context():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.zeros(2, 3, dtype=torch.long)
    out = torch.cat((idx, *model.generate(idx, max_new_tokens=12, temperature=0)), dim=1)
    assert out.shape == (2, 15)
    assert out.max() < 11


MODERN = {"rope": True, "qk_norm": True, "zero_init": True, "logit_softcap": 15.0, "activation": "relu2"}


@pytest.mark.parametrize("kw", [{"rope": True}, {"qk_norm": True}, {"logit_softcap": 5.0}, MODERN])
def test_modern_switches_keep_shapes_and_causality(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw)).eval()
    idx = torch.randint(0, 11, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 11
    for p in model.parameters():  # zero-init projections would make every position equal: perturb them
        p.data += 0.05 * torch.randn_like(p)
    a, loss = model(idx, idx)
    b, _ = model(changed)
    assert a.shape == (1, 8, 11) and loss.shape == ()
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_rope_replaces_learned_positions_and_counts_exactly():
    model = GPT(tiny(rope=True))
    assert "wpe" not in model.transformer
    assert "position embedding (wpe)" not in model.parameter_breakdown()
    # the GPT-2 count (6896) less the 8 x 16 position table; QK-norm, zero-init and soft-capping add nothing
    assert model.parameter_breakdown()["total"] == 6896 - 8 * 16 == 6768
    assert GPT(tiny(**MODERN, bias=True)).parameter_breakdown()["total"] == 6768
    assert GPT(tiny(qk_norm=True, zero_init=True, logit_softcap=30.0)).parameter_breakdown()["total"] == 6896
    assert not [k for k in model.state_dict() if "rotary" in k]  # derived tables stay out of checkpoints


def test_rope_positions_are_relative_and_take_an_offset():
    torch.manual_seed(0)
    model = GPT(tiny(rope=True, n_layer=1)).eval()
    idx = torch.randint(0, 11, (1, 4))
    # attention scores depend only on relative positions: a shifted window gives the same logits...
    assert torch.allclose(model(idx)[0], model(idx, pos_offset=3)[0], atol=1e-5)
    # ...and the rotation itself does depend on the position
    q = torch.randn(1, 1, 4, 8)
    cos, sin = model.rotary(torch.arange(4))
    cos3, sin3 = model.rotary(torch.arange(3, 7))
    from gptlab.model.gpt import apply_rotary

    assert not torch.allclose(apply_rotary(q, cos, sin), apply_rotary(q, cos3, sin3))
    assert torch.allclose(apply_rotary(q, cos, sin).norm(dim=-1), q.norm(dim=-1), atol=1e-5)  # a rotation
    with pytest.raises(ValueError, match="block_size"):
        model(idx, pos_offset=5)


def test_qk_norm_normalises_queries_and_keys():
    torch.manual_seed(0)
    model = GPT(tiny(qk_norm=True)).eval()
    attn = model.transformer.h[0].attn
    seen = {}
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen["q"], seen["k"] = q, k
        return original(q, k, v, **kw)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        attn(torch.randn(2, 8, 16) * 10)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    for t in (seen["q"], seen["k"]):
        assert torch.allclose(t.pow(2).mean(-1), torch.ones(2, 2, 8), atol=1e-3)


def test_zero_init_output_projections_start_each_block_as_identity():
    torch.manual_seed(0)
    model = GPT(tiny(zero_init=True))
    for block in model.transformer.h:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_fc.weight) > 0
        x = torch.randn(2, 8, 16)
        assert torch.equal(block(x), x)


def test_logit_softcap_bounds_the_logits():
    torch.manual_seed(0)
    model = GPT(tiny(logit_softcap=2.0, tie_weights=False))
    torch.nn.init.normal_(model.lm_head.weight, std=10.0)
    logits, _ = model(torch.randint(0, 11, (2, 8)))
    assert logits.abs().max() <= 2.0
    assert logits.abs().max() > 1.5  # saturating, not merely scaled down
    uncapped = GPT(tiny(tie_weights=False))
    uncapped.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    idx = torch.randint(0, 11, (2, 8))
    assert torch.allclose(model(idx)[0], 2.0 * torch.tanh(uncapped(idx)[0] / 2.0), atol=1e-5)


@pytest.mark.parametrize(
    "kw, key",
    [({"logit_softcap": 0.0}, "model.logit_softcap"), ({"rope": True, "n_embd": 18, "n_head": 2}, "model.rope")],
)
def test_modern_switches_reject_invalid_values(kw, key):
    with pytest.raises(ConfigError, match=key):
        tiny(**kw)


def test_gpt2_presets_leave_every_modern_switch_off(tmp_path):
    from conftest import make_config

    for name in ("gpt2", "gpt_nano", "gpt_small"):
        preset = make_config([f"model={name}"], tmp_path).model  # the preset over GPTConfig's defaults
        assert not preset["rope"] and not preset["qk_norm"] and not preset["zero_init"]
        assert preset["logit_softcap"] is None and preset["activation"] == "gelu" and preset["tie_weights"]
