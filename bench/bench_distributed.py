"""Distributed streaming quantization (lowbit.distributed): per-rank compute time and bytes
communicated per decoder layer, measured with 1 and 2 gloo ranks on random-weight
checkpoints of the TinyLlama-1.1B and Llama-2-7B shapes (bench_llm_pipeline.write_folder),
then a scaling model for 8 and 64 ranks and larger models: bytes from the shapes, compute
from the rates measured here, all-reduce time at 10 and 100 Gb/s.

    PYTHONPATH=python python3 bench/bench_distributed.py [--shapes 1.1b,7b] [--layers 1]
        [--samples 8 --seqlen 128] [--ranks 1,2] [--threads 1] [--model-samples 128 --model-seqlen 512]

Each rank runs with --threads threads (1: the ranks of a 2-rank run use 2 cores). INT4
GPTQ, group 128, lm_head kept in float (the configuration of bench_llm_pipeline).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_llm_pipeline import SHAPES, write_folder  # noqa: E402

QCFG = {"quant_cfg": {"weights": {"type": "int4", "symmetric": True, "strategy": "group", "group_size": 128}},
        "algorithm": {"gptq"}, "skip_layers": {"lm_head"}}
MODEL_SHAPES = {**{k: dict(v) for k, v in SHAPES.items()},
                "13b": dict(hidden_size=5120, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=40),
                "70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8)}


def projections(shape):
    """(N, K) of the seven projections of one decoder layer."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    hd = h // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
    return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]


def bytes_per_rank(shape, world):
    """Bytes one rank sends per decoder layer: the fixed-order sums of the seven fp32
    Hessians (2 (W-1)/W of each, as a ring all-reduce), then the gather of the packed GPTQ
    rows with their fp32 scales and int32 offsets ((W-1)/W of the layer)."""
    if world == 1:
        return 0
    hess = sum(k * k * 4 for _, k in projections(shape))
    packed = sum(n * (k // 2) + 2 * n * -(-k // 128) * 4 for n, k in projections(shape))
    return 2 * (world - 1) / world * hess + (world - 1) / world * packed


def forward_flops(shape, tokens):
    """Two passes (statistics, next inputs) plus X^T X per projection, per layer (streaming.layer_flops)."""
    params = sum(n * k for n, k in projections(shape))
    return 2 * (2 * tokens * params) + 2 * tokens * sum(k * k for _, k in projections(shape))


def solve_flops(shape, world=1):
    """GPTQ per layer and rank: the error updates (2 N K^2, split by rows over the ranks)
    and the factorisations of H (~2 K^3, done by every rank)."""
    return sum(2 * n * k * k / world + 2 * k ** 3 for n, k in projections(shape))


# ---- one rank ---------------------------------------------------------------------------
def worker(args):
    import datetime
    import torch.distributed as dist
    import lowbit  # noqa: F401
    from lowbit.streaming import quantize_streaming
    torch.set_num_threads(args.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=1800))
    vocab = json.loads((Path(args.src) / "config.json").read_text())["vocab_size"]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (1, args.seqlen), generator=gen) for _ in range(args.samples)]
    r = quantize_streaming(args.src, QCFG, batches, args.out, dtype=torch.float32, progress=False,
                           log=lambda s: None)
    Path(args.worker).write_text(json.dumps(r["timings"]))
    if dist.is_initialized():
        dist.destroy_process_group()


def run_ranks(args, src, world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(args.dir) / f"out-dist-{src.name}-{world}"
    shutil.rmtree(out, ignore_errors=True)
    procs, files = [], []
    for rank in range(world):
        f = Path(args.dir) / f"timings-{src.name}-{world}-{rank}.json"
        files.append(f)
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS=str(args.threads))
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(f), "--src", str(src), "--out",
                                       str(out), "--samples", str(args.samples), "--seqlen", str(args.seqlen),
                                       "--threads", str(args.threads)], env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a rank failed (exit {p.returncode})")
    shutil.rmtree(out, ignore_errors=True)
    return [json.loads(f.read_text()) for f in files]


def layer_rows(timings):
    return [t for t in timings if t["layer"] != "head"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1.1b,7b")
    ap.add_argument("--layers", type=int, default=1, help="decoder layers of the measured checkpoints")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--model-samples", type=int, default=128, help="calibration size of the scaling model")
    ap.add_argument("--model-seqlen", type=int, default=512)
    ap.add_argument("--dir", default="/tmp/lowbit-bench")
    ap.add_argument("--rates", default=None,
                    help="FWD,SOLVE GFLOP/s per rank: skip the measurement, print only the scaling model")
    ap.add_argument("--server-gflops", type=float, default=1000.0,
                    help="per-rank rate of the second scaling table (default 1000 GFLOP/s: a multi-core socket)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--src", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.rates:
        fwd, solve = (float(v) * 1e9 for v in args.rates.split(","))
        return model_scaling(args, fwd, solve)
    rates = {}
    print(f"measured: INT4 GPTQ g128, {args.samples} x {args.seqlen} tokens, {args.layers} layer(s), "
          f"{args.threads} thread(s) per rank, gloo on one machine")
    print(f"{'shape':>6} {'ranks':>5} {'rank':>4} {'compute s':>10} {'of it solve s':>13} {'comm s':>7} "
          f"{'MB sent':>9} {'model MB':>9}")
    for name in args.shapes.split(","):
        src = Path(args.dir) / f"llama-{name}-L{args.layers}"
        write_folder(src, name, args.layers)
        for world in (int(w) for w in args.ranks.split(",")):
            t0 = time.perf_counter()
            per_rank = run_ranks(args, src, world)
            for rank, timings in enumerate(per_rank):
                rows = layer_rows(timings)
                k = len(rows)
                compute = sum(t["statistics_and_solve"] + t["forward"] - t["comm_seconds"] for t in rows) / k
                solve = sum(t["last_sample_and_solve"] for t in rows) / k
                comm = sum(t["comm_seconds"] for t in rows) / k
                sent = sum(t["comm_bytes"] for t in rows) / k
                print(f"{name:>6} {world:>5} {rank:>4} {compute:10.2f} {solve:13.2f} {comm:7.2f} {sent / 1e6:9.1f} "
                      f"{bytes_per_rank(MODEL_SHAPES[name], world) / 1e6:9.1f}")
                if world == 1:
                    tokens = args.samples * args.seqlen
                    rates[name] = (forward_flops(MODEL_SHAPES[name], tokens) / max(compute - solve, 1e-9),
                                   solve_flops(MODEL_SHAPES[name]) / max(solve, 1e-9))
            print(f"{'':>6} ({world} rank(s): {time.perf_counter() - t0:.0f} s wall with start-up and the head)")
    if not rates:
        return
    fwd_rate = min(r[0] for r in rates.values())
    solve_rate = min(r[1] for r in rates.values())
    model_scaling(args, fwd_rate, solve_rate)


def model_scaling(args, fwd_rate, solve_rate):
    n, tokens = args.model_samples, args.model_samples * args.model_seqlen
    print(f"\nscaling model per decoder layer, {n} x {args.model_seqlen} tokens: each rank holds (n-1)/W + 1 samples, "
          f"solves 1/W of GPTQ's rows and all of its K^3 factorisations; bytes from the shapes")
    server = args.server_gflops * 1e9
    for label, fr, sr in ((f"measured here ({fwd_rate / 1e9:.0f} GFLOP/s passes, {solve_rate / 1e9:.0f} GFLOP/s "
                           f"solve, {args.threads} thread(s) per rank)", fwd_rate, solve_rate),
                          (f"a {args.server_gflops:.0f} GFLOP/s rank (solve at the same fraction of it)", server,
                           server * solve_rate / fwd_rate)):
        print(f"compute at {label}")
        print(f"{'shape':>6} {'ranks':>5} {'compute s':>10} {'MB/rank':>9} {'comm s 10G':>11} {'comm s 100G':>12} "
              f"{'comm/compute 10G':>17} {'100G':>6}")
        dominated = []
        for name, shape in MODEL_SHAPES.items():
            for world in (1, 2, 8, 64):
                share = ((n - 1) / world + 1) / n
                compute = forward_flops(shape, tokens) * share / fr + solve_flops(shape, world) / sr
                sent = bytes_per_rank(shape, world)
                c10, c100 = sent * 8 / 10e9, sent * 8 / 100e9
                print(f"{name:>6} {world:>5} {compute:10.2f} {sent / 1e6:9.0f} {c10:11.2f} {c100:12.3f} "
                      f"{c10 / compute:17.2f} {c100 / compute:6.3f}")
                dominated += [(name, world, bw) for bw, c in (("10 Gb/s", c10), ("100 Gb/s", c100)) if c > compute]
        print("communication exceeds compute per rank for: " +
              (", ".join(f"{s} with {w} ranks at {b}" for s, w, b in dominated) if dominated else "none of these"))
    print("(bytes per rank hardly grow with W: the Hessians, K^2 per projection, are summed whatever the rank "
          "count, while compute per rank falls as 1/W down to one sample's passes plus the K^3 factorisations)")


if __name__ == "__main__":
    main()
