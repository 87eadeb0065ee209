"""Model FLOPs per token, the peak this machine measures for itself, and MFU."""

from __future__ import annotations

import time
from functools import cache

import torch

# dense bf16 tensor-core peaks (no sparsity), FLOP/s, by the name torch reports
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_token(model: torch.nn.Module) -> float:
    """6N + 12·L·d·T (PaLM's estimate, as nanoGPT's): N counts every parameter except learned positions
    (a lookup, no matmul); a tied head counts once, as its matmul does run once."""
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    if "wpe" in model.transformer:
        n -= model.transformer.wpe.weight.numel()
    return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


@cache
def measured_peak_flops(dtype: torch.dtype, device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a size² matmul in `dtype` on `device`: the best of `repeats` after one warm-up."""
    # its own generator: a run that times the peak first must draw the same dropout masks as one that does not
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        if i:  # the first call pays for allocation and kernel selection
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_flops(precision: str, device: torch.device, size: int = 1024) -> float:
    """The peak MFU is measured against: the GPU's datasheet bf16 figure, or this CPU's own matmul speed
    (1024² by default: small, as every training run pays it once)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAKS.items():
            if key in name:
                return peak
    dtype = torch.bfloat16 if "bf16" in str(precision) else torch.float32
    return measured_peak_flops(dtype, "cpu", size)
