"""GPT-2 weights in the Hugging Face folder format: config.json + model.safetensors (or pytorch_model.bin), or the
shards an index names (model.safetensors.index.json: what save_pretrained writes past its max_shard_size, 5 GB
in transformers 4.x, which GPT-2 xl's 6.2 GB of float32 exceeds).

gptlab's parameter names are GPT-2's own (transformer.h.0.attn.c_attn.weight, ...), so the mapping is the
identity except for two things: HF stores the four projection matrices of each block as `Conv1D` weights,
(in, out), the transpose of nn.Linear's (out, in); and a tied head is stored once, as the token embedding.
Reading and writing need only `safetensors` and torch; transformers is used by the tests, never here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from gptlab.data.bpe import official_files
from gptlab.data.tokenizers import CharTokenizer, tokenizer_from_state
from gptlab.errors import ConfigError, GptlabError
from gptlab.model.gpt import GPTConfig

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX = ".index.json"  # beside a weight file's name: the shards that hold its tensors, {"weight_map": {name: file}}
GPTLAB_TOKENIZER = "gptlab_tokenizer.json"  # not tokenizer.json: transformers reads that name as its own format
GPT2_VOCAB_SIZE = 50257
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# both compute GELU's tanh approximation, which is what gptlab's "gelu" is
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path).expanduser()
    return (path / "config.json").is_file() and weights_path(path) is not None


def weights_path(folder: Path) -> Path | None:
    """The weight file, or the index of the shards, a folder holds (safetensors first, as transformers reads)."""
    for name in WEIGHT_FILES:
        for candidate in (folder / name, folder / f"{name}{INDEX}"):
            if candidate.is_file():
                return candidate
    return None


def config_from_hf(hf: dict, key: str) -> GPTConfig:
    """The GPTConfig a GPT-2 config.json describes; anything gptlab's GPT would compute differently is refused."""
    expected = {
        "model_type": "gpt2",
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's eps
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
    }
    differ = [f"{k}={hf[k]!r} (gptlab computes {v!r})" for k, v in expected.items() if k in hf and hf[k] != v]
    if (act := hf.get("activation_function", "gelu_new")) not in TANH_GELUS:
        differ.append(f"activation_function={act!r} (gptlab computes {TANH_GELUS[0]!r})")
    if differ:
        raise ConfigError(f"{key}: config.json describes a model gptlab cannot compute: {', '.join(differ)}")
    try:
        return GPTConfig(
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            block_size=hf.get("n_positions", hf.get("n_ctx")),
            vocab_size=hf["vocab_size"],
            dropout=hf.get("resid_pdrop", 0.0),
            bias=True,
            tie_weights=hf.get("tie_word_embeddings", True),
            mlp_hidden=hf.get("n_inner"),
        )
    except KeyError as e:
        raise ConfigError(f"{key}: config.json has no {e}") from None


def config_to_hf(config: GPTConfig, key: str = "ckpt_path") -> dict:
    """GPT-2's config.json for a gptlab model; refused, naming each field, when GPT-2 cannot express it."""
    wanted = {
        "norm": "layernorm",
        "activation": "gelu",
        "bias": True,
        "tie_weights": True,
        "rope": False,
        "qk_norm": False,
        "logit_softcap": None,
    }
    differ = [f"model.{k}={getattr(config, k)!r}" for k, v in wanted.items() if getattr(config, k) != v]
    differ += [f"model.{k}={getattr(config, k)!r}" for k in ("attn_bias", "mlp_bias") if getattr(config, k) is False]
    if differ:
        need = ", ".join(f"{k}={v!r}" for k, v in wanted.items())
        raise ConfigError(f"{key}: GPT-2 cannot express {', '.join(differ)} (it needs {need})")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.mlp_hidden,
        "activation_function": TANH_GELUS[0],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        # GPT-2's <|endoftext|>; a char vocabulary has no such token
        "bos_token_id": GPT2_VOCAB_SIZE - 1 if config.vocab_size == GPT2_VOCAB_SIZE else None,
        "eos_token_id": GPT2_VOCAB_SIZE - 1 if config.vocab_size == GPT2_VOCAB_SIZE else None,
        "torch_dtype": "float32",
    }


def read_weights(folder: Path, key: str) -> dict[str, torch.Tensor]:
    path = weights_path(folder) or folder / WEIGHT_FILES[-1]
    if not path.name.endswith(INDEX):
        return read_weight_file(path, key)
    weights = {}
    for shard in shards(path, key):
        if not shard.is_file():  # a download or copy cut short
            raise GptlabError(f"{key}: {path} names the shard {shard.name}, which is missing from {folder}")
        weights.update(read_weight_file(shard, key))
    return weights


def shards(index: Path, key: str) -> list[Path]:
    """The files an index names, each once."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return [index.parent / name for name in sorted(set(weight_map.values()))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise GptlabError(f"{key}: cannot read the shard index {index}: {type(e).__name__}: {e}") from None


def read_weight_file(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, empty, truncated or not a weight file; torch.load's message can be empty
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GptlabError(f"{key}: cannot read the weights in {path}: {why}") from None


def from_hf_weights(hf: dict[str, torch.Tensor], config: GPTConfig, key: str) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensors -> gptlab's state dict. Accepts GPT2LMHeadModel's names and GPT2Model's (no prefix)."""
    out = {}
    for name, tensor in hf.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) and tensor.dim() != 1:
            continue  # the causal-mask buffers older files carry
        name = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        out[name] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    if config.tie_weights:
        out.pop("lm_head.weight", None)  # the tie shares wte's tensor
        out["lm_head.weight"] = out.get("transformer.wte.weight")
    if out.get("lm_head.weight") is None:
        raise GptlabError(f"{key}: no token embedding or head weights in the weight file")
    return {k: v.float() for k, v in out.items()}


def to_hf_weights(state: dict[str, torch.Tensor], vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """gptlab's state dict -> GPT2LMHeadModel's tensors, the tied head stored once (as the embedding).

    Rows padded past the tokenizer's vocab_size (model.vocab_multiple) are dropped: GPT-2 has none.
    """
    out = {
        name: (t.t() if name.endswith(CONV1D) else t).detach().float().contiguous().cpu()
        for name, t in state.items()
        if name != "lm_head.weight"
    }
    if vocab_size is not None:
        out["transformer.wte.weight"] = out["transformer.wte.weight"][:vocab_size].contiguous()
    return out


def read_folder(path: str | Path, key: str = "ckpt_path") -> tuple[GPTConfig, dict[str, torch.Tensor], object | None]:
    """(config, gptlab state dict, tokenizer or None) from a Hugging Face GPT-2 folder.

    The tokenizer is the gptlab one exported beside the weights, else GPT-2's BPE when the vocabulary is
    GPT-2's; None when neither tells which tokenizer the ids belong to.
    """
    folder = Path(path).expanduser()
    try:
        hf_config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise GptlabError(f"{key}: cannot read {folder / 'config.json'}: {e}") from None
    config = config_from_hf(hf_config, key)
    weights = from_hf_weights(read_weights(folder, key), config, key)
    tokenizer = None
    if (folder / GPTLAB_TOKENIZER).is_file():
        tokenizer = tokenizer_from_state(json.loads((folder / GPTLAB_TOKENIZER).read_text()))
    elif config.vocab_size == GPT2_VOCAB_SIZE:
        tokenizer = tokenizer_from_state({"kind": "gpt2"})
    return config, weights, tokenizer


def parameter_count(state: dict[str, torch.Tensor], vocab_size: int) -> int:
    """The parameters of the exported model as transformers counts them: the tied head once, no padded rows."""
    total = sum(t.numel() for name, t in state.items() if name != "lm_head.weight")
    wte = state["transformer.wte.weight"]
    return total - (wte.shape[0] - vocab_size) * wte.shape[1]


def export(
    config: GPTConfig,
    state: dict[str, torch.Tensor],
    tokenizer,
    out_dir: str | Path,
    texts: dict[str, str] | None = None,
) -> Path:
    """Write the Hugging Face folder, all or nothing: built in a temporary folder, then renamed into place.

    `texts`: more files to write into it, {name: content} (the model card, README.md).
    """
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptlabError(f"out_dir: {out} exists and is not an empty folder: refusing to overwrite it")
    hf_config = config_to_hf(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(to_hf_weights(state, config.vocab_size), tmp / WEIGHT_FILES[0], metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / GPTLAB_TOKENIZER).write_text(json.dumps(tokenizer.state_dict(), ensure_ascii=False))
        if not isinstance(tokenizer, CharTokenizer):  # GPT-2's BPE: the files transformers' GPT2Tokenizer reads
            vocab_bpe, encoder_json = official_files()
            shutil.copyfile(encoder_json, tmp / "vocab.json")
            shutil.copyfile(vocab_bpe, tmp / "merges.txt")
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text)
        readable(tmp)
        os.replace(tmp, out)  # onto a missing or empty folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def readable(folder: Path) -> None:
    """The permissions a plain mkdir and open would give: mkdtemp and safetensors make them private."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)
