"""LoRA through Hugging Face peft: low-rank adapters beside a GPT's projections, the only weights that train.

`peft.inject_adapter_in_model` puts the adapters into the GPT itself, so the model stays a GPT with its own module
names. An adapted projection, e.g. `transformer.h.0.attn.c_attn`, becomes peft's `lora.Linear`, whose state-dict
keys are `...c_attn.base_layer.weight` (and `.bias`: the pretrained projection, frozen) and
`...c_attn.lora_A.default.weight` (rank x in), `...c_attn.lora_B.default.weight` (out x rank, zero at the start,
so training starts from exactly the pretrained model). Every other key is the GPT's own.

A checkpoint of a LoRA run holds that whole state dict (base weights too, so it resumes and loads with nothing
else), and its hyper_parameters hold `lora` (this module's LoraConfig as a dict), from which `merged_weights`
rebuilds the adapted model and folds the adapters in with peft's own merge: plain GPT weights again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from gptlab.errors import ConfigError, GptlabError
from gptlab.model.gpt import GPT, GPTConfig

# the readable names of the projections an adapter can sit beside, and their module names in every block
TARGETS = {"qkv": "attn.c_attn", "attn_out": "attn.c_proj", "mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj"}
BIASES = ("none", "lora_only", "all")  # peft's: which biases train beside the adapters
INSTALL = 'pip install "gptlab[lora]"'
ADAPTER_KEYS = (".lora_A.", ".lora_B.")


@dataclass
class LoraConfig:
    """finetune=lora (conf/finetune/lora.yaml); the schema finetune/base_lora."""

    rank: int = 8  # r: the adapters' inner width
    alpha: float = 16.0  # the adapters' output is scaled by alpha / rank (alpha / sqrt(rank) with rslora)
    dropout: float = 0.0  # on the adapters' input only
    targets: list[str] = field(default_factory=lambda: ["qkv", "attn_out"])
    bias: str = "none"  # none: no bias trains; lora_only: the adapted projections' biases; all: every bias
    rslora: bool = False  # rank-stabilised scaling, alpha / sqrt(rank)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"finetune.rank: must be a positive whole number, got {self.rank!r}")
        if not 0 < self.alpha < math.inf:
            raise ConfigError(f"finetune.alpha: must be a positive finite number, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"finetune.dropout: must be in [0, 1), got {self.dropout!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ConfigError(
                f"finetune.targets: must name each projection once, from {list(TARGETS)}, got {list(self.targets)}"
            )
        if self.bias not in BIASES:
            raise ConfigError(f"finetune.bias: must be one of {list(BIASES)}, got {self.bias!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def require_peft(why: str = "finetune=lora needs peft"):
    """peft, imported only here and only for adapters: a plain run, or a plain checkpoint, never needs it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"{why}: {INSTALL}") from None
    return peft


def apply(model: GPT, config: LoraConfig) -> GPT:
    """The adapters put into `model` in place; every weight but them (and the biases config.bias names) frozen."""
    peft = require_peft()
    peft_config = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=[TARGETS[t] for t in config.targets],
        bias=config.bias,
        use_rslora=config.rslora,
    )
    peft.inject_adapter_in_model(peft_config, model)
    return model


def adapted_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def is_adapter(key: str) -> bool:
    return any(part in key for part in ADAPTER_KEYS)


def load_base(model: GPT, weights: dict[str, torch.Tensor], source: str, key: str = "init_from") -> None:
    """Plain GPT weights into an adapted model: each adapted projection's under its `base_layer.` name; the
    adapters keep their start (A random, B zero)."""
    adapted = adapted_modules(model)
    renamed = {}
    for name, tensor in weights.items():
        module, _, param = name.rpartition(".")
        renamed[f"{module}.base_layer.{param}" if module in adapted else name] = tensor
    missing, extra = model.load_state_dict(renamed, strict=False)
    missing = [k for k in missing if not is_adapter(k)]
    if missing or extra:
        raise GptlabError(f"{key}: {source} does not fit the model: missing {missing[:4]}, extra {extra[:4]}")


def merge(model: GPT) -> GPT:
    """The adapters folded into their projections by peft's own merge (W += scaling * B @ A), and each peft layer
    replaced by its base nn.Linear: a plain GPT, whose state dict has the GPT's own names."""
    for name, layer in adapted_modules(model).items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    return model


def merged_weights(
    config: GPTConfig, weights: dict[str, torch.Tensor], lora: dict, source: str, key: str = "ckpt_path"
) -> dict[str, torch.Tensor]:
    """A LoRA checkpoint's state dict as plain GPT weights (what every command that loads weights uses)."""
    require_peft(f"{key}: {source} holds LoRA adapters, and folding them into its weights needs peft")
    model = apply(GPT(config), LoraConfig(**lora))
    model.load_state_dict(weights)
    return {name: t.detach() for name, t in merge(model).state_dict().items()}


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters, a tied tensor counted once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def trainable_line(model: torch.nn.Module) -> str:
    trainable, total = parameter_counts(model)
    return f"lora: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"


def as_record(config: LoraConfig | None) -> dict | None:
    """What a checkpoint's hyper_parameters hold under `lora`: plain containers only (torch.load weights_only)."""
    return None if config is None else asdict(config)
