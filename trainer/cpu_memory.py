"""Keep freed memory inside the process while training on the CPU (Linux with glibc).

Why: glibc hands large freed blocks back to the kernel (a block above its mmap threshold, always
one above 32 MiB, is mapped on its own and unmapped when freed; the heap's top is trimmed).
PyTorch frees a step's activations and allocates the same sizes again the next step, so every
step faults in, and the kernel zeroes, gigabytes of fresh pages: with EfficientNet-Lite0 at
224 px and batch 32, 2.14 s of kernel time beside 11.87 s of user time per step under load
(`bench/cpu_allocator.py`, BENCHMARKS.md). With glibc's mmap
off and its trimming pushed out of reach, freed blocks stay in the heap and the next step reuses
them. The cost: the process keeps its peak memory until it exits, as GPU allocators do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB lie free at the top


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse; True where it took both settings,
    False on other platforms or C libraries (nothing changes there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt means other things
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
