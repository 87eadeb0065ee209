"""Choosing the training precision: bf16-mixed where the hardware runs bf16 fast, fp32 elsewhere."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# native bf16 dot products: AVX-512 BF16 (AMD Zen 4+, Intel Cooper Lake+) or AMX (Sapphire Rapids+)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# below this width autocast's casts cost more than bf16 matmuls save (`python bench/bf16.py` measures the widths;
# docs/performance.md, bf16 on the CPU)
BF16_CPU_MIN_WIDTH = 256


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bf16 instruction sets this CPU reports (Linux /proc/cpuinfo; none found elsewhere)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if platform.system() == "Linux" and path.is_file() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in BF16_CPU_FLAGS if f in flags]


def resolve_precision(precision: str, accelerator: str, width: int, cpuinfo: str | None = None) -> str:
    """`auto` becomes bf16-mixed on a GPU with bf16, or on a CPU with native bf16 for a model at least
    BF16_CPU_MIN_WIDTH wide; else 32-true. The choice and its reason are logged."""
    if str(precision) != "auto":
        return str(precision)
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    flags = cpu_bf16_flags(cpuinfo)
    if flags and width >= BF16_CPU_MIN_WIDTH:
        log.info("precision auto: bf16-mixed (this CPU has %s)", ", ".join(flags))
        return "bf16-mixed"
    if flags:
        log.info(
            "precision auto: 32-true (model.n_embd %d < %d: fp32 is faster at this width)", width, BF16_CPU_MIN_WIDTH
        )
    else:
        log.info("precision auto: 32-true (this CPU has no native bf16: %s absent)", " and ".join(BF16_CPU_FLAGS))
    return "32-true"
