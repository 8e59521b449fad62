"""Keeps glibc's malloc from handing large buffers back to the kernel after every chunk.

Why: a server that moves bulk data allocates one bytes object per chunk read (up to uvloop's 256 KiB
read size) and one per answer. With glibc's defaults, blocks above the dynamic mmap threshold are
mmap'ed and munmap'ed each time, and freeing the top of the heap past the trim threshold (128 KiB)
gives it back with sbrk; the next chunk then page-faults its memory in again. Measured here with
../shared/bench's `bulk rt` (256 MiB of 1 KiB lines, server and client pinned to their own core):
about 375 MB/s with the defaults, 1,180-1,300 MB/s with the settings below, against 1,300 MB/s for the
C reference server (docs/performance.md). The C server has no such cost because it reuses one buffer.

The settings: blocks under 1 MiB always come from the heap (so no chunk is ever mmap'ed), and the
heap's top is given back only when 8 MiB of it is free. Memory stays bounded by the same backpressure
limits as before; at most 8 MiB of freed heap is kept per process. Only glibc has mallopt with these
parameters; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1024 * 1024  # bytes: above uvloop's 256 KiB read buffer and asyncio's 256 KiB reads
TRIM_THRESHOLD = 8 * 1024 * 1024  # bytes of free heap top kept before giving memory back


def keep_heap_for_streaming() -> bool:
    """Apply the settings above; True if glibc accepted them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only: musl's mallopt ignores these
    except (OSError, AttributeError):
        return False  # not glibc: nothing to tune, and nothing is lost by not tuning it
    del gnu_get_libc_version
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
