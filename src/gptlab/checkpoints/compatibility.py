"""The one check that weights fit a run: the same architecture, and the tokenizer their ids belong to.

Every command that puts existing weights to use calls `check_fits` before a single weight is loaded: a resumed run
(against its exact tokenizer), a fine-tuning start (`init_from`) and evaluation (against the tokenizer kind, since
such weights bring their own vocabulary). The refusal is one line naming every differing key.
"""

from __future__ import annotations

from gptlab.checkpoints.pretrained import Pretrained
from gptlab.data.tokenizers import describe
from gptlab.errors import ConfigError
from gptlab.model.gpt import GPTConfig


def architecture(config: GPTConfig) -> dict:
    """What fixes the weights' shapes and the function they compute, with defaults spelled out.

    Left out: dropout (training only) and zero_init (only where training starts).
    """
    return {
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "block_size": config.block_size,
        "vocab_size": config.vocab_size,
        "vocab_multiple": config.vocab_multiple,
        "mlp_hidden": config.hidden,
        "attn_bias": config.bias if config.attn_bias is None else config.attn_bias,
        "mlp_bias": config.bias if config.mlp_bias is None else config.mlp_bias,
        "norm_bias": config.bias if config.norm == "layernorm" else False,
        "tie_weights": config.tie_weights,
        "norm": config.norm,
        "norm_weight": config.norm_weight,
        "activation": config.activation,
        "rope": config.rope,
        "rope_base": config.rope_base if config.rope else None,
        "qk_norm": config.qk_norm,
        "logit_softcap": config.logit_softcap,
    }


def check_fits(
    weights: Pretrained, key: str, model: GPTConfig | None = None, tokenizer: dict | str | None = None
) -> None:
    """Refuse weights whose architecture or tokenizer differs from what the run asks for.

    `model` None is not compared, nor is its vocab_size when unset (it comes from the tokenizer). `tokenizer` is a
    tokenizer's state (a resumed run must have exactly the same one), a kind ("char", "gpt2"), or None.
    """
    differ = []
    if model is not None:
        have, want = architecture(weights.config), architecture(model)
        for name, value in want.items():
            if have[name] != value and not (name == "vocab_size" and value is None):
                shown = "model.bias" if name == "norm_bias" else f"model.{name}"
                differ.append(f"{shown}={value!r} (weights: {have[name]!r})")
    saved = weights.tokenizer.state_dict() if weights.tokenizer is not None else None
    if isinstance(tokenizer, str) and saved is not None and saved["kind"] != tokenizer:
        differ.append(f"data.tokenizer={tokenizer!r} (weights: {saved['kind']!r})")
    elif isinstance(tokenizer, dict) and saved is not None and saved != tokenizer:
        differ.append(f"the data's tokenizer, {describe(tokenizer)} (weights: {describe(saved)})")
    if differ:
        raise ConfigError(f"{key}: {weights.name} differs from the config: {', '.join(differ)}")
