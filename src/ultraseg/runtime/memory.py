"""Keep the memory of freed frame buffers in the process for the next frame, instead of handing it back to the
kernel after every frame.

A 640 x 480 frame's probability map (1.2 MB of float32), its mask and the copies around them are larger than
glibc's default mmap and trim thresholds, so every frame's buffers were mapped, zero-filled by the kernel page by
page and unmapped again: on one core that cost as much as the network itself. Raising both thresholds once lets
malloc hand the same memory to the next frame; the process then keeps up to the trim threshold of freed memory
instead of returning it. Outside glibc (macOS, Windows, musl) this does nothing, and thresholds the user set through
glibc's environment variables are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20
"""Allocations below this come from the heap, where freed memory is reused (glibc's largest allowed value)."""
TRIM_THRESHOLD = 256 << 20
"""Freed memory at the top of the heap is returned to the kernel only beyond this."""
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); True when both were raised. Repeated calls
    set the same values."""
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to ask, or one without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
