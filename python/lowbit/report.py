"""The format report: packed size and weight SQNR of a real model for every format
and granularity (the main job until the quantize API lands)."""
import time
from dataclasses import dataclass

import torch

from lowbit import formats

# (format, granularity, group_size, symmetric, mx_rule)
REPORT_ROWS = [
    ("int8", "tensor", None, True, "auto"),
    ("int8", "channel", None, True, "auto"),
    ("int8", "channel", None, False, "auto"),
    ("int8", "group", 128, True, "auto"),
    ("int4", "channel", None, True, "auto"),
    ("int4", "channel", None, False, "auto"),
    ("int4", "group", 128, True, "auto"),
    ("int4", "group", 32, True, "auto"),
    ("int4", "group", 32, False, "auto"),
    ("float8_e4m3fn", "tensor", None, True, "auto"),
    ("float8_e4m3fn", "channel", None, True, "auto"),
    ("hifloat8", "tensor", None, True, "auto"),
    ("hifloat8", "channel", None, True, "auto"),
    ("float4_e2m1", "group", 32, True, "auto"),
    ("float4_e1m2", "group", 32, True, "auto"),
    ("mxfp8_e4m3fn", "group", 32, True, "ocp"),
    ("mxfp4_e2m1", "group", 32, True, "ascend"),
    ("mxfp4_e2m1", "group", 32, True, "ocp"),
]


@dataclass
class ReportRow:
    fmt: str
    granularity: str
    group_size: int
    symmetric: bool
    mx_rule: str
    packed_bytes: int   # codes + scales (+ offsets)
    float_bytes: int
    sqnr_db: float      # over all weights together
    worst_layer_db: float
    seconds: float


def sqnr_db(ref, approx):
    err = (ref.double() - approx.double()).pow(2).sum()
    sig = ref.double().pow(2).sum()
    return float("inf") if err == 0 else float(10 * torch.log10(sig / err))


def linear_weights(model, skip=("output",)):
    """(name, weight viewed as [out, -1]) of every Linear/Conv2d, minus skipped names."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and not any(s == name for s in skip):
            out.append((name, mod.weight.detach().reshape(mod.weight.shape[0], -1)))
    return out


def quantize_weight(w, fmt, gran, gs, sym, rule):
    """Returns (qdq weight, packed bytes incl. scales); checks unpack(pack) == QDQ."""
    scale, offset = formats.compute_scales(w, fmt, gran, gs, sym, rule)
    q = formats.fake_quant(w, fmt, gran, gs, sym, rule, scale=scale, offset=offset)
    packed = formats.pack(w, fmt, scale, offset, gran, gs, sym)
    back = formats.unpack(packed, fmt, scale, w.shape[-1], offset, gran, gs, sym)
    if not torch.equal(back, q):
        raise AssertionError(f"unpack(pack) differs from QDQ for {fmt} {gran}")
    nbytes = packed.numel() + scale.numel() * scale.element_size()
    if not sym:
        nbytes += offset.numel() * offset.element_size()
    return q, nbytes


def format_report(model, rows=REPORT_ROWS):
    weights = linear_weights(model)
    result = []
    for fmt, gran, gs, sym, rule in rows:
        t0 = time.perf_counter()
        total, sig, err, worst = 0, 0.0, 0.0, float("inf")
        for _, w in weights:
            q, nbytes = quantize_weight(w, fmt, gran, gs, sym, rule)
            total += nbytes
            sig += float(w.double().pow(2).sum())
            err += float((w.double() - q.double()).pow(2).sum())
            worst = min(worst, sqnr_db(w, q))
        result.append(ReportRow(fmt, gran, gs or 0, sym, rule, total,
                                sum(w.numel() * 4 for _, w in weights),
                                10 * torch.log10(torch.tensor(sig / err)).item(), worst,
                                time.perf_counter() - t0))
    return result


def render(rows, title):
    lines = [title,
             f"{'format':<14} {'granularity':<16} {'sym':<5} {'packed bytes':>12} {'vs fp32':>8} "
             f"{'SQNR dB':>8} {'worst layer':>11} {'ms':>7}"]
    for r in rows:
        gran = r.granularity + (f" {r.group_size}" if r.granularity == "group" else "")
        if formats.is_mx(r.fmt):
            gran += f" {r.mx_rule}"
        lines.append(f"{r.fmt:<14} {gran:<16} {('yes' if r.symmetric else 'no'):<5} {r.packed_bytes:>12,d} "
                     f"{r.float_bytes / r.packed_bytes:>7.2f}x {r.sqnr_db:>8.2f} {r.worst_layer_db:>11.2f} "
                     f"{1000 * r.seconds:>7.1f}")
    return "\n".join(lines)
