"""OpenBLAS's kernel choice. Debian's OpenBLAS 0.3.21 does not recognise some recent
CPUs and falls back to generic SSE kernels (4x slower matmuls, which calibration and
float layers use). OPENBLAS_CORETYPE names the kernel family; OpenBLAS reads it once,
when torch loads it.

- The ``lowbit`` command (and ``python3 -m lowbit``) sets it before torch loads, unless
  the user set it (``configure_for_command``, called first thing by ``lowbit/__init__``).
- ``import lowbit`` in a user's program changes nothing and warns once when OpenBLAS
  runs generic kernels on a CPU with AVX2 (``warn_if_generic``).
"""
import ctypes
import os
import sys
import warnings

FAST_CORES = ("Haswell", "Zen", "SkylakeX", "CooperLake", "SapphireRapids")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def suggested_coretype(flags=None):
    """The kernel family for this CPU: SkylakeX with AVX-512, Haswell with AVX2, else None."""
    flags = _cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return "SkylakeX"
    if "avx2" in flags:
        return "Haswell"
    return None


def _is_lowbit_command():
    argv = getattr(sys, "orig_argv", sys.argv)
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "lowbit":
        return True
    return os.path.basename(sys.argv[0] or "") == "lowbit"


def configure_for_command():
    """For the lowbit command, before torch is imported: OPENBLAS_CORETYPE, and a short
    OpenMP spin (GOMP_SPINCOUNT=10000, as scripts/env.sh sets: libgomp's default spin
    takes the cores from OpenBLAS's threads, and from any other process on the machine),
    each unless the user set it."""
    if "torch" in sys.modules or not _is_lowbit_command():
        return
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    core = suggested_coretype()
    if core and not os.environ.get("OPENBLAS_CORETYPE"):
        os.environ["OPENBLAS_CORETYPE"] = core


def core_name():
    """The kernel family OpenBLAS chose (None when OpenBLAS is not the BLAS in use)."""
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        fn = lib.openblas_get_corename
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_char_p
    name = fn()
    return name.decode("ascii", "replace") if name else None


_warned = False


def warn_if_generic():
    global _warned
    if _warned:
        return
    core, want = core_name(), suggested_coretype()
    if core and want and core not in FAST_CORES:
        _warned = True
        warnings.warn(f"OpenBLAS runs its generic '{core}' kernels on this CPU (matmuls up to 4x slower); set "
                      f"OPENBLAS_CORETYPE={want} before Python starts (the lowbit command does)", RuntimeWarning,
                      stacklevel=3)
