"""Throughput of fake quantization and packing on a 4096x4096 fp32 tensor.

Baselines measured in the same run: (a) ``dst.copy_(x)`` into a preallocated tensor (the
memory roofline: same bytes read and written), (b) the same math composed from plain
torch ops. Prints medians. Usage:
    PYTHONPATH=python python3 bench/bench_formats.py [--size 4096] [--repeat 15] [--threads 2]
"""
import argparse
import os
import statistics
import time

import torch

import lowbit

ROWS = [  # (format, granularity, group_size)
    ("int8", "tensor", None), ("int8", "channel", None), ("int8", "group", 128), ("int8", "token", None),
    ("int4", "channel", None), ("int4", "group", 128), ("int4", "group", 32),
    ("float8_e4m3fn", "tensor", None), ("float8_e4m3fn", "channel", None),
    ("hifloat8", "tensor", None), ("hifloat8", "channel", None), ("hifloat8", "token", None),
    ("float4_e2m1", "group", 32), ("float4_e1m2", "group", 32),
    ("mxfp8_e4m3fn", "group", 32), ("mxfp4_e2m1", "group", 32),
]


def median_seconds(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fn, baseline, repeat):
    """Median seconds of fn and of baseline, sampled alternately so that drift in the
    machine's memory bandwidth (shared hosts) hits both alike."""
    fn()
    baseline()
    t_fn, t_base = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        baseline()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        t_base.append(t1 - t0)
        t_fn.append(t2 - t1)
    return statistics.median(t_fn), statistics.median(t_base)


# ---- the same math from plain torch ops (reference for speed, not for bits) ----------
def _granules(x, gran, gs):
    r, k = x.shape
    if gran == "tensor":
        return x.reshape(1, 1, -1), lambda y: y.reshape(r, k)
    if gran in ("channel", "token"):
        return x.reshape(r, 1, k), lambda y: y.reshape(r, k)
    return x.reshape(r, k // gs, gs), lambda y: y.reshape(r, k)


def _minifloat(v, mbits, emin, maxv):
    a = v.abs()
    _, e = torch.frexp(a)
    q = torch.exp2((e - 1).clamp(min=emin).float() - mbits)
    return torch.copysign(torch.clamp(torch.round(a / q) * q, max=maxv), v)


def _hifloat8(v):
    a = v.abs()
    m, e = torch.frexp(a)
    e = (e - 1).float()
    ae = e.abs()
    mb = torch.where(ae <= 3, 3.0, torch.where(ae <= 7, 2.0, 1.0))
    q = torch.exp2(e - mb)
    normal = torch.floor(a / q + 0.5) * q
    den = torch.where(2 * m - 1 >= 0.5, torch.exp2(e + 1), torch.exp2(e))
    r = torch.where(e >= -15, normal, torch.where(e >= -22, den, torch.where(e == -23, 2.0 ** -22, 0.0)))
    return torch.copysign(r.clamp(max=32768.0), v)


def torch_reference(x, fmt, gran, gs):
    g, back = _granules(x, gran, gs or 32)
    amax = g.abs().amax(-1, keepdim=True)
    if fmt.startswith("mx"):
        emax, mb, emin, mx = (8, 3, -6, 448.0) if fmt == "mxfp8_e4m3fn" else (2, 1, 0, 6.0)
        m, e = torch.frexp(amax)
        if fmt == "mxfp4_e2m1":  # Ascend's rule: one more when the max's mantissa exceeds 1.75
            e = e + (2 * m > 1.75).to(e.dtype)
        s = torch.exp2((e - 1 - emax).clamp(-127, 127).float())
        return back(_minifloat(g / s, mb, emin, mx) * s)
    if fmt.startswith("int"):
        bits = int(fmt[3:])
        if gran == "token":
            q = 2 ** (bits - 1) - 1
        else:  # the extra negative code is used when the negative side dominates
            q = torch.where(g.amin(-1, keepdim=True).abs() > g.amax(-1, keepdim=True).abs(),
                            2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1)
        s = amax / q
        s = torch.where(s < 1.192092896e-7, torch.ones_like(s), s)
        return back(torch.clamp(torch.round(g / s), -2 ** (bits - 1), 2 ** (bits - 1) - 1) * s)
    div = {"float8_e4m3fn": 448.0, "hifloat8": 15.0 if gran == "token" else 16.0, "float4_e2m1": 6.0,
           "float4_e1m2": 1.75}[fmt]
    s = amax / div
    v = g / s
    if fmt == "hifloat8":
        return back(_hifloat8(v) * s)
    mb, emin, mx = {"float8_e4m3fn": (3, -6, 448.0), "float4_e2m1": (1, 0, 6.0), "float4_e1m2": (2, 0, 1.75)}[fmt]
    return back(_minifloat(v, mb, emin, mx) * s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    n = args.size
    torch.manual_seed(0)
    x = torch.randn(n, n)
    out = torch.empty_like(x)
    elems = x.numel()
    t_copy = median_seconds(lambda: out.copy_(x), args.repeat)
    copy_rate = elems / t_copy / 1e9
    print(f"lowbit {lowbit.__version__} kernels={lowbit.isa()} threads={args.threads} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"x: {n}x{n} fp32; copy_ into preallocated: {1000 * t_copy:.2f} ms = {copy_rate:.2f} G elem/s "
          f"({8 * elems / t_copy / 1e9:.1f} GB/s moved)")
    print("vs copy: ratio to dst.copy_(x) sampled alternately with the operation (medians)")
    print(f"{'format':<14} {'granularity':<12} {'static G/s':>10} {'vs copy':>8} {'dynamic G/s':>11} "
          f"{'vs copy':>8} {'torch ms':>9} {'x torch':>8}")
    for fmt, gran, gs in ROWS:
        scale, offset = lowbit.compute_scales(x, fmt, gran, gs)
        copy = lambda: out.copy_(x)  # noqa: E731
        t_static, c_static = interleaved(
            lambda: lowbit.fake_quant(x, fmt, gran, gs, scale=scale, offset=offset, out=out), copy, args.repeat)
        t_dyn, c_dyn = interleaved(lambda: lowbit.fake_quant(x, fmt, gran, gs, out=out), copy, args.repeat)
        t_torch = median_seconds(lambda: torch_reference(x, fmt, gran, gs), max(3, args.repeat // 3))
        ref = torch_reference(x, fmt, gran, gs)
        ours = lowbit.fake_quant(x, fmt, gran, gs)
        agree = (ref == ours).float().mean().item()  # sanity: the reference does the same math
        label = gran + (f" {gs}" if gs else "")
        print(f"{fmt:<14} {label:<12} {elems / t_static / 1e9:>10.2f} {c_static / t_static:>7.2f}x "
              f"{elems / t_dyn / 1e9:>11.2f} {c_dyn / t_dyn:>7.2f}x {1000 * t_torch:>9.1f} "
              f"{t_torch / t_dyn:>7.1f}x" + ("" if agree > 0.999 else f"  (torch ref agrees on {agree:.1%})"))
    print("pack (fp32 -> storage codes, scales given):")
    for fmt, gran, gs in [("int4", "group", 128), ("int8", "channel", None), ("hifloat8", "channel", None),
                          ("mxfp4_e2m1", "group", 32)]:
        scale, offset = lowbit.compute_scales(x, fmt, gran, gs)
        t_pack = median_seconds(lambda: lowbit.pack(x, fmt, scale, offset, gran, gs), args.repeat)
        label = gran + (f" {gs}" if gs else "")
        print(f"  {fmt:<14} {label:<12} {elems / t_pack / 1e9:>6.2f} G elem/s ({1000 * t_pack:.2f} ms)")


if __name__ == "__main__":
    main()
