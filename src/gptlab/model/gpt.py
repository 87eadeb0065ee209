"""A decoder-only GPT in one file.

token + position embeddings -> N x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> linear head

The switches in `GPTConfig` express the textbook variants exactly: GPT-2 (LayerNorm, GELU, biases, tied head),
a notebook-style GPT (bias-free attention, biased MLP, tied head) and a scalar-style "microgpt" (RMSNorm without
weights, ReLU², no biases anywhere, untied head). The modern ones, all off in the GPT-2 presets: rotary position
embeddings (no learned positions then), QK-norm, zero-initialised output projections and logit soft-capping.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptlab.errors import ConfigError
from gptlab.model.kv_cache import BatchKVCache, KVCache
from gptlab.model.sampling import sample_next

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "relu2")


@dataclass
class GPTConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    vocab_size: int | None = None  # filled in from the tokenizer, never by hand
    vocab_multiple: int = 1  # pad the embedding and head up to a multiple of this (64: faster matmuls)
    dropout: float = 0.0
    bias: bool = True  # default for every linear layer and LayerNorm
    attn_bias: bool | None = None  # overrides `bias` for the q/k/v and output projections
    mlp_bias: bool | None = None  # overrides `bias` for the MLP
    tie_weights: bool = True
    mlp_hidden: int | None = None  # MLP width; 4 * n_embd when unset
    norm: str = "layernorm"
    norm_weight: bool = True  # rmsnorm only: a learned gain, or none at all
    activation: str = "gelu"
    rope: bool = False  # rotary position embeddings on q and k instead of a learned wpe
    rope_base: float = 10000.0
    qk_norm: bool = False  # RMS-normalise q and k per head before attention
    zero_init: bool = False  # output projections of attention and MLP start at zero: each block starts as identity
    logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            _check_positive_int(key, getattr(self, key))
        if self.vocab_size is not None:
            _check_positive_int("vocab_size", self.vocab_size)
        if self.mlp_hidden is not None:
            _check_positive_int("mlp_hidden", self.mlp_hidden)
        _check_positive_int("vocab_multiple", self.vocab_multiple)
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        # NaN fails every comparison, so each check states what is legal; rope_base is checked with rope off too,
        # since a value that can never work is a typo
        if not 0 < self.rope_base < math.inf:
            raise ConfigError(f"model.rope_base must be a positive finite number, got {self.rope_base}")
        if self.logit_softcap is not None and not 0 < self.logit_softcap < math.inf:
            raise ConfigError(f"model.logit_softcap must be a positive finite number or null, got {self.logit_softcap}")
        if self.rope and self.head_dim % 2:
            raise ConfigError(f"model.rope needs an even head size (n_embd / n_head = {self.head_dim})")
        if self.norm == "layernorm" and not self.norm_weight:
            raise ConfigError("model.norm_weight=false needs model.norm=rmsnorm (LayerNorm always has a gain)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and head: the tokenizer's vocabulary rounded up; the extra ids never occur."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.n_embd


def _check_positive_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, weight: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, weight=config.norm_weight)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Rotary(nn.Module):
    """cos/sin tables of rotary embeddings, looked up at explicit positions (so a KV cache can pass an offset):
    (T,) positions shared by every sequence, or (B, T), one row per sequence (a batch of different lengths)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived: checkpoints stay unchanged

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = pos.float()[..., None] * self.inv_freq  # (T, head_dim / 2) or (B, T, head_dim / 2)
        if pos.dim() == 2:
            angles = angles[:, None]  # (B, 1, T, head_dim / 2): a sequence's positions hold for all its heads
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first half, second half) pair of x (B, H, T, D) by its position's angle."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        bias = config.bias if config.attn_bias is None else config.attn_bias
        self.n_head, self.dropout, self.qk_norm = config.n_head, config.dropout, config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv: KVCache | BatchKVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:  # bounds the attention logits, which lets higher learning rates train stably
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv is not None and not kv.empty:
            # the new tokens attend to every cached key and value (of their own sequence), causally among themselves
            k, v = kv.store(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=kv.attn_mask(T, x.device))
        else:
            if kv is not None:
                kv.store(layer, k, v)
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        bias = config.bias if config.mlp_bias is None else config.mlp_bias
        self.c_fc = nn.Linear(config.n_embd, config.hidden, bias=bias)
        self.c_proj = nn.Linear(config.hidden, config.n_embd, bias=bias)
        self.dropout = nn.Dropout(config.dropout)
        self.relu2 = config.activation == "relu2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        # GPT-2 uses the tanh approximation of GELU; matching it keeps its weights loadable
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, rotary: tuple | None = None, kv: KVCache | BatchKVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, kv, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size is unset: it comes from the tokenizer")
        self.config = config
        # recompute each block's activations in the backward pass instead of keeping them: less memory for about
        # one more forward; a training setting, not architecture, so not in GPTConfig (set by the train command)
        self.activation_checkpointing = False
        # training's loss from the head in chunks of tokens (torch's linear_cross_entropy), so the full logits and
        # their fp32 copy never exist; also a training setting (the `chunked_loss` key)
        self.chunked_loss = False
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                **({} if config.rope else {"wpe": nn.Embedding(config.block_size, config.n_embd)}),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=make_norm(config),
            )
        )
        self.rotary = Rotary(config.head_dim, config.rope_base) if config.rope else None
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if config.zero_init:
                    nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, pos_offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position; with targets, also the mean cross-entropy (targets of -1 are ignored).

        `pos_offset` is the position of idx's first token (non-zero when earlier tokens sit in a KV cache).
        Logits have padded_vocab_size columns: padded ids are never targets, so training drives them down.
        """
        h = self.hidden(idx, pos_offset=pos_offset)
        if targets is not None and self.chunked_loss:
            return None, self.chunked_cross_entropy(h, targets)
        logits = self.softcap(self.lm_head(h))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def chunked_cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of the head's logits, computed chunk by chunk by torch's linear_cross_entropy:
        the same loss as `forward`'s without the (tokens, vocabulary) logits. No soft-capping."""
        if self.config.logit_softcap is not None:
            raise ConfigError("chunked_loss: not with model.logit_softcap (the chunked head has no soft-cap)")
        weight, targets = self.lm_head.weight, targets.flatten()
        if torch.is_autocast_enabled(h.device.type):  # autocast does not reach inside the op: cast as it would
            dtype = torch.get_autocast_dtype(h.device.type)
            h, weight = h.to(dtype), weight.to(dtype)
        # per token, averaged here in fp32: the op's own mean of bf16 inputs sums in bf16, far off (7.7 for 8.3)
        losses = F.linear_cross_entropy(
            h.flatten(0, 1),
            weight,
            targets,
            ignore_index=-1,
            reduction="none",
            options=torch.nn.LinearCrossEntropyOptions(),
        )
        return losses.float().sum() / (targets != -1).sum()

    def hidden(self, idx: torch.Tensor, kv: KVCache | BatchKVCache | None = None, pos_offset: int = 0) -> torch.Tensor:
        """The final normalised hidden states; with a cache, idx continues the cached tokens: at kv.pos, or for a
        BatchKVCache each row at its own length."""
        T = idx.size(1)
        end = kv.length_after(T) if kv is not None else pos_offset + T
        if end > self.config.block_size:
            raise ValueError(f"sequence of length {end} exceeds model.block_size={self.config.block_size}")
        pos = kv.positions(T, idx.device) if kv is not None else torch.arange(pos_offset, end, device=idx.device)
        x = self.transformer.wte(idx)
        rotary = self.rotary(pos) if self.rotary is not None else None
        if rotary is None:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        recompute = self.activation_checkpointing and kv is None and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            x = checkpoint(block, x, rotary, None, i, use_reentrant=False) if recompute else block(x, rotary, kv, i)
        if kv is not None:
            kv.advance(T)
        return self.transformer.ln_f(x)

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def next_token_logits(self, idx: torch.Tensor, kv: KVCache | BatchKVCache | None = None) -> torch.Tensor:
        """(B, V) logits for the token after idx: the head runs on the last position only."""
        return self.softcap(self.lm_head(self.hidden(idx, kv)[:, -1, :]))

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per part; a tied head adds nothing of its own."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {"token embedding (wte)": count(self.transformer.wte)}
        if "wpe" in self.transformer:
            parts["position embedding (wpe)"] = count(self.transformer.wpe)
        for i, block in enumerate(self.transformer.h):
            parts[f"block {i}"] = count(block)
        parts["final norm"] = count(self.transformer.ln_f)
        parts["head" + (" (tied to wte)" if self.config.tie_weights else "")] = (
            0 if self.config.tie_weights else self.lm_head.weight.numel()
        )
        parts["total"] = sum(p.numel() for p in self.parameters())
        return parts

    def kv_cache(self, batch_size: int, device: torch.device) -> KVCache:
        c = self.config
        shape = (c.n_layer, batch_size, c.n_head, c.block_size, c.head_dim)
        return KVCache(shape, device, self.lm_head.weight.dtype)

    def batch_kv_cache(self, rows: int, device: torch.device) -> BatchKVCache:
        """A cache for up to `rows` sequences that each sit at their own position (the server's batch)."""
        c = self.config
        shape = (c.n_layer, rows, c.n_head, c.block_size, c.head_dim)
        return BatchKVCache(shape, device, self.lm_head.weight.dtype)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield max_new_tokens sampled (B, 1) tokens one by one, each conditioned on the last block_size tokens.

        Without the cache every step re-runs the whole (cropped) context. With it, the prompt runs once and each
        new token runs alone against the cached keys and values: the same tokens, far fewer operations. Once the
        context is longer than block_size, cropping it shifts every token to a new absolute position, so the
        cached keys and values no longer hold; the cache is then rebuilt from the cropped context at every step,
        which is exactly the classic crop, at the classic cost (one block_size forward pass per token).
        """
        kv = self.kv_cache(idx.size(0), idx.device) if kv_cache else None
        for _ in range(max_new_tokens):
            if kv is None:
                logits = self.next_token_logits(idx[:, -self.config.block_size :])
            elif kv.pos == 0 or kv.full:
                kv.pos = 0  # first step, or the window slid: prefill from the cropped context
                logits = self.next_token_logits(idx[:, -self.config.block_size :], kv)
            else:
                logits = self.next_token_logits(idx[:, -1:], kv)
            # only the tokenizer's own ids: a padded id can never be emitted
            next_token = sample_next(logits[:, : self.config.vocab_size], temperature, top_k, top_p, generator)
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token
