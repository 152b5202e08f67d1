"""Greedy decoding speed of lowbit against llama.cpp on the same quantized weights.

The model is Llama-shaped with random weights (TinyLlama-1.1B's shape: hidden 2048,
intermediate 5632, 22 layers, 32 heads, 4 key/value heads, vocabulary 32000), built as a
lowbit.models.hf_llama.LlamaForCausalLM. Every Linear is quantized, lm_head included, in
the same format on both sides (llama.cpp's own quantizer would pick Q6_K for the output
matrix; --float-lm-head keeps lm_head float32 on both sides instead); the embedding
table and the norms stay float32 on both sides (the GGUF export writes them as F32).

Weight formats (--variants):
  q4_0  lowbit.GGUF_Q4_0_CFG: int4, blocks of 32, fp16 scales, ggml's Q4_0 grid (MIN-MAX,
        no calibration data needed). Exported with lowbit.export_gguf: the GGUF holds
        the same codes and scales, and llama.cpp runs it as Q4_0.
  g128  lowbit's own int4 group 128 (MIN-MAX). GGUF has no such type: its rows are
        compared with llama.cpp running the q4_0 file above.
  q8_0  lowbit.GGUF_Q8_0_CFG: int8, blocks of 32, fp16 scales; llama.cpp runs it as Q8_0.
Each lowbit model is timed in both compute modes of lowbit.set_compute: "exact" (fp32
products with the packed weights) and "int8" (activations quantized per token inside
the products, integer dot products, as llama.cpp does).

Timing, on both sides: a 16-token prompt (the same random ids) in one call, then
--tokens single-token greedy steps with the key/value cache; the figure is the median
step time. lowbit runs under torch.inference_mode() with torch.set_num_threads(t);
llama.cpp runs through node-llama-cpp (CPU backend, its default mmap and weight
repacking) in a Node process per measurement, with a context of exactly t threads. The
lowbit and llama.cpp measurements of a format and thread count run one after the other.
The prompt ids go in as ids on both sides (no BOS, no text), so the GGUF's tokenizer
is a placeholder of the right size (placeholder_tokenizer below). Random weights give
nearly flat logits, so the two sides' greedy tokens part at the first near-tie; the
table's check that both run the same model is the overlap of their 5 likeliest tokens
after the prompt instead.

Run it on otherwise idle cores: with as many threads as cores, a thread preempted by
another process stalls ggml's spinning barriers on every op (llama.cpp's 2-thread steps
went from ~15 ms to ~230 ms on a shared 2-core machine). The load average is printed
before and after.

The second table splits lowbit's profiled step (torch.profiler, a few extra steps) into
the self time of the quantized products (torch.ops.lowbit.*) and everything else
(attention, norms, rotary, cache concatenation, embedding, Python, and the profiler's own
overhead), with the four largest other ops.

The llama.cpp side needs node-llama-cpp 3.21.1 installed as tests/python/export/test_gguf.py
does (in ~/.cache/lowbit-llamacpp, or $LOWBIT_LLAMACPP_DIR); without it the bench says so
and exits 0.

    source scripts/env.sh
    PYTHONPATH=python python3 bench/bench_decode_vs_llamacpp.py [--layers 22] [--tokens 24]
        [--threads 1,2] [--variants q4_0,g128,q8_0] [--float-lm-head]
"""
import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import lowbit
from lowbit.models.hf_llama import HFLlamaConfig, LlamaForCausalLM
from lowbit.tokenizers import HFTokenizer

LLAMACPP_DIR = Path(os.environ.get("LOWBIT_LLAMACPP_DIR", Path.home() / ".cache" / "lowbit-llamacpp"))
PROMPT_LEN = 16
PROFILE_STEPS = 4
SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
             vocab_size=32000)


def weight_cfg(fmt):
    if fmt == "q4_0":
        return lowbit.GGUF_Q4_0_CFG
    if fmt == "q8_0":
        return lowbit.GGUF_Q8_0_CFG
    return {"quant_cfg": {"weights": {"type": "int4", "symmetric": True, "strategy": "group", "group_size": 128}},
            "algorithm": {"minmax"}}


# Which llama.cpp file each format is compared with.
GGUF_OF = {"q4_0": "q4_0", "g128": "q4_0", "q8_0": "q8_0"}
LABEL = {"q4_0": "int4 g32 (GGUF_Q4_0_CFG)", "g128": "int4 g128 (lowbit's own)", "q8_0": "int8 g32 (GGUF_Q8_0_CFG)"}

# Times decoding of one GGUF file in llama.cpp. Argument: a JSON job {model, threads,
# prompt, tokens}. Prints JSON: {prompt_ms, steps_ms, top5 (the 5 likeliest ids after the
# prompt), system_info, log (the load lines naming the backend and the repacking)}.
NODE_SCRIPT = r"""
import {readFileSync} from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const log = [];
// debug logs while loading (they name the CPU backend variant and the repacked buffer), quiet while timing
const llama = await getLlama({gpu: false, build: "never", maxThreads: 0, logLevel: LlamaLogLevel.debug,
                              logger: (level, message) => { log.push(String(message).trim()); }});
const model = await llama.loadModel({modelPath: job.model});
const threads = {ideal: job.threads, min: job.threads};
const ctx = await model.createContext({contextSize: 256, batchSize: 256, threads});
llama.logLevel = LlamaLogLevel.warn;
const seq = ctx.getSequence();
const greedy = {generateNext: {token: true, options: {temperature: 0}}};
const first = {generateNext: {token: true, probabilities: true, options: {temperature: 0}}};
const now = () => Number(process.hrtime.bigint()) / 1e6;

let t = now();
const out = await seq.controlledEvaluate(job.prompt.map((tok, i) => i + 1 < job.prompt.length ? tok : [tok, first]));
const promptMs = now() - t;
const last = out[job.prompt.length - 1].next;
const top5 = [...last.probabilities.keys()].slice(0, 5);  // sorted by probability
let next = last.token;
const steps = [];
for (let i = 0; i < job.tokens; i++) {
  t = now();
  const r = await seq.controlledEvaluate([[next, greedy]]);
  steps.push(now() - t);
  next = r[0].next.token;
}
const keep = log.filter((m) => /load_backend|CPU_REPACK|repack/i.test(m));
console.log(JSON.stringify({prompt_ms: promptMs, steps_ms: steps, top5, system_info: llama.systemInfo, log: keep}));
await ctx.dispose();
await model.dispose();
await llama.dispose();
"""


# ---- model and tokenizer --------------------------------------------------------------
def build_model(layers, seed=0):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
           "tie_word_embeddings": False, "torch_dtype": "float32", **SHAPE}
    reset = nn.Linear.reset_parameters
    nn.Linear.reset_parameters = lambda self: None  # kaiming init of 1.1B weights is slow; filled below
    try:
        model = LlamaForCausalLM(HFLlamaConfig.from_dict(cfg))
    finally:
        nn.Linear.reset_parameters = reset
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:  # projections, lm_head, embedding; norms keep their ones
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def placeholder_tokenizer(vocab_size):
    """A SentencePiece-style tokenizer.json (as an in-memory spec) with vocab_size ids:
    <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, U+2581, then filler pieces and
    no merges. export_gguf needs a tokenizer object for an hf_llama model; the bench
    feeds token ids on both sides, so the vocabulary only has to be the right size and
    valid for llama.cpp's loader."""
    sp = "\u2581"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, sp: 259}
    i = 0
    while len(vocab) < vocab_size:
        vocab[f"{sp}t{i}"] = len(vocab)
        i += 1
    specials = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for i, t in enumerate(("<unk>", "<s>", "</s>"))]
    spec = {"version": "1.0", "added_tokens": specials,
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": sp},
                                                               {"type": "Replace", "pattern": {"String": " "},
                                                                "content": sp}]},
            "pre_tokenizer": None,
            "post_processor": {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": sp}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                      "vocab": vocab, "merges": []}}
    tok = HFTokenizer(spec)
    assert tok.vocab_size == vocab_size and tok.family == "sentencepiece"
    return tok


def quantized_model(fmt, layers, float_lm_head):
    model = build_model(layers)
    cfg = weight_cfg(fmt)
    cfg["skip_layers"] = {"lm_head"} if float_lm_head else set()
    t0 = time.perf_counter()
    lowbit.quantize(model, cfg)  # MIN-MAX weight-only: no calibration batches
    lowbit.convert(model)
    gc.collect()
    return model, time.perf_counter() - t0


# ---- lowbit timing -----------------------------------------------------------------
def lowbit_decode(model, prompt, tokens, threads, profile=False):
    torch.set_num_threads(threads)
    caches = model.new_caches()
    steps = []
    with torch.inference_mode():
        t = time.perf_counter()
        logits = model(torch.tensor([prompt]), caches)
        prompt_ms = (time.perf_counter() - t) * 1e3
        top5 = logits[0, -1].topk(5).indices.tolist()
        nxt = logits[:, -1:].argmax(-1)
        for _ in range(tokens):
            t = time.perf_counter()
            logits = model(nxt, caches)
            steps.append(time.perf_counter() - t)
            nxt = logits[:, -1:].argmax(-1)
        split = None
        if profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                t = time.perf_counter()
                for _ in range(PROFILE_STEPS):
                    logits = model(nxt, caches)
                    nxt = logits[:, -1:].argmax(-1)
                wall = (time.perf_counter() - t) * 1e3 / PROFILE_STEPS
            ours, other = 0.0, {}
            for e in prof.key_averages():
                ms = e.self_cpu_time_total / 1e3 / PROFILE_STEPS
                if e.key.startswith("lowbit::"):
                    ours += ms
                else:
                    other[e.key] = other.get(e.key, 0.0) + ms
            top = sorted(other.items(), key=lambda kv: -kv[1])[:4]
            split = {"step_ms": wall, "products_ms": ours, "top_other": top}
    return {"ms": statistics.median(steps) * 1e3, "prompt_ms": prompt_ms, "top5": top5,
            "split": split}


# ---- llama.cpp timing --------------------------------------------------------------
def node_folder():
    """A temporary folder with the Node script, node_modules linked from the install."""
    d = Path(tempfile.mkdtemp(prefix="lowbit-llamacpp-bench-"))
    (d / "node_modules").symlink_to(LLAMACPP_DIR / "node_modules", target_is_directory=True)
    (d / "decode.mjs").write_text(NODE_SCRIPT)
    return d


def llamacpp_decode(folder, gguf, prompt, tokens, threads):
    job = folder / "job.json"
    job.write_text(json.dumps({"model": str(gguf), "threads": threads, "prompt": prompt, "tokens": tokens}))
    r = subprocess.run(["node", str(folder / "decode.mjs"), str(job)], cwd=folder, capture_output=True, text=True,
                       timeout=900)
    if r.returncode:
        raise RuntimeError(f"llama.cpp (node) failed on {gguf.name}, {threads} thread(s):\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["ms"] = statistics.median(res["steps_ms"])
    return res


# ---- reporting -----------------------------------------------------------------------
def cpu_summary():
    name = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        name = m.group(1).strip() if m else name
    except OSError:
        pass
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni"))
    return f"CPU: {name} ({os.cpu_count()} logical CPUs; {have})"


def backend_note(res):
    """(CPU backend library, repacked buffer and layouts) from llama.cpp's load log."""
    lib, buf, layouts = "?", "no CPU_REPACK buffer logged", []
    for m in res.get("log", []):
        hit = re.search(r"loaded CPU backend from \S*/(libggml-cpu-[\w-]+\.so)", m)
        lib = hit.group(1) if hit else lib
        hit = re.search(r"CPU_REPACK model buffer size\s*=\s*([\d.]+ MiB)", m)
        buf = f"CPU_REPACK buffer {hit.group(1)}" if hit else buf
        hit = re.search(r"repack tensor \S+ with (\w+)", m)
        if hit and hit.group(1) not in layouts:
            layouts.append(hit.group(1))
    return lib, buf + (f" (repacked to {', '.join(layouts)})" if layouts else "")


def top5_overlap(r, cpp):
    return len(set(r["top5"]) & set(cpp["top5"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--variants", default="q4_0,g128,q8_0", help="comma list of q4_0, g128, q8_0")
    ap.add_argument("--float-lm-head", action="store_true", help="keep lm_head float32 on both sides")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in GGUF_OF]
    if bad:
        ap.error(f"--variants: unknown {bad}; allowed: {', '.join(GGUF_OF)}")
    if not (LLAMACPP_DIR / "node_modules" / "node-llama-cpp" / "package.json").exists() or shutil.which("node") is None:
        print(f"SKIP: node-llama-cpp not found in {LLAMACPP_DIR}/node_modules (or no `node`); install it as "
              f"tests/python/export/test_gguf.py does (npm install -E node-llama-cpp@3.21.1 "
              f"@node-llama-cpp/linux-x64@3.21.1)")
        return 0
    version = json.loads((LLAMACPP_DIR / "node_modules" / "node-llama-cpp" / "package.json").read_text())["version"]

    t_start = time.perf_counter()
    print(cpu_summary())
    print(f"threads: {threads} (lowbit: torch.set_num_threads; llama.cpp: the context's threads, exact with "
          f"maxThreads 0); torch {torch.__version__}, node-llama-cpp {version} (CPU backend)")
    lm_head = "float32 on both sides (--float-lm-head)" if args.float_lm_head else "quantized like the other Linears"
    print(f"model: Llama-shaped, random weights, {args.layers} layers, hidden {SHAPE['hidden_size']}, intermediate "
          f"{SHAPE['intermediate_size']}, vocab {SHAPE['vocab_size']}; lm_head {lm_head}; embedding F32")
    print(f"decoding: {PROMPT_LEN}-token prompt, then {args.tokens} greedy single-token steps (median)")
    print("load average before: " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)

    prompt = torch.randint(3, SHAPE["vocab_size"], (PROMPT_LEN,), generator=torch.Generator().manual_seed(1)).tolist()
    tok = placeholder_tokenizer(SHAPE["vocab_size"])
    node = node_folder()
    work = Path(tempfile.mkdtemp(prefix="lowbit-gguf-bench-"))
    rows, splits, notes = [], [], {}
    ggufs = {}
    try:
        # the formats with a GGUF file first: g128's rows use the q4_0 file (exported even
        # when q4_0 itself is not asked for, then without lowbit rows of its own)
        need = set(variants) | ({"q4_0"} if "g128" in variants else set())
        for fmt in [f for f in ("q4_0", "q8_0", "g128") if f in need]:
            model, quant_s = quantized_model(fmt, args.layers, args.float_lm_head)
            msg = f"[{fmt}] quantized + converted in {quant_s:.1f} s, {lowbit.model_bytes(model) / 2 ** 20:.0f} MB"
            if fmt in ("q4_0", "q8_0"):
                path = work / f"{fmt}.gguf"
                rep = lowbit.export_gguf(model, path, tokenizer=tok, progress=False)
                ggufs[fmt] = path
                msg += f"; GGUF {rep['bytes'] / 2 ** 20:.0f} MB, mostly {rep['file_type']} ({rep['seconds']:.1f} s)"
            print(msg, file=sys.stderr, flush=True)
            if fmt not in variants:
                del model
                gc.collect()
                continue
            for t in threads:
                res = {}
                for mode in ("exact", "int8"):
                    lowbit.set_compute(model, mode)
                    res[mode] = lowbit_decode(model, prompt, args.tokens, t, profile=True)
                cpp = llamacpp_decode(node, ggufs[GGUF_OF[fmt]], prompt, args.tokens, t)
                notes.setdefault(GGUF_OF[fmt], backend_note(cpp))
                notes.setdefault("system_info", cpp.get("system_info", ""))
                for mode in ("exact", "int8"):
                    r = res[mode]
                    rows.append((fmt, mode, t, r, cpp))
                    splits.append((fmt, mode, t, r["split"]))
                    print(f"  {fmt} {mode} {t}T: lowbit {r['ms']:.1f} ms, llama.cpp {GGUF_OF[fmt]} {cpp['ms']:.1f} ms",
                          file=sys.stderr, flush=True)
            lowbit.set_compute(model, "exact")
            del model
            gc.collect()
    finally:
        shutil.rmtree(node, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("(prompt ms: the first call on each side, 16 tokens; top-5: how many of the 5 likeliest next tokens "
          "after the prompt the two sides share, a check that both run the same model; '-' for g128, whose weights "
          "differ from the Q4_0 file's)")
    print("| variant | compute | threads | lowbit ms/token | llama.cpp ms/token | ratio (lowbit/llama.cpp) "
          "| lowbit prompt ms | llama.cpp prompt ms | top-5 shared |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, mode, t, r, cpp in rows:
        shared = f"{top5_overlap(r, cpp)}/5" if fmt == GGUF_OF[fmt] else "-"
        print(f"| {LABEL[fmt]} vs llama.cpp {GGUF_OF[fmt].upper()} | {mode} | {t} | {r['ms']:.1f} | {cpp['ms']:.1f} | "
              f"{r['ms'] / cpp['ms']:.2f} | {r['prompt_ms']:.0f} | {cpp['prompt_ms']:.0f} | "
              f"{shared} |")
    print()
    print(f"lowbit's step under torch.profiler ({PROFILE_STEPS} steps after the timed ones; self CPU time of the "
          f"torch.ops.lowbit.* products vs the profiled step)")
    print("| variant | compute | threads | profiled step ms | products ms | outside ms | outside share "
          "| largest other ops (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt, mode, t, s in splits:
        other = ", ".join(f"{k} {v:.2f}" for k, v in s["top_other"])
        print(f"| {LABEL[fmt]} | {mode} | {t} | {s['step_ms']:.1f} | {s['products_ms']:.1f} | "
              f"{s['step_ms'] - s['products_ms']:.1f} | {1 - s['products_ms'] / s['step_ms']:.0%} | {other} |")
    print()
    for gguf in ("q4_0", "q8_0"):
        if gguf in notes:
            lib, buf = notes[gguf]
            print(f"llama.cpp {gguf.upper()} file: CPU backend {lib}; {buf}")
    print(f"llama.cpp system info: {notes.get('system_info', '?')}")
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"(total run time {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
