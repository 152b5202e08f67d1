"""Giving freed heap memory back to the system.

glibc keeps freed heap pages mapped; a calibration pass that allocates and frees
per-batch temporaries between long-lived tensors (cached activations, Hessians) leaves
free holes in the heap that still count in the process's resident size, and they add up
over many batches. ``malloc_trim(0)`` returns the whole free pages in those holes.
"""
import ctypes
import gc

try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to do
    _malloc_trim = None


def release_freed_memory(collect=True):
    """Returns free heap pages to the system (after a garbage collection when ``collect``)."""
    if collect:
        gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
