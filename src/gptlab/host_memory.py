"""Host memory: glibc keeps what the training loop frees for its next step, rather than handing it back each time.

PyTorch's CPU tensors come from malloc. glibc serves large blocks (over 32 MB, and early on over 128 KB) with their
own mmap and unmaps them when they are freed, and trims the free top of its heap back to the kernel; a step's large
activations are then fresh pages every step, each zeroed by the kernel on first touch. On the 10.7M shape
(6x384, batches of 64x256) in bf16-mixed that was about 280,000 page faults a step and 6% of its time on this
project's CPU (README, Performance). With mmap off and trimming deferred, the memory one step frees serves the
next, as PyTorch's caching allocator does on a GPU; the price is that the process holds on to its peak resident
set (2 to 5% more on that shape). `keep_freed_memory: false` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: hand back free heap top only beyond 2 GiB


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed memory; returns False, doing nothing, where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
