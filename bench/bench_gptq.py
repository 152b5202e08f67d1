"""GPTQ speed and quality: lowbit's C++ solver against a plain-torch textbook GPTQ
written here (same Hessian, same settings: int4 symmetric, group 128, act-order,
blocks of 128, damping 1%), on one 4096x4096 Linear with 2048 calibration rows.

Also prints where lowbit's time goes next to a FLOP-derived floor at the machine's
GEMM rate measured in the same run. Medians of --repeat runs.
    PYTHONPATH=python python3 bench/bench_gptq.py [--size 4096] [--rows 2048] [--repeat 3]
"""
import argparse
import statistics
import time

import torch

import lowbit  # noqa: F401  (registers torch.ops.lowbit)


def textbook_gptq(W, H, bits=4, group=128, block=128, damp=0.01):
    """The algorithm of Frantar et al. (2022), in plain torch, float32."""
    W = W.clone().float()
    H = H.clone().float()
    K = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    qmax = 2 ** (bits - 1) - 1
    scales = {}
    invperm = torch.argsort(perm)
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, Err1, U1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = int(perm[i1 + i]) // group
            if g not in scales:  # group scale from the group's current columns
                pos = invperm[g * group:(g + 1) * group]  # where the group's columns are now
                cur = torch.where(((pos >= i1) & (pos < i2))[None, :], W1[:, (pos - i1).clamp(0, i2 - i1 - 1)], W[:, pos])
                amax = cur.abs().amax(1)
                neg = cur.amin(1).abs() > cur.amax(1).abs()
                s = amax / torch.where(neg, torch.tensor(qmax + 1.0), torch.tensor(float(qmax)))
                scales[g] = torch.where(s < 1.192092896e-7, torch.ones_like(s), s)
            s = scales[g]
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s
            Q[:, i1 + i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q[:, invperm]


def rel_error(W, Q, H):
    d = (W - Q).double()
    return float((d @ H.double() * d).sum() / ((W.double() @ H.double()) * W.double()).sum())


def median_time(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = k = args.size
    torch.manual_seed(0)
    W = torch.randn(n, k) / k ** 0.5
    X = torch.randn(args.rows, k) @ (torch.randn(k, k) / k ** 0.5) + 0.1 * torch.randn(args.rows, k)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t_mm, _ = median_time(lambda: a @ b, 5)
    gemm = 2 * 2048 ** 3 / t_mm
    H = torch.zeros(k, k)
    t_h, _ = median_time(lambda: (H.zero_(), torch.ops.lowbit.hessian_accumulate(H, X),  # the upper triangle,
                                  torch.ops.lowbit.hessian_symmetrize(H)), args.repeat)  # then mirrored
    t_chol, _ = median_time(lambda: torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(
        H + 0.01 * H.diagonal().mean() * torch.eye(k))), upper=True), args.repeat)
    t_ours, res = median_time(lambda: torch.ops.lowbit.gptq_quantize(W, H, "int4", "group", 128, True, 0.01, True,
                                                                      False, 128), args.repeat)
    t_ref, q_ref = median_time(lambda: textbook_gptq(W, H), max(1, args.repeat - 2))
    q_ours = res[0]
    f_h, f_chol, f_sweep = args.rows * k * (k + 1), 4 / 3 * k ** 3, n * k * k + n * k * 128  # multiply-adds x2
    print(f"GPTQ int4 g128 act-order on W {n}x{k}, {args.rows} calibration rows, {args.threads} threads; "
          f"fp32 GEMM rate here {gemm / 1e9:.0f} GFLOP/s")
    print(f"{'':<28} {'seconds':>8} {'floor s':>8}  relative output error")
    print(f"{'textbook GPTQ (torch)':<28} {t_ref:>8.2f} {'':>8}  {rel_error(W, q_ref, H):.5f}")
    print(f"{'lowbit gptq_quantize':<28} {t_ours:>8.2f} {(f_chol + f_sweep) / gemm:>8.2f}  {rel_error(W, q_ours, H):.5f}"
          f"   ({t_ref / t_ours:.1f}x faster)")
    print(f"{'  of which Cholesky':<28} {t_chol:>8.2f} {f_chol / gemm:>8.2f}")
    print(f"{'  of which column sweep':<28} {t_ours - t_chol:>8.2f} {f_sweep / gemm:>8.2f}")
    print(f"{'Hessian X^T X (both; upper)':<28} {t_h:>8.2f} {f_h / gemm:>8.2f}")


if __name__ == "__main__":
    main()
