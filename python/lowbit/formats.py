"""Python face of the C++ format engine (``torch.ops.lowbit.*``).

A tensor of any rank 1-6 is seen as a matrix ``[rows, K]`` whose last axis ``K`` is
the reduction axis: ``channel`` and ``token`` granularities give one scale per row,
``group`` one scale per ``group_size`` consecutive elements of a row (the last group
may be shorter), ``tensor`` one scale in all. For a Conv2d weight ``[Cout, Cin, kh,
kw]`` reshape to ``[Cout, -1]`` first. MX formats always use blocks of 32 along K with
E8M0 scale bytes. Inputs may be float32, float16 or bfloat16, contiguous or not;
results keep the input dtype. Scales are float32 (uint8 E8M0 bytes for MX formats),
offsets int32 (zero when symmetric).
"""
import torch

from lowbit import _C  # noqa: F401

# the C++ format table (formats/format.cpp): Python keeps no list of its own
FORMAT_INFO = {row["name"]: row for row in _C.format_table()}
FORMATS = tuple(FORMAT_INFO)
GRANULARITIES = tuple(_C.granularities())
_OPS = torch.ops.lowbit


def is_mx(fmt):
    """Whether ``fmt`` has E8M0 scales per block of 32 along K (an unknown name: False)."""
    return fmt in FORMAT_INFO and FORMAT_INFO[fmt]["is_mx"]


def _check_tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")


def _default_group(fmt, granularity, group_size):
    if group_size is None:
        return FORMAT_INFO[fmt]["block"] if is_mx(fmt) else 0
    return int(group_size)


def _granularity(fmt, granularity):
    if granularity is None:
        return "group" if is_mx(fmt) else "tensor"
    return granularity


def compute_scales(x, fmt, granularity=None, group_size=None, symmetric=True, mx_rule="auto",
                   scale_dtype="float32", scale_rule="absmax"):
    """Scales and offsets of ``x`` for format ``fmt``.

    Returns ``(scale, offset)``; shapes are ``x.shape[:-1] + (groups,)`` (all ones for
    ``tensor``). ``mx_rule`` picks the E8M0 exponent rule of MX formats: ``ocp``,
    ``ascend`` (bumps the exponent when the block max mantissa exceeds 1.75) or
    ``auto`` (Ascend for MXFP4, OCP for MXFP8). ``scale_dtype="float16"`` (int8/int4)
    rounds each scale to the nearest fp16 value before the offsets are derived, so the
    scales can be stored as fp16 (GGUF Q8_0/Q4_0 blocks) without changing a code.
    ``scale_rule="signed_max"`` (symmetric int4) is ggml's Q4_0 rule: the scale is
    ``m / -8`` with ``m`` the granule's value of largest magnitude, sign included (the
    negative one on a tie), so code -8 lands on m's side; it is negative where m > 0.
    """
    _check_tensor(x, "x")
    granularity = _granularity(fmt, granularity)
    return _OPS.quant_scales(x, fmt, granularity, _default_group(fmt, granularity, group_size),
                             symmetric, mx_rule, scale_dtype, scale_rule)


def fake_quant(x, fmt, granularity=None, group_size=None, symmetric=True, mx_rule="auto",
               scale=None, offset=None, out=None):
    """Quantize-dequantize ``x``.

    With ``scale`` (and ``offset``) given, uses them (static quantization); otherwise
    computes them from ``x`` itself in the same pass. ``out`` (a preallocated contiguous
    tensor of x's shape) receives the result when given.
    """
    _check_tensor(x, "x")
    granularity = _granularity(fmt, granularity)
    gs = _default_group(fmt, granularity, group_size)
    if scale is None:
        if out is None:
            return _OPS.fake_quant_dynamic(x, fmt, granularity, gs, symmetric, mx_rule)
        return _OPS.fake_quant_dynamic_out(x, out, fmt, granularity, gs, symmetric, mx_rule)
    if offset is None:
        offset = torch.empty(0, dtype=torch.int32)
    if out is not None:
        return _OPS.fake_quant_out(x, scale, offset, out, fmt, granularity, gs, symmetric)
    return _OPS.fake_quant(x, scale, offset, fmt, granularity, gs, symmetric)


def fake_quant_dynamic(x, fmt, granularity=None, group_size=None, symmetric=True, mx_rule="auto"):
    """Quantize-dequantize ``x`` with scales computed from ``x`` (see ``fake_quant``)."""
    return fake_quant(x, fmt, granularity, group_size, symmetric, mx_rule)


def pack(x, fmt, scale, offset=None, granularity=None, group_size=None, symmetric=True):
    """Storage codes of ``x`` as uint8 ``x.shape[:-1] + (row_bytes,)``.

    4-bit formats hold two codes per byte (low nibble = even index); 8-bit formats one.
    INT codes are two's complement; MX rows are zero-padded to whole 32-blocks.
    """
    _check_tensor(x, "x")
    granularity = _granularity(fmt, granularity)
    if offset is None:
        offset = torch.empty(0, dtype=torch.int32)
    return _OPS.pack(x, scale, offset, fmt, granularity, _default_group(fmt, granularity, group_size),
                     symmetric)


def unpack(packed, fmt, scale, cols, offset=None, granularity=None, group_size=None, symmetric=True,
           dtype=torch.float32):
    """Dequantized values from ``pack`` output; ``cols`` is the original last dimension."""
    _check_tensor(packed, "packed")
    granularity = _granularity(fmt, granularity)
    if offset is None:
        offset = torch.empty(0, dtype=torch.int32)
    return _OPS.unpack(packed, scale, offset, fmt, granularity,
                       _default_group(fmt, granularity, group_size), symmetric, int(cols), dtype)


def packed_row_bytes(fmt, cols):
    """Bytes one packed row of ``cols`` elements takes."""
    return _C.packed_row_bytes(fmt, int(cols))


def encode(x, fmt):
    """Element codes of ``x`` with scale 1, one code per uint8 (no packing)."""
    _check_tensor(x, "x")
    return _OPS.encode(x, fmt)


def decode(codes, fmt):
    """float32 value of each element code (scale 1)."""
    _check_tensor(codes, "codes")
    return _OPS.decode(codes, fmt)


def isa():
    """Instruction set the kernels use now: ``avx512``, ``avx2`` or ``scalar``."""
    return _OPS.isa()


def available_isas():
    """The instruction sets this CPU runs (``scalar`` first), as set_isa takes them."""
    return list(_OPS.available_isas())


def set_isa(name):
    """Force an instruction set (``auto``, ``avx512``, ``avx2``, ``scalar``), for tests
    and benchmarks. Raises ValueError when this CPU lacks it. Also settable with the
    environment variable ``LOWBIT_ISA`` before import."""
    _OPS.set_isa(name)
