"""Sharded training (trainer=fsdp): torch's FSDP2 (`fully_shard`) through Lightning's ModelParallelStrategy.

Why FSDP2 and not Lightning's FSDPStrategy (FSDP1): Lightning refuses FSDP1 without a GPU, so none of its behaviour
(clipping, the non-finite guard, checkpoints, resume, export) could be tested on a CPU, while FSDP2 runs on CPU
processes over gloo as on GPUs over NCCL. FSDP2 shards each parameter on its first dimension as a DTensor and keeps
the module's own parameter names (FSDP1 flattens them, renames them and needs `use_orig_params` to keep an
optimizer's per-parameter groups), so the state dict, the optimizer groups and the gradient norm (a DTensor reduced
over every shard) stay what they are on one process. It is the FSDP torch develops; FSDP1 is in maintenance.

Each transformer block is one unit of sharding (all-gathered just before its forward and backward, freed after), and
the root holds the rest: the embeddings, the final norm and the head (tied to the embeddings or not).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from gptlab.model.gpt import GPT

TARGET = f"{__name__}.fsdp"  # what conf/trainer/fsdp.yaml names as trainer.strategy
SHARDED_KEY = "sharded"  # in a checkpoint: true when trainer=fsdp wrote it (its optimizer state's layout)


def fsdp(devices: int, num_nodes: int) -> ModelParallelStrategy:
    """Lightning's ModelParallelStrategy as pure data parallel sharding over every process: the data-parallel
    dimension is the whole world (each process reads its own share of the batch), with no tensor parallelism.

    The checkpoint is one full .ckpt, gathered to rank 0's host memory: every reader of checkpoints (resume's pick
    of a run folder's newest readable one, the compatibility check before weights load, export, generate, evaluate,
    serve, init_from) reads one file, and a sharded run resumes on any number of processes, or on one.
    """
    return ModelParallelStrategy(
        data_parallel_size=devices * num_nodes, tensor_parallel_size=1, save_distributed_checkpoint=False
    )


def shard(model: GPT, mesh: DeviceMesh) -> None:
    """FSDP2 over `mesh`: each block its own unit, then the root (embeddings, final norm, head)."""
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def global_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s total norm as a plain tensor: over sharded gradients it is a DTensor whose value is the norm
    over every shard (reduced across processes), the same on every rank; a plain tensor otherwise already."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


@contextmanager
def whole_weights(model: torch.nn.Module) -> Iterator[None]:
    """The root's parameters gathered for code that calls the model's parts directly (generation calls
    `GPT.hidden`, not the module); the blocks gather their own in their forward. Every rank must run the same code
    inside, since each gather is a collective. Does nothing to a model that is not sharded."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
