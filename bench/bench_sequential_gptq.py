"""Sequential GPTQ W4 g128 on a transformer with OPT-125M shapes (12 layers, d 768,
FFN 3072, vocab 50272, random weights), 128 calibration sequences of 512 tokens.
Reports wall time and peak RSS against the float model's size.
    OPENBLAS_CORETYPE=SkylakeX PYTHONPATH=python python3 bench/bench_sequential_gptq.py [--seqs 128] [--len 512]
        [--layers 12] [--loop]
The batches go through lowbit.calibrate (--loop: through the user's own loop of calls,
which also computes float answers for the first batch_num - 1 calls).
"""
import argparse
import math
import os
import resource
import time

# Calibration runs the user's model: torch's OpenMP ops (layer norms, softmax) alternate
# with OpenBLAS products that have their own threads. OpenMP workers that spin long after
# each op steal the cores from OpenBLAS (1.6x slower products on 2 cores), so they spin
# briefly, unless the caller chose otherwise (as scripts/env.sh does; libgomp reads it
# when torch loads, hence before the import).
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import lowbit  # noqa: E402


class Block(nn.Module):
    def __init__(self, d, ffn, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, h, future):
        b, t, d = h.shape
        x = self.ln1(h)
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(future, float("-inf")).softmax(-1)
        h = h + self.out_proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return h + self.fc2(F.relu(self.fc1(self.ln2(h))))


class OPTShaped(nn.Module):
    def __init__(self, layers=12, d=768, ffn=3072, heads=12, vocab=50272):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, ffn, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, tokens):
        h = self.embed(tokens)
        t = tokens.shape[-1]
        future = torch.ones(t, t, dtype=torch.bool).triu(1)  # causal mask, built once per call
        for blk in self.layers:
            h = blk(h, future)
        return self.norm(h)


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=128)
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--loop", action="store_true",
                    help="calibrate through the user's loop of model calls instead of lowbit.calibrate")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = OPTShaped(layers=args.layers).eval()
    for p in model.parameters():
        nn.init.normal_(p, std=0.02) if p.dim() > 1 else None
    params = sum(p.numel() for p in model.parameters())
    model_mb = params * 4 / 2 ** 20
    batches = [torch.randint(0, 50272, (1, args.len)) for _ in range(args.seqs)]
    with torch.no_grad():
        model(batches[0])  # the float model once: its working memory is part of the baseline
    base_rss = rss_mb()
    cfg = {"batch_num": len(batches), "algorithm": "gptq",
           "quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 128}}}
    t0 = time.perf_counter()
    lowbit.quantize(model, cfg, sequential=True)
    if args.loop:
        with torch.no_grad():
            for b in batches:
                model(b)
    else:
        lowbit.calibrate(model, batches)
    t_cal = time.perf_counter() - t0
    lowbit.convert(model)
    t_all = time.perf_counter() - t0
    peak = rss_mb()
    print(f"OPT-125M-shaped model ({args.layers} layers): {params / 1e6:.1f}M parameters ({model_mb:.0f} MB fp32), "
          f"{args.seqs} x {args.len} calibration tokens, {args.threads} threads, "
          f"{'the user loop' if args.loop else 'lowbit.calibrate'}, GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}")
    print(f"sequential GPTQ W4 g128: calibration {t_cal:.1f} s, with convert {t_all:.1f} s")
    print(f"peak RSS {peak:.0f} MB; after one float forward pass {base_rss:.0f} MB (interpreter, torch, BLAS "
          f"buffers, model); quantization added {peak - base_rss:.0f} MB = {(peak - base_rss) / model_mb:.2f}x "
          f"the fp32 model; peak = {peak / model_mb:.2f}x the fp32 model")


if __name__ == "__main__":
    main()
