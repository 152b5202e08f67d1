"""End to end: greedy decoding tokens/s and memory of a Llama-shaped model of about 1.1B
parameters (random weights; d 2048, ffn 5632, 22 layers, 32 heads, 4 key/value heads,
vocabulary 32000) in float32 and converted with lowbit (every Linear, classifier
included; the embedding table stays float32).

Each variant runs in its own process so that its memory figures are its own:
  model MB:  bytes of the model's parameters and buffers (packed weights, scales, the rest)
  RSS after: resident memory once the model is ready (converted), before decoding
  peak RSS:  the process's high-water mark (quantized variants build the float model first)
  tokens/s:  a 16-token prompt in one call, then --tokens single-token steps with the
             key/value cache (the median step time)

    PYTHONPATH=python python3 bench/bench_decode.py [--tokens 24] [--variants fp32,w4g128,w8,hif8]
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

VARIANTS = {
    "fp32": None,
    "w4g128": {"type": "int4", "strategy": "group", "group_size": 128},
    "w8": {"type": "int8", "strategy": "channel"},
    "hif8": {"type": "hifloat8", "strategy": "channel"},
}


def status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def build_model():
    from lowbit.models.llama2c import Llama, LlamaConfig, precompute_rope
    cfg = LlamaConfig(dim=2048, hidden_dim=5632, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000,
                      seq_len=256, shared_classifier=False)
    reset = nn.Linear.reset_parameters
    nn.Linear.reset_parameters = lambda self: None  # filled below, much faster than kaiming init
    try:
        model = Llama(cfg)
    finally:
        nn.Linear.reset_parameters = reset
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02, generator=g)
    return precompute_rope(model.eval())


def run_variant(name, tokens):
    import lowbit
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = build_model()
    params = sum(p.numel() for p in model.parameters())
    weights = VARIANTS[name]
    quant_s = 0.0
    if weights is not None:
        t1 = time.perf_counter()
        lowbit.quantize(model, {"quant_cfg": {"weights": weights}})
        lowbit.convert(model)
        quant_s = time.perf_counter() - t1
    setup_s = time.perf_counter() - t0
    import gc
    gc.collect()
    rss_after = status_kb("VmRSS")
    model_mb = lowbit.model_bytes(model) / 2 ** 20
    prompt = torch.randint(0, 32000, (1, 16), generator=torch.Generator().manual_seed(1))
    caches = model.new_caches()
    steps = []
    with torch.no_grad():
        logits = model(prompt, caches)
        nxt = logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            t = time.perf_counter()
            logits = model(nxt, caches)
            steps.append(time.perf_counter() - t)
            nxt = logits[:, -1:].argmax(-1)
    step = statistics.median(steps)
    print(json.dumps({"variant": name, "params": params, "tokens_per_s": 1.0 / step, "ms_per_token": step * 1e3,
                      "rss_after_mb": rss_after / 1024, "model_mb": model_mb, "peak_rss_mb": status_kb("VmHWM") / 1024,
                      "quantize_s": quant_s, "setup_s": setup_s}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.variant:
        return run_variant(args.variant, args.tokens)
    rows = []
    for name in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--variant", name, "--tokens", str(args.tokens)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {name}: done", file=sys.stderr)
    base = rows[0]["tokens_per_s"] if rows[0]["variant"] == "fp32" else None
    print(f"Llama-shaped model, {rows[0]['params'] / 1e9:.2f}B parameters, 2 threads, greedy decoding with a "
          f"key/value cache (median step)")
    print(f"{'variant':8} {'tokens/s':>9} {'ms/token':>9} {'x fp32':>7} {'model MB':>9} {'RSS after MB':>13} "
          f"{'peak RSS MB':>12} {'quantize s':>11}")
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base:6.2f}x" if base else "      -"
        print(f"{r['variant']:8} {r['tokens_per_s']:9.2f} {r['ms_per_token']:9.1f} {ratio:>7} {r['model_mb']:9.0f} "
              f"{r['rss_after_mb']:13.0f} "
              f"{r['peak_rss_mb']:12.0f} {r['quantize_s']:11.1f}")


if __name__ == "__main__":
    main()
