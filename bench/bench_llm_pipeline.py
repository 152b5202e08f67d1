"""Streaming quantization of LLM-shaped checkpoints larger than memory (lowbit.streaming).

Writes a random-weight Hugging Face Llama folder (bf16, sharded safetensors) with the
shapes of TinyLlama-1.1B or Llama-2-7B, then quantizes it with `quantize_streaming`
(INT4 GPTQ group 128, or INT8_SMOOTHQUANT) on random-token calibration samples, and
reports per-layer seconds (read, statistics + solve, forward, write), total wall time,
peak RSS, and the FLOP floor at this machine's matmul rate measured in the same run.

    PYTHONPATH=python python3 bench/bench_llm_pipeline.py --shape 1.1b [--samples 32 --seqlen 512]
        [--config gptq|smoothquant] [--dir /tmp/lowbit-bench] [--keep] [--layers N] [--compare-sequential]

--layers N keeps only the first N decoder layers (a quick look at per-layer cost; the
totals then cover N layers). The folder is written once and reused while its config.json
matches.
"""
import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM  # noqa: E402
from lowbit.streaming import quantize_streaming  # noqa: E402

SHAPES = {
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}


def write_folder(folder, shape, layers, shard_bytes=2 << 30):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
           "tie_word_embeddings": False, **SHAPES[shape]}
    if layers:
        cfg["num_hidden_layers"] = layers
    if (folder / "config.json").exists() and json.loads((folder / "config.json").read_text()) == cfg:
        return cfg
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model = LlamaForCausalLM(HFLlamaConfig.from_dict(cfg), device="meta")
    gen = torch.Generator().manual_seed(0)
    shard, size, index, k = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, k
        if shard:
            k += 1
            name = f"model-{k:05d}.safetensors"
            torch.ops.lowbit.save_safetensors(str(folder / name), list(shard), list(shard.values()), ["format"], ["pt"])
            index.update({n: name for n in shard})
            shard, size = {}, 0

    for name, p in model.named_parameters():
        std = 1.0 if "norm" in name else 0.02
        t = (torch.randn(tuple(p.shape), generator=gen) * std + (1.0 if "norm" in name else 0.0)).to(torch.bfloat16)
        shard[name] = t
        size += t.numel() * 2
        if size >= shard_bytes:
            flush()
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (folder / "config.json").write_text(json.dumps(cfg))
    return cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1.1b")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--config", choices=["gptq", "smoothquant"], default="gptq")
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--dir", default="/tmp/lowbit-bench")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of calibration (default float32)")
    ap.add_argument("--keep", action="store_true", help="keep the quantized output folder")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--prepare-only", action="store_true",
                    help="only write the checkpoint folder (then a second run measures a clean process's RSS)")
    ap.add_argument("--compare-sequential", action="store_true",
                    help="also quantize the whole model in memory with quantize(sequential=True) and compare every "
                         "saved tensor with the streamed folder's (use --layers to fit memory)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = Path(args.dir)
    src = base / f"llama-{args.shape}{'-L%d' % args.layers if args.layers else ''}"
    t = time.perf_counter()
    cfg = write_folder(src, args.shape, args.layers)
    print(f"checkpoint {src}: {sum(f.stat().st_size for f in src.glob('*.safetensors')) / 2**30:.2f} GiB bf16 "
          f"({time.perf_counter() - t:.0f} s to write or check)")
    if args.prepare_only:
        return
    if args.config == "gptq":
        qcfg = {"quant_cfg": {"weights": {"type": "int4", "symmetric": True, "strategy": "group", "group_size": 128}},
                "algorithm": {"gptq"}, "skip_layers": {"lm_head"}}
    else:
        qcfg = lowbit.INT8_SMOOTHQUANT_CFG
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, cfg["vocab_size"], (1, args.seqlen), generator=gen) for _ in range(args.samples)]
    out = base / f"out-{args.shape}-{args.config}"
    shutil.rmtree(out, ignore_errors=True)
    dtype = getattr(torch, args.dtype)
    r = quantize_streaming(src, qcfg, batches, out, dtype=dtype, progress=False)
    print(f"\n{args.shape} shape, {args.config}, {args.samples} x {args.seqlen} tokens, compute {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'layer':>6} {'read s':>8} {'stats+solve s':>14} {'forward s':>10} {'write s':>8} {'total s':>8}")
    for t in r["timings"]:
        if t["layer"] == "head":
            print(f"{'head':>6} {'':>8} {'':>14} {'':>10} {'':>8} {t['seconds']:8.1f}")
        else:
            print(f"{t['layer']:>6} {t['read']:8.1f} {t['statistics_and_solve']:14.1f} {t['forward']:10.1f} "
                  f"{t['write']:8.1f} {t['seconds']:8.1f}")
    floor = r["flops"] / (r["gflops_measured"] * 1e9)
    print(f"wall {r['seconds'] / 60:.1f} min; peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB (estimated "
          f"{r['estimated_bytes'] / 2**30:.2f} GiB beyond the interpreter); FLOP floor {r['flops'] / 1e12:.1f} TFLOP = "
          f"{floor / 60:.1f} min at the measured {r['gflops_measured']:.0f} GFLOP/s ({r['seconds'] / floor:.2f}x)")
    if args.compare_sequential:
        compare_with_sequential(src, out, qcfg, batches, dtype)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


def compare_with_sequential(src, out, qcfg, batches, dtype):
    """The streamed folder against quantize(model, cfg, sequential=True) of the whole model
    in memory, tensor by tensor: the count of bit-identical tensors, and for the others the
    largest relative difference of the dequantized weights."""
    from lowbit.checkpoints import load_hf_model
    from lowbit.modules.deploy import DeployLayer
    from lowbit.pretrained import load_pretrained
    t = time.perf_counter()
    model = load_hf_model(src).to(dtype)
    cfg = dict(qcfg, batch_num=len(batches))
    lowbit.quantize(model, cfg, sequential=True)
    lowbit.calibrate(model, batches)
    lowbit.convert(model)
    seconds = time.perf_counter() - t
    streamed = load_pretrained(out)
    a, b = model.state_dict(), streamed.state_dict()
    same = [k for k in a if k in b and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])]
    differ = sorted(set(a) - set(same))
    print(f"in-memory sequential path: {seconds / 60:.1f} min; {len(same)} of {len(a)} tensors bit-identical to the "
          f"streamed folder" + (f"; differing: {differ[:6]}" if differ else ""))
    layers = {n: m for n, m in streamed.named_modules() if isinstance(m, DeployLayer)}
    for n, m in model.named_modules():
        if isinstance(m, DeployLayer) and any(k.startswith(n + ".") for k in differ):
            w1, w2 = m.weight_dequant().float(), layers[n].weight_dequant().float()
            print(f"  {n}: dequantized weights differ by {float((w1 - w2).abs().max() / w1.abs().max()):.3g} "
                  f"(relative to the largest weight)")


if __name__ == "__main__":
    main()
