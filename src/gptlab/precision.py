"""Choosing the training precision: bf16-mixed where the hardware runs bf16 fast, fp32 elsewhere."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# native bf16 dot products: AVX-512 BF16 (AMD Zen 4+, Intel Cooper Lake+) or AMX (Sapphire Rapids+)
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


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


def resolve_precision(precision: str, accelerator: str, cpuinfo: str | None = None) -> str:
    """`auto` becomes bf16-mixed on a GPU with bf16 or a CPU with native bf16, else 32-true (logged)."""
    if str(precision) != "auto":
        return str(precision)
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if flags := cpu_bf16_flags(cpuinfo):
        log.info("precision auto: bf16-mixed (this CPU has %s)", ", ".join(flags))
        return "bf16-mixed"
    log.info("precision auto: 32-true (this CPU has no native bf16: %s absent)", " and ".join(BF16_CPU_FLAGS))
    return "32-true"
