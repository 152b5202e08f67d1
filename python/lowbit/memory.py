"""Giving freed heap memory back to the system.

glibc keeps freed heap pages mapped; a calibration pass that allocates and frees
per-batch temporaries between long-lived tensors (cached activations, Hessians) leaves
free holes in the heap that still count in the process's resident size, and they add up
over many batches. ``malloc_trim(0)`` returns the whole free pages in those holes.

glibc also raises its mmap threshold to the largest block freed so far (up to 32 MiB):
after a layer-sized block is freed, later blocks of that size come from the heap and stay
there. A layer-by-layer job fixes the threshold (``map_large_blocks``) so that large
blocks get their own mappings and go back to the system when freed.
"""
import ctypes
import gc

try:
    _libc = ctypes.CDLL("libc.so.6")
    _malloc_trim, _mallopt = _libc.malloc_trim, _libc.mallopt
except (OSError, AttributeError):  # not glibc: nothing to do
    _malloc_trim = _mallopt = None
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def release_freed_memory(collect=True):
    """Returns free heap pages to the system (after a garbage collection when ``collect``)."""
    if collect:
        gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)


def map_large_blocks(min_bytes=1 << 20):
    """From now on, in this process, blocks of at least ``min_bytes`` get their own
    mappings (glibc's M_MMAP_THRESHOLD, which also stops its dynamic raise). Returns False
    where the C library is not glibc."""
    if not isinstance(min_bytes, int) or not 4096 <= min_bytes <= 1 << 30:
        raise ValueError(f"map_large_blocks: min_bytes={min_bytes!r} is outside [4096, 2**30]")
    return _mallopt is not None and _mallopt(_M_MMAP_THRESHOLD, min_bytes) == 1
