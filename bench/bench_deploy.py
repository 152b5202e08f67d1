"""Deploy kernels against torch's F.linear, measured in the same run.

For each weight shape (out x in), activation rows n and activation dtype, times one
call of lowbit's packed-weight product (torch.ops.lowbit.linear_packed / linear_int8)
and of F.linear on the float weight in the same dtype (OpenBLAS for fp32, oneDNN for
bf16). The two are timed in alternating blocks (a warm-up call first), several rounds,
and the table shows medians. At n = 1 the product only streams the weight once, so it
also prints the effective read rate and its share of this machine's read bandwidth
(x.sum() over 1 GiB, measured in the same run).

    PYTHONPATH=python python3 bench/bench_deploy.py [--shapes 4096x4096,11008x4096]
        [--rows 1,8,32,128,512] [--dtypes float32,bfloat16] [--rounds 2] [--block 5] [--threads 2]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lowbit import formats

OPS = torch.ops.lowbit
EMPTY = torch.empty(0, dtype=torch.int32)
WEIGHT_ONLY = [  # label, format, granularity, group size
    ("W4 int4 g128", "int4", "group", 128),
    ("W8 int8 ch", "int8", "channel", 0),
    ("W8 fp8 ch", "float8_e4m3fn", "channel", 0),
    ("W8 hif8 ch", "hifloat8", "channel", 0),
    ("W4 fp4 g32", "float4_e2m1", "group", 32),
    ("W4 mxfp4", "mxfp4_e2m1", "group", 32),
]
INT8 = [("A8W8 tensor", False), ("A8W8 token", True)]


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ms(t, width=7):
    """Milliseconds with three significant digits or more (small layers take microseconds)."""
    v = t * 1e3
    return f"{v:{width}.2f}" if v >= 1 else f"{v:{width}.4f}"


def read_bandwidth():
    x = torch.ones(256 * 1024 * 1024)
    x.sum()
    t = statistics.median(timed(x.sum, 5))
    return x.numel() * 4 / t / 1e9


def weight_cases(w):
    """(label, packed bytes, packed weight, fn(x, packed))"""
    cases = []
    for label, fmt, gran, gs in WEIGHT_ONLY:
        s, o = formats.compute_scales(w, fmt, gran, gs, True)
        p = formats.pack(w, fmt, s, o, gran, gs, True)
        nbytes = p.numel() + s.numel() * s.element_size()
        cases.append((label, nbytes, p, lambda x, p, s=s, fmt=fmt, gran=gran, gs=gs, k=w.shape[1]:
                      OPS.linear_packed(x, p, s, EMPTY, None, None, fmt, gran, gs, True, k, x.dtype)))
    s, o = formats.compute_scales(w, "int8", "channel", 0, True)
    p = formats.pack(w, "int8", s, o, "channel", 0, True)
    a_s, a_o = torch.full((1, 1), 0.05), torch.zeros(1, 1, dtype=torch.int32)
    for label, per_token in INT8:
        cases.append((label, p.numel() + s.numel() * 4, p, lambda x, p, s=s, t=per_token, k=w.shape[1]:
                      OPS.linear_int8(x, p, s, 8, k, t, a_s, a_o, None)))
    return cases


def l3_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            v = f.read().strip()
        return int(v[:-1]) * {"K": 1 << 10, "M": 1 << 20}[v[-1]]
    except (OSError, ValueError, KeyError):
        return 256 << 20


def streamed(fn, weight, nbytes, calls):
    """Median time of fn(w) over a rotation of copies of `weight` twice the size of the
    last-level cache: every call reads its weight from memory."""
    pool = [weight.clone() for _ in range(max(2, -(-2 * l3_bytes() // nbytes)))]
    for p in pool:
        fn(p)
    times = []
    for i in range(calls):
        p = pool[i % len(pool)]
        t = time.perf_counter()
        fn(p)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4096,11008x4096", help="out x in, comma separated")
    ap.add_argument("--rows", default="1,8,32,128,512")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--block", type=int, default=5, help="timed calls per block")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # lowbit's OpenMP kernels follow torch's setting
    torch.manual_seed(0)
    bw = read_bandwidth()
    print(f"lowbit deploy bench: {torch.get_num_threads()} threads, kernels {OPS.isa()} / int8 {OPS.int8_kernel()}, "
          f"read bandwidth {bw:.1f} GB/s (x.sum over 1 GiB)")
    print("ms = median per call; x torch = F.linear time / lowbit time (same dtype, same run); "
          "n=1: GB/s of packed weight read and % of the read bandwidth; n=1 repeats one weight (cache-hot), "
          "'1 s' rotates over copies twice the L3 size (weights streamed from memory, both sides)")
    for shape in args.shapes.split(","):
        n_out, k = (int(v) for v in shape.split("x"))
        w = torch.randn(n_out, k)
        cases = weight_cases(w)
        for dt_name in args.dtypes.split(","):
            dtype = getattr(torch, dt_name)
            wd = w.to(dtype)
            print(f"\nW {n_out}x{k}, activations {dt_name}")
            print(f"{'n':>4} {'torch ms':>9} | " + " | ".join(f"{c[0]:>18}" for c in cases))
            for n in (int(v) for v in args.rows.split(",")):
                x = torch.randn(n, k).to(dtype)
                base, ours = [], {c[0]: [] for c in cases}
                for _ in range(args.rounds):
                    F.linear(x, wd)
                    base += timed(lambda: F.linear(x, wd), args.block)
                    for label, _, p, fn in cases:
                        fn(x, p)
                        ours[label] += timed(lambda: fn(x, p), args.block)
                tb = statistics.median(base)
                cells = []
                for label, nbytes, _, _ in cases:
                    t = statistics.median(ours[label])
                    cell = f"{ms(t)} {tb / t:5.2f}x"
                    if n == 1:
                        cell += f" {nbytes / t / 1e9:4.0f}G {100 * nbytes / t / 1e9 / bw:3.0f}%"
                    cells.append(f"{cell:>18}" if n != 1 else cell)
                print(f"{n:>4} {ms(tb, 9)} | " + " | ".join(cells))
                if n == 1:  # the same with weights streamed from memory (rotation larger than L3)
                    tb = streamed(lambda ww: F.linear(x, ww), wd, wd.numel() * wd.element_size(), 3 * args.block)
                    cells = []
                    for label, nbytes, p, fn in cases:
                        t = streamed(lambda pp: fn(x, pp), p, nbytes, 6 * args.block)
                        cells.append(f"{ms(t)} {tb / t:5.2f}x {nbytes / t / 1e9:4.0f}G {100 * nbytes / t / 1e9 / bw:3.0f}%")
                    print(f"{'1 s':>4} {ms(tb, 9)} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
