"""stories260K exported to GGUF and run in real llama.cpp (node-llama-cpp, see
tests/python/export/test_gguf.py): file size, llama.cpp's perplexity and lowbit's own on the
data README's protocol (paragraphs 0-99; calibration on paragraphs 1000-1127), for F32,
Q8_0 (MIN-MAX), Q4_0 (MIN-MAX, GPTQ) and, for reference, llama.cpp-style round-to-nearest
Q4_0 of the same six projections (ggml's rule d = max / -8 with the sign of the largest
magnitude: written by the small quantizer below, for this measurement only).

The built-in configs also quantize `w2` (K = 172: written as its int4 deploy weights in
F32), while the reference keeps `w2` float; the rows marked "w2 float" skip `w2` as the
reference does (the like-for-like comparison). --compare-blocks counts the elements where
GGUF_Q4_0_CFG's weights differ from the reference quantizer's.

    PYTHONPATH=python python3 bench/gguf_table.py [--paragraphs 100]
"""
import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / "python" / d) for d in ("", "export")]
import lowbit  # noqa: E402
from lowbit.eval import lm  # noqa: E402
from lowbit.export import gguf_llama, gguf_tokenizer  # noqa: E402
from lowbit.export.gguf_writer import Q4_0, UINT32, GGUFWriter  # noqa: E402
from test_gguf import llamacpp_perplexity, run_llamacpp  # noqa: E402

SIX = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")


def ggml_rtn_q4_0(w):
    """(bytes, dequantized fp32) of ggml's reference Q4_0 rule on w [N, K]."""
    n, k = w.shape
    x = w.reshape(n, k // 32, 32).astype(np.float32)
    idx = np.abs(x).argmax(-1)
    mx = np.take_along_axis(x, idx[..., None], -1)[..., 0]
    d = mx / np.float32(-8)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.minimum(15, (x * inv[..., None] + np.float32(8.5)).astype(np.int8)).astype(np.uint8)
    d16 = d.astype(np.float16)
    qs = q[..., :16] | (q[..., 16:] << 4)
    raw = np.concatenate([d16.view(np.uint8).reshape(n, k // 32, 2), qs], -1).tobytes()
    return raw, (d16.astype(np.float32)[..., None] * (q.astype(np.float32) - 8)).reshape(n, k)


def export_rtn(model, tok, path):
    hp, plan = gguf_llama._llama2c_plan(model)
    w = GGUFWriter()
    gguf_llama._metadata(w, hp)
    for key, kind, value in gguf_tokenizer.llama2c_vocab(tok):
        w.add(key, kind, value)
    w.add("general.file_type", UINT32, 2)  # mostly Q4_0
    deq = copy.deepcopy(model)
    for name, src, perm in plan:
        if name.split(".")[-2] in SIX:
            raw, back = ggml_rtn_q4_0(src.weight.detach().numpy())
            w.add_tensor(name, tuple(src.weight.shape), Q4_0, raw)
            i, leaf = name.split(".")[1], name.split(".")[2]
            mod = dict(zip(SIX, ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
                                 "feed_forward.w3")))[leaf]
            deq.get_submodule(f"layers.{i}.{mod}").weight.data = torch.from_numpy(back)
        else:
            gtype, shape, raw, _ = gguf_llama._entry(name, src, perm, model)
            w.add_tensor(name, shape, gtype, raw)
    return w.write(path), deq


def quantized(cfg_name, model, tok, cal, skip=("output",)):
    q = copy.deepcopy(model)
    cfg = getattr(lowbit, cfg_name)
    cfg["batch_num"] = len(cal)
    cfg["skip_layers"] = set(skip)
    lowbit.quantize(q, cfg)
    lm.calibrate(q, cal)
    return lowbit.convert(q)


def compare_blocks(model, tok, cal):
    """Prints how many weights of the six projections GGUF_Q4_0_CFG (MIN-MAX) puts on
    another level than ggml's reference quantizer (which rounds x / d with the fp32 d,
    half away from zero, and stores the fp16 d; lowbit rounds against the stored fp16 d,
    half to even, and breaks a tie between +m and -m towards -m)."""
    q = quantized("GGUF_Q4_0_CFG", model, tok, cal, ("output", "w2"))
    blocks = diff_blocks = diff_elems = elems = 0
    for name, mod in q.named_modules():
        if getattr(mod, "wspec", None) is None or not name.endswith(("wq", "wk", "wv", "wo", "w1", "w3")):
            continue
        w = model.get_submodule(name).weight.detach().numpy()
        n, k = w.shape
        _, back = ggml_rtn_q4_0(w)
        ours = mod.weight_dequant().detach().float().numpy().reshape(n, k)
        b = (back != ours).reshape(n, k // 32, 32)
        blocks += n * k // 32
        elems += n * k
        diff_blocks += int(b.any(-1).sum())
        diff_elems += int(b.sum())
    print(f"GGUF_Q4_0_CFG vs ggml RTN: {diff_elems} of {elems} weights differ, in {diff_blocks} of {blocks} blocks",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paragraphs", type=int, default=100)
    ap.add_argument("--compare-blocks", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = lm.load_stories260k()
    cal = lm.token_batches(tok, lm.CALIB_RANGE)
    texts = lm.paragraphs()[:args.paragraphs]
    ev = [torch.tensor([tok.encode(t)[:lm.MAX_TOKENS]]) for t in texts]
    if args.compare_blocks:
        compare_blocks(model, tok, cal)
    rows = []
    w2_float = ("output", "w2")
    with tempfile.TemporaryDirectory() as d:
        for label, cfg, skip in (("F32", None, ()), ("Q8_0 (GGUF_Q8_0_CFG, MIN-MAX)", "GGUF_Q8_0_CFG", ("output",)),
                                 ("Q4_0 (GGUF_Q4_0_CFG, MIN-MAX)", "GGUF_Q4_0_CFG", ("output",)),
                                 ("Q4_0 (GGUF_Q4_0_GPTQ_CFG)", "GGUF_Q4_0_GPTQ_CFG", ("output",)),
                                 ("Q4_0 (GGUF_Q4_0_CFG, MIN-MAX), w2 float", "GGUF_Q4_0_CFG", w2_float),
                                 ("Q4_0 (GGUF_Q4_0_GPTQ_CFG), w2 float", "GGUF_Q4_0_GPTQ_CFG", w2_float),
                                 ("Q4_0 ggml RTN (reference), w2 float", "rtn", ())):
            path = Path(d) / "m.gguf"
            if cfg == "rtn":
                size, m = export_rtn(model, tok, path)
            else:
                m = model if cfg is None else quantized(cfg, model, tok, cal, skip)
                size = lowbit.export_gguf(m, path, tokenizer=tok, progress=False)["bytes"]
            res = run_llamacpp(path, texts)
            ours = lm.perplexity(m, ev)
            rows.append((label, size, llamacpp_perplexity(res), ours))
            print(f"| {label} | {size:,} | {rows[-1][2]:.4f} | {ours:.4f} |", flush=True)


if __name__ == "__main__":
    main()
