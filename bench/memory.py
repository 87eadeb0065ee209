"""GPU memory each process needs to train the GPT-2 family, computed (nothing is allocated): `make bench-memory`.

    python bench/memory.py [--models gpt2 gpt2_medium] [--batch 16] [--context 1024] [--gpus 8]

Per GPU, in bytes, for P parameters (gptlab's own count, on the meta device, GPT-2's 50,257-token vocabulary padded
by the preset's model.vocab_multiple), micro-batch b windows of s tokens, width h, L blocks, vocabulary V:

- weights, gradients and AdamW's two moments, all float32 under bf16-mixed (Lightning keeps the float32 weights and
  autocasts the matmuls): 16·P. DDP replicates them, and its gradient buckets add 4·P (Lightning leaves
  gradient_as_bucket_view off). FSDP full-shard over N GPUs holds 16·P/N, plus the units gathered at a time:
  the root (embeddings, final norm, tied head, gathered from its forward to the end of the backward) and one block,
  float32 weights and gradients, 8·(P_root + P_block) (gptlab's FSDP2 gathers float32: no bf16 param_dtype).
- autocast's bf16 copies of every Linear's weight, saved for the backward: 2·P_linear (under FSDP too: the copies
  are of the gathered weights and outlive the gather).
- activations of one micro-batch, with SDPA (flash attention: no s² term): 36·s·b·h per block, measured here with
  saved-tensor hooks (the bench's test checks it). Korthikanti et al. 2022 give 34·s·b·h + 5·a·s²·b for 16-bit
  activations without flash attention; gptlab's residual stream stays float32 under autocast (+4·s·b·h: the two
  LayerNorm inputs) and has no dropout masks with dropout 0 (-2·s·b·h). Outside the blocks: 6·s·b·h (the final
  norm's float32 input, the head's bf16 input) + 10·s·b·V (the loss's float32 log-probabilities kept for the
  backward, 4, and at the backward's start their float32 gradient, 4, and its bf16 cast, 2).
- with activation checkpointing (`activation_checkpointing=true`, torch.utils.checkpoint per block): each block keeps
  only its float32 input, 4·s·b·h, and one block's 36·s·b·h is recomputed at a time.

Not counted: the CUDA context and NCCL buffers (about 0.5-1 GiB), the allocator's fragmentation, FSDP's prefetch of
the next block, torch.compile's workspace. bench/gpu_distributed.py measures the peak on a GPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptlab.model.gpt import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl")
GPT2_VOCAB = 50257
GIB = 2**30
BLOCK_ACTIVATIONS = 36  # bytes per s·b·h that one block saves for its backward (bf16-mixed, SDPA)
STATE_BYTES = 16  # float32 weight, gradient, exp_avg, exp_avg_sq
DDP_BUCKET_BYTES = 4  # float32 gradient buckets beside the gradients
GATHERED_BYTES = 8  # a gathered FSDP unit: float32 weights and gradients
CAST_BYTES = 2  # autocast's bf16 copy of a Linear weight
COLUMNS = ("states", "activations", "checkpointed", "ddp", "fsdp", "fsdp_checkpointed")  # the table's, in GiB


def preset(name: str, vocab_size: int = GPT2_VOCAB) -> GPTConfig:
    """conf/model/<name>.yaml as the run reads it, with the tokenizer's vocabulary filled in."""
    node = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    node.pop("defaults", None)
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(GPTConfig), node))
    config.vocab_size = vocab_size
    return config


@dataclass
class Counts:
    params: int
    linear: int  # parameters of nn.Linear layers (the tied head once): what autocast copies to bf16
    root: int  # everything outside the blocks: FSDP's root unit
    block: int  # one block: an FSDP unit


def counts(config: GPTConfig) -> Counts:
    with torch.device("meta"):  # shapes only
        model = GPT(config)
    unique = lambda params: sum({id(p): p.numel() for p in params}.values())  # noqa: E731
    linear = unique(p for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
    params = unique(model.parameters())
    block = unique(model.transformer.h[0].parameters())
    return Counts(params, linear, params - config.n_layer * block, block)


def activation_bytes(config: GPTConfig, batch: int, context: int, checkpointing: bool = False) -> int:
    """One micro-batch's activations at the start of the backward (see the module's docstring)."""
    sbh, sbv = context * batch * config.n_embd, context * batch * config.padded_vocab_size
    blocks = BLOCK_ACTIVATIONS * sbh * config.n_layer
    if checkpointing:
        blocks = 4 * sbh * config.n_layer + BLOCK_ACTIVATIONS * sbh
    return blocks + 6 * sbh + 10 * sbv


def estimate(name: str, batch: int, context: int, gpus: int) -> dict[str, float]:
    """Bytes per GPU, by part and in total, for DDP and FSDP over `gpus`, with and without checkpointing."""
    config = preset(name)
    c = counts(config)
    states, casts = STATE_BYTES * c.params, CAST_BYTES * c.linear
    activations = activation_bytes(config, batch, context)
    checkpointed = activation_bytes(config, batch, context, checkpointing=True)
    ddp_model = states + DDP_BUCKET_BYTES * c.params + casts
    fsdp_model = states / gpus + GATHERED_BYTES * (c.root + c.block) + casts
    return {
        "params": c.params,
        "states": states,
        "activations": activations,
        "checkpointed": checkpointed,
        "ddp": ddp_model + activations,
        "fsdp": fsdp_model + activations,
        "fsdp_checkpointed": fsdp_model + checkpointed,
    }


def markdown(rows: dict[str, dict], args: argparse.Namespace, command: str) -> str:
    n = args.gpus
    lines = [
        f"GPU memory per process, GiB, to train with AdamW in bf16-mixed: micro-batch {args.batch} x {args.context} "
        f"tokens per GPU, {n} GPUs (`{command}`)",
        "",
        f"| model | parameters | weights + grads + AdamW (16 B/param) | activations | activations, checkpointed "
        f"| DDP | FSDP / {n} | FSDP / {n}, checkpointed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        gib = [f"{r[k] / GIB:.1f}" for k in COLUMNS]
        lines.append(f"| {name} | {r['params']:,} | " + " | ".join(gib) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=16, help="windows per GPU per micro-batch")
    parser.add_argument("--context", type=int, default=1024, help="tokens per window (at most the model's 1024)")
    parser.add_argument("--gpus", type=int, default=8, help="processes FSDP shards over")
    args = parser.parse_args(argv)
    for key in ("batch", "context", "gpus"):
        if getattr(args, key) <= 0:
            parser.exit(2, f"error: --{key}: must be a positive integer, got {getattr(args, key)}\n")
    if args.context > (shortest := min(preset(name).block_size for name in args.models)):
        parser.exit(2, f"error: --context: {args.context} is longer than the models' context, {shortest}\n")
    command = shlex.join(["python", "bench/memory.py", *(sys.argv[1:] if argv is None else argv)])
    rows = {name: estimate(name, args.batch, args.context, args.gpus) for name in args.models}
    print(markdown(rows, args, command))


if __name__ == "__main__":
    main()
