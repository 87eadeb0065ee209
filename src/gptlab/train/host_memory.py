"""Host memory: glibc keeps what the training loop frees for its next step, rather than handing it back each time.

PyTorch's CPU tensors come from malloc. glibc serves large blocks (over 32 MB, and early on over 128 KB) with their
own mmap and unmaps them when they are freed, and trims the free top of its heap back to the kernel; a step's large
activations are then fresh pages every step, each zeroed by the kernel on first touch, which shows on large CPU
shapes (docs/performance.md, host memory, has the page faults and time measured). With mmap off and trimming
deferred, the memory one step frees serves the next, as PyTorch's caching allocator does on a GPU; the price is
that the process holds on to its peak resident set. `keep_freed_memory: false` leaves glibc's defaults.
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
