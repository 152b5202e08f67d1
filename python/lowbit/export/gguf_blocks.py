"""lowbit's packed weights as ggml blocks, written from the codes and scales themselves
(nothing is quantized again), and the float tensors as F32/F16.

- Q8_0 (fp16 d, 32 int8 q; x = d * q): int8, symmetric, one scale per 32 weights;
- Q4_0 (fp16 d, 16 bytes; x = d * (q - 8)): int4 symmetric, q = code + 8 (codes -8..7
  become 0..15), byte j holds element j (low nibble) and element j + 16 (high nibble);
- Q4_1 (fp16 d and m, 16 bytes; x = d * q + m): int4 asymmetric, q = code + 8 and
  m = -d * (8 + zero point), exact only where that product is an fp16 value.
- Q4_K (256-weight super-blocks: fp16 d and dmin, 12 bytes of 6-bit scales and mins for
  its 8 groups of 32, 128 bytes of nibbles; x = d * sc * q - dmin * m): symmetric int4
  (or int3) with weights "scale_dtype": "q4_k", whose group scales are d * sc already;
  written with dmin = 8 d and m = sc, so that x = d * sc * (q - 8), q = code + 8. Within
  each 64 weights, byte l holds weight l (low nibble) and weight l + 32 (high nibble).
- Q6_K (256-weight super-blocks: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8
  scales of 16 weights each, fp16 d; x = d * sc * (q - 32)): symmetric int6 with weights
  "scale_dtype": "q6_k" (group scales d * sc, sc in 1..127; each group of 32 gives two
  sub-blocks the same sc), q = code + 32. In each 128 weights, weight l, l + 32, l + 64 and
  l + 96 (l < 32) share qh byte l (bits 0-1, 2-3, 4-5, 6-7); their low bits are the low
  nibble of ql[l], of ql[l + 32], the high nibble of ql[l] and of ql[l + 32].
A layer fits when every block of 32 weights along K has one scale (strategy tensor,
channel, or group with group_size a multiple of 32) and K is a multiple of 32. The
scales must be fp16 values (quantize with weights "scale_dtype": "float16"). ggml
dequantizes in fp32 (d widened, times the small integer), as lowbit's kernels do, so
the weights llama.cpp multiplies with are lowbit's deploy weights bit for bit.
"""
import numpy as np
import torch

from lowbit.formats import FORMAT_INFO
from lowbit.export.gguf_writer import F16, F32, Q4_0, Q4_1, Q4_K, Q6_K, Q8_0

QK = 32
QK_K = 256  # weights per K-quant super-block


class ExportRefused(ValueError):
    """A layer that cannot be written exactly; the message names the layer and why."""


def float_tensor(t, name):
    """(ggml type, bytes) of a float tensor: F16 when it is fp16, F32 otherwise (fp32 and
    bf16 widen exactly)."""
    t = t.detach().cpu()
    if not t.is_floating_point():
        raise ExportRefused(f"tensor '{name}': dtype {t.dtype} is not a float type")
    if t.dtype == torch.float16:
        return F16, t.half().contiguous().numpy().tobytes()
    return F32, t.float().contiguous().numpy().tobytes()


def _codes(layer):
    """Signed integer codes [N, K] of an int8/int4 deploy layer."""
    n, k = layer.weight_shape[0], layer.cols
    packed = layer.weight_packed.reshape(n, -1).numpy()
    if FORMAT_INFO[layer.wspec.fmt]["bits"] == 8:
        return packed.view(np.int8)[:, :k].astype(np.int16)
    lo = (packed & 0x0F).astype(np.int16)
    hi = (packed >> 4).astype(np.int16)
    nib = np.stack([lo, hi], axis=2).reshape(n, -1)[:, :k]
    return (nib ^ 8) - 8


def _per_block(values, n, k, spec):
    """Per-granule values [*, groups] -> one value per 32-weight block [N, K/32]."""
    v = values.reshape(-1).numpy()
    if spec.strategy == "tensor":
        return np.full((n, k // QK), v[0], dtype=v.dtype)
    v = v.reshape(n, -1)
    gs = spec.group_size if spec.strategy == "group" else k
    return v[:, (np.arange(k // QK) * QK) // gs]


def block_length(layer):
    """Weights along K per block of the type the layer is written as (Q4_K, Q6_K: 256, else 32)."""
    return QK_K if layer.wspec.scale_dtype in K_QUANTS else QK


def _fp16_exact(x):
    return np.array_equal(x.astype(np.float16).astype(np.float32), x)


def layer_blocks(layer, name):
    """(ggml type, bytes, rows) of a converted int layer, rows in lowbit's order (the
    caller permutes block rows when needed: ``rows`` is [N, bytes per row]); raises
    ExportRefused naming the layer and the reason when the layer has no exact GGUF type."""
    w = layer.wspec
    n, k = layer.weight_shape[0], layer.cols
    if layer.aspec is not None:
        raise ExportRefused(f"layer '{name}': its inputs are quantized ({layer.aspec.label()}); GGUF stores weights "
                            f"only and llama.cpp quantizes activations its own way")
    if layer._buffers.get("smooth") is not None:
        raise ExportRefused(f"layer '{name}': it divides its inputs by per-channel factors (AWQ/SmoothQuant "
                            f"'smooth'), which GGUF's llama graph has no place for")
    if layer._buffers.get("w_scale1") is not None:
        raise ExportRefused(f"layer '{name}': it has per-row weight multipliers (w_scale1), which Q8_0/Q4_0 cannot hold")
    if w.scale_dtype in K_QUANTS:  # (the validator ties each grid to its formats)
        return K_QUANTS[w.scale_dtype](layer, name, n, k)
    if w.fmt not in ("int8", "int4", "int3"):
        raise ExportRefused(f"layer '{name}': format {w.fmt} has no exact GGUF type; allowed: int8 (Q8_0, symmetric), "
                            f"int4 and int3 (Q4_0 symmetric, Q4_1 asymmetric, Q4_K with scale_dtype q4_k), int6 "
                            f"(Q6_K with scale_dtype q6_k)")
    if w.fmt == "int8" and not w.symmetric:
        raise ExportRefused(f"layer '{name}': asymmetric int8 has no GGUF type (Q8_0 is symmetric); use symmetric int8")
    if w.strategy == "group" and w.group_size % QK:
        raise ExportRefused(f"layer '{name}': group_size {w.group_size} is not a multiple of {QK}")
    scale = _per_block(layer.w_scale.float(), n, k, w).astype(np.float32)
    if not _fp16_exact(scale):
        bad = np.argwhere(scale.astype(np.float16).astype(np.float32) != scale)[0]
        raise ExportRefused(f"layer '{name}': scale of row {bad[0]}, block {bad[1]} ({scale[tuple(bad)]!r}) is not a "
                            f"float16 value; quantize with weights 'scale_dtype': 'float16'")
    codes = _codes(layer).reshape(n, k // QK, QK)
    d = np.ascontiguousarray(scale.astype(np.float16)).view(np.uint8).reshape(n, k // QK, 2)
    if w.fmt == "int8":
        q = codes.astype(np.int8).view(np.uint8)
        return Q8_0, np.concatenate([d, q], axis=2).reshape(n, -1)
    q = (codes + 8).astype(np.uint8)
    qs = (q[:, :, :QK // 2] | (q[:, :, QK // 2:] << 4)).astype(np.uint8)
    if w.symmetric:
        return Q4_0, np.concatenate([d, qs], axis=2).reshape(n, -1)
    zero = _per_block(layer.w_offset.float(), n, k, w).astype(np.float32)
    m = -scale * (8.0 + zero)
    if not _fp16_exact(m):
        bad = np.argwhere(m.astype(np.float16).astype(np.float32) != m)[0]
        raise ExportRefused(f"layer '{name}': Q4_1's minimum -scale * (8 + zero point) of row {bad[0]}, block "
                            f"{bad[1]} ({m[tuple(bad)]!r}) is not a float16 value, so Q4_1 cannot hold the layer "
                            f"exactly; use symmetric int4 (Q4_0)")
    mm = np.ascontiguousarray(m.astype(np.float16)).view(np.uint8).reshape(n, k // QK, 2)
    return Q4_1, np.concatenate([d, mm, qs], axis=2).reshape(n, -1)


def _q4_k_scale_bytes(sc, m):
    """The 12 bytes of 8 six-bit scales and mins (sc, m: [..., 8] uint8), as llama.cpp
    unpacks them: bytes 0-3 scales 0-3, bytes 4-7 mins 0-3, each with two high bits of
    scale / min j + 4 on top; bytes 8-11 the low four bits of scale (low nibble) and min
    (high nibble) j + 4."""
    out = np.zeros(sc.shape[:-1] + (12,), dtype=np.uint8)
    out[..., 0:4] = (sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = (m[..., 0:4] & 63) | ((m[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 0x0F) | ((m[..., 4:8] & 0x0F) << 4)
    return out


def _split(layer, name, n, k, qtype):
    """(d, sc) of the layer's K-quant scales, the integer range from its format's row."""
    if k % QK_K:
        raise ExportRefused(f"layer '{name}': K = {k} is not a multiple of {QK_K}, which {qtype}'s super-blocks need")
    sc_max = FORMAT_INFO[layer.wspec.fmt]["superblock_sc_max"]
    try:
        return torch.ops.lowbit.split_superblock_scales(layer.w_scale.float().reshape(n, k // QK), sc_max)
    except ValueError as e:
        raise ExportRefused(f"layer '{name}': {e}") from None


def _q6_k(layer, name, n, k):
    d, sc = _split(layer, name, n, k, "Q6_K")
    nb = k // QK_K
    q = (_codes(layer) + 32).astype(np.uint8).reshape(n, nb, 2, 4, 32)  # [.., 128-half, quarter, l]
    ql = np.concatenate([(q[:, :, :, 0] & 0x0F) | ((q[:, :, :, 2] & 0x0F) << 4),
                         (q[:, :, :, 1] & 0x0F) | ((q[:, :, :, 3] & 0x0F) << 4)], axis=3)  # [.., half, 64]
    qh = ((q[:, :, :, 0] >> 4) | ((q[:, :, :, 1] >> 4) << 2) | ((q[:, :, :, 2] >> 4) << 4)
          | ((q[:, :, :, 3] >> 4) << 6))  # [.., half, 32]
    scales = np.repeat(sc.numpy().reshape(n, nb, 8), 2, axis=2).astype(np.int8).view(np.uint8)  # 16 per block
    d16 = d.numpy().astype(np.float16).reshape(n, nb, 1).view(np.uint8)
    return Q6_K, np.concatenate([ql.reshape(n, nb, 128), qh.reshape(n, nb, 64), scales, d16], axis=2).reshape(n, -1)


def _q6_k_dequantize(b, n, k):
    blk = b.reshape(n, k // QK_K, 210)
    ql = blk[:, :, :128].reshape(n, -1, 2, 64).astype(np.int32)
    qh = blk[:, :, 128:192].reshape(n, -1, 2, 32).astype(np.int32)
    sc = blk[:, :, 192:208].copy().view(np.int8).astype(np.float32)
    d = blk[:, :, 208:210].copy().view(np.float16).astype(np.float32)
    q = np.stack([(ql[..., :32] & 0x0F) | ((qh & 3) << 4), (ql[..., 32:] & 0x0F) | (((qh >> 2) & 3) << 4),
                  (ql[..., :32] >> 4) | (((qh >> 4) & 3) << 4), (ql[..., 32:] >> 4) | (((qh >> 6) & 3) << 4)],
                 axis=3).reshape(n, -1, 256).astype(np.float32) - 32.0
    ds = d * sc  # [n, blocks, 16]: one per 16 weights
    return (np.repeat(ds, 16, axis=2) * q).reshape(n, k)


def _q4_k(layer, name, n, k):
    d, sc = _split(layer, name, n, k, "Q4_K")
    d16 = d.numpy().astype(np.float16)
    sc = sc.numpy().reshape(n, k // QK_K, 8)
    dmin16 = (d.numpy() * 8.0).astype(np.float16)
    if not np.array_equal(dmin16.astype(np.float32), d.numpy() * 8.0):
        raise ExportRefused(f"layer '{name}': 8 * d overflows float16, so Q4_K's minimum cannot be written")
    head = np.concatenate([d16.reshape(n, -1, 1).view(np.uint8), dmin16.reshape(n, -1, 1).view(np.uint8),
                           _q4_k_scale_bytes(sc, sc)], axis=2)
    q = (_codes(layer) + 8).astype(np.uint8).reshape(n, k // QK_K, 4, 2, 32)  # [.., 64-chunk, half, 32]
    qs = (q[:, :, :, 0, :] | (q[:, :, :, 1, :] << 4)).reshape(n, k // QK_K, 128)
    return Q4_K, np.concatenate([head, qs], axis=2).reshape(n, -1)


def _q4_k_dequantize(b, n, k):
    blk = b.reshape(n, k // QK_K, 144)
    d = blk[:, :, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = blk[:, :, 2:4].copy().view(np.float16).astype(np.float32)
    s = blk[:, :, 4:16].astype(np.int32)
    sc = np.concatenate([s[:, :, 0:4] & 63, (s[:, :, 8:12] & 0x0F) | ((s[:, :, 0:4] >> 6) << 4)], axis=2)
    m = np.concatenate([s[:, :, 4:8] & 63, (s[:, :, 8:12] >> 4) | ((s[:, :, 4:8] >> 6) << 4)], axis=2)
    qs = blk[:, :, 16:].reshape(n, k // QK_K, 4, 32)
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(n, k // QK_K, 8, 32).astype(np.float32)
    d1 = d * sc.astype(np.float32)
    m1 = dmin * m.astype(np.float32)
    return (d1[..., None] * q - m1[..., None]).reshape(n, k)


# the K-quant scale grids (weights "scale_dtype") and their block writers
K_QUANTS = {"q4_k": _q4_k, "q6_k": _q6_k}


def dequantize(ggml_type, raw, shape):
    """fp32 weights of ggml blocks (the ggml rules, for tests and checks)."""
    n, k = shape
    b = np.frombuffer(raw, dtype=np.uint8)
    if ggml_type == F32:
        return b.view(np.float32).reshape(n, k).copy()
    if ggml_type == F16:
        return b.view(np.float16).astype(np.float32).reshape(n, k)
    if ggml_type == Q4_K:
        return _q4_k_dequantize(b, n, k)
    if ggml_type == Q6_K:
        return _q6_k_dequantize(b, n, k)
    size = {Q8_0: 34, Q4_0: 18, Q4_1: 20}[ggml_type]
    blk = b.reshape(n, k // QK, size)
    d = blk[:, :, :2].copy().view(np.float16).astype(np.float32)
    if ggml_type == Q8_0:
        return (d * blk[:, :, 2:].view(np.int8).astype(np.float32)).reshape(n, k)
    off = 4 if ggml_type == Q4_1 else 2
    qs = blk[:, :, off:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.float32)
    if ggml_type == Q4_0:
        return (d * (q - 8.0)).reshape(n, k)
    m = blk[:, :, 2:4].copy().view(np.float16).astype(np.float32)
    return (d * q + m).reshape(n, k)
