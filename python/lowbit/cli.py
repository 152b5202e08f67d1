"""The ``lowbit`` command (also ``python3 -m lowbit``).

  lowbit quantize MODEL_DIR --config NAME|file.json --calib FILE --out OUT_DIR
  torchrun --nproc_per_node N -m lowbit quantize MODEL_DIR ... --sequential --out OUT_DIR
  lowbit eval DIR --text FILE            perplexity (float or quantized folder)
  lowbit generate DIR --prompt TEXT      greedy continuation with a KV cache, tokens/s
  lowbit inspect DIR                     per-layer formats, bytes and calibration error
  lowbit convert-llama2c MODEL.bin TOKENIZER.bin --out DIR
  lowbit export DIR --format gguf --out FILE.gguf   llama.cpp file (codes and scales as they are)
  lowbit run                             the main job: real models, result tables
  lowbit report                          packed sizes and weight SQNR of stories260K
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

PARAGRAPH_LIMIT = 512


def _die(msg):
    print(f"lowbit: error: {msg}", file=sys.stderr)
    return 2


# ---- text ---------------------------------------------------------------------------
def read_samples(path):
    """Calibration / evaluation texts: JSON lines ({"text": ...} or a JSON string per line)
    when the file's first non-empty line is JSON, else plain text split at blank lines."""
    raw = Path(path).read_text(encoding="utf-8")
    first = next((ln for ln in raw.splitlines() if ln.strip()), "")
    if first.lstrip().startswith(("{", '"')):
        out = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i} is not JSON ({e}); use one JSON object or string per line, or "
                                 f"plain text") from None
            text = v.get("text") if isinstance(v, dict) else v
            if not isinstance(text, str):
                raise ValueError(f"{path}: line {i}: expected a string or an object with a 'text' string")
            out.append(text)
        return out
    return [p.strip() for p in raw.split("\n\n") if p.strip()]


def token_batches(tok, texts, count, seqlen):
    import torch
    out = []
    for t in texts:
        ids = tok.encode(t, add_bos=True)[:seqlen]
        if len(ids) >= 2:
            out.append(torch.tensor([ids]))
        if len(out) == count:
            break
    if not out:
        raise ValueError("no text sample has two or more tokens")
    return out


# ---- models -------------------------------------------------------------------------
def load_folder(folder):
    """(model, tokenizer, quantized?) of a float or lowbit-quantized checkpoint folder."""
    from lowbit.checkpoints import load_hf_model
    from lowbit.pretrained import is_quantized_folder, load_pretrained
    from lowbit.tokenizers import load_hf_tokenizer
    quantized = is_quantized_folder(folder)
    model = load_pretrained(folder) if quantized else load_hf_model(folder)
    return model, load_hf_tokenizer(folder), quantized


def load_config(spec):
    import lowbit
    if spec in lowbit.BUILTIN_CONFIG_NAMES:
        return lowbit.builtin_config(spec)
    p = Path(spec)
    if p.suffix == ".json" and p.exists():
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {spec}: not valid JSON ({e})") from None
        if isinstance(cfg.get("skip_layers"), list):
            cfg["skip_layers"] = set(cfg["skip_layers"])
        return cfg
    raise ValueError(f"--config: {spec!r} is neither a built-in config ({', '.join(lowbit.BUILTIN_CONFIG_NAMES)}) "
                     f"nor an existing .json file")


def perplexity(model, batches, progress=True):
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm
    nll, count = 0.0, 0
    with torch.no_grad():
        for tokens in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
            logits = model(tokens[:, :-1]).float()
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                                         reduction="sum"))
            count += tokens.shape[1] - 1
    return math.exp(nll / count)


def layer_table(model):
    """Rows (name, weights, inputs, algorithm, packed bytes, float bytes, error)."""
    from lowbit.modules.deploy import DeployLayer
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, DeployLayer):
            n = 1
            for d in m.weight_shape:
                n *= d
            float_bytes = n * torch_dtype_size(m.weight_dtype)
            rows.append((name, m.wspec.label(), m.aspec.label() if m.aspec else "-", m.algorithm, m.packed_bytes(),
                         float_bytes, float(m.recon_error)))
    return rows


def torch_dtype_size(dtype):
    import torch
    return torch.empty((), dtype=dtype).element_size()


def render_layers(rows):
    head = f"{'layer':<40} {'weights':<20} {'inputs':<18} {'algorithm':<11} {'bytes':>10} {'float':>10} {'error':>9}"
    lines = [head]
    for name, w, a, alg, b, fb, err in rows:
        e = "-" if err != err else f"{err:.3g}"
        lines.append(f"{name:<40} {w:<20} {a:<18} {alg:<11} {b:>10} {fb:>10} {e:>9}")
    tb, tf = sum(r[4] for r in rows), sum(r[5] for r in rows)
    lines.append(f"{len(rows)} quantized layers: {tb} bytes packed, {tf} as float ({tf / max(tb, 1):.2f}x)")
    return "\n".join(lines)


def plot_layers(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6, 0.25 * len(rows)), 6), sharex=True)
    x = range(len(rows))
    a1.bar(x, [r[6] for r in rows])
    a1.set_ylabel("relative output error")
    a1.set_yscale("log")
    a2.bar(x, [r[5] / 1e6 for r in rows], label="float", color="#bbbbbb")
    a2.bar(x, [r[4] / 1e6 for r in rows], label="packed")
    a2.set_ylabel("MB")
    a2.legend()
    a2.set_xticks(list(x))
    a2.set_xticklabels([r[0] for r in rows], rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- commands -----------------------------------------------------------------------
def cmd_quantize(args):
    import torch
    import lowbit
    from lowbit.checkpoints import load_hf_model
    from lowbit.distributed import env_world_size
    from lowbit.pretrained import save_pretrained
    from lowbit.tokenizers import load_hf_tokenizer
    if env_world_size() > 1 and not (args.sequential or args.resume):
        raise ValueError(f"started as {env_world_size()} processes (WORLD_SIZE): only the streaming path is "
                         f"distributed; add --sequential")
    cfg = load_config(args.config)
    tok = load_hf_tokenizer(args.model_dir)
    batches = token_batches(tok, read_samples(args.calib), args.samples, args.seqlen)
    cfg["batch_num"] = len(batches)
    if args.sequential or args.resume:
        return _quantize_distributed(args, cfg, batches)
    model = load_hf_model(args.model_dir)
    print(f"lowbit quantize: {args.model_dir} ({model.config.architecture}, {model.config.num_hidden_layers} layers), "
          f"config {args.config}, {len(batches)} calibration samples of up to {args.seqlen} tokens"
          f"{', sequential' if args.sequential else ''}", file=sys.stderr)
    t0 = time.perf_counter()
    lowbit.quantize(model, cfg, sequential=args.sequential)
    if any(getattr(m, "needs_calibration", False) for m in model.modules()):  # (weight-only MIN-MAX needs none)
        with torch.no_grad():
            lowbit.calibrate(model, [b[:, :-1] for b in batches])
    lowbit.convert(model)
    seconds = time.perf_counter() - t0
    files = save_pretrained(model, args.out, args.model_dir, max_shard_bytes=int(args.max_shard_mb * (1 << 20)))
    rows = layer_table(model)
    print(render_layers(rows))
    skipped = getattr(model, "_lowbit_skipped", {})
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    print(f"calibrated and converted in {seconds:.1f} s; wrote {args.out}: {', '.join(files)}")
    if args.plot:
        plot_layers(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _quantize_distributed(args, cfg, batches):
    """The streaming run, in a process group of torchrun's processes when WORLD_SIZE > 1
    (gloo; joined here and left at the end). A failed collective is a clean error."""
    import torch.distributed as dist
    from lowbit.distributed import DistributedError, init_from_env
    try:
        started = init_from_env(args.dist_timeout)
    except DistributedError as e:
        return _die(str(e))
    try:
        return _quantize_streaming(args, cfg, batches)
    except DistributedError as e:
        return _die(str(e))
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def _quantize_streaming(args, cfg, batches):
    """--sequential on a folder: layer by layer, one decoder layer in memory (lowbit.streaming)."""
    from lowbit.pretrained import load_pretrained
    from lowbit.streaming import quantize_streaming
    result = quantize_streaming(args.model_dir, cfg, [b[:, :-1] for b in batches], args.out, resume=args.resume)
    if result["rank"] != 0:  # rank 0 wrote the folder and reports
        return 0
    model = load_pretrained(args.out)
    rows = layer_table(model)
    print(render_layers(rows))
    for name, why in getattr(model, "_lowbit_skipped", {}).items():
        print(f"skipped {name}: {why}")
    print("per layer: " + ", ".join(f"{t['layer']}: {t['seconds']:.1f} s" for t in result["timings"]))
    print(f"streamed in {result['seconds']:.1f} s, peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB "
          f"(estimated {result['estimated_bytes'] / 2**30:.2f} GiB beyond the interpreter); wrote {args.out}")
    if args.plot:
        plot_layers(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


COMPUTE_HELP = ("how a quantized folder's layers multiply: exact (default) or int8 (weight-only INT8/INT4 Linear "
                "layers quantize their activations per token and multiply in integers; lowbit.set_compute)")


def load_for_compute(folder, compute):
    """load_folder, then the compute mode (a float folder takes only 'exact'); the mode's
    name is checked first, by lowbit.set_compute's rule."""
    import lowbit
    from lowbit.api import check_compute
    check_compute(compute)
    model, tok, quantized = load_folder(folder)
    if compute != "exact":
        if not quantized:
            raise ValueError(f"--compute {compute}: {folder} is a float folder; the mode applies to quantized ones")
        r = lowbit.set_compute(model, compute)
        print(f"compute {compute}: {len(r['int8'])} layers, {len(r['exact'])} exact", file=sys.stderr)
    return model, tok, quantized


def cmd_eval(args):
    model, tok, quantized = load_for_compute(args.dir, args.compute)
    texts = read_samples(args.text)[args.first:args.first + args.samples]
    batches = token_batches(tok, texts, args.samples, args.seqlen)
    t0 = time.perf_counter()
    ppl = perplexity(model, batches, progress=not args.quiet)
    kind = "quantized" if quantized else "float"
    print(f"perplexity {ppl:.4f} ({kind} {args.dir}, {len(batches)} samples, "
          f"{sum(b.shape[1] - 1 for b in batches)} predicted tokens, {time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_generate(args):
    model, tok, _ = load_for_compute(args.dir, args.compute)
    prompt = tok.encode(args.prompt, add_bos=True)
    t0 = time.perf_counter()
    out = model.generate(prompt, args.max_new_tokens, eos_id=tok.eos_id)
    seconds = time.perf_counter() - t0
    new = len(out) - len(prompt)
    print(tok.decode(out))
    print(f"{new} tokens in {seconds:.2f} s: {new / max(seconds, 1e-9):.1f} tokens/s (prompt {len(prompt)} tokens)",
          file=sys.stderr)
    return 0


def cmd_inspect(args):
    from lowbit.pretrained import is_quantized_folder, load_pretrained
    if not is_quantized_folder(args.dir):
        return _die(f"{args.dir} is not a lowbit-quantized folder")
    model = load_pretrained(args.dir)
    print(render_layers(layer_table(model)))
    for name, why in getattr(model, "_lowbit_skipped", {}).items():
        print(f"skipped {name}: {why}")
    return 0


def cmd_convert_llama2c(args):
    from lowbit.models.llama2c_to_hf import convert_llama2c_folder
    written = convert_llama2c_folder(args.checkpoint, args.tokenizer, args.out)
    print(f"wrote {args.out}: {', '.join(written)}")
    return 0


def cmd_export(args):
    import logging
    from lowbit.export.gguf_llama import export_gguf, render_report
    if args.format != "gguf":
        return _die(f"--format: {args.format!r} is not allowed; allowed: gguf")
    logging.getLogger("lowbit.export").setLevel(logging.WARNING)
    rep = export_gguf(args.source, args.out, tokenizer=args.tokenizer, progress=not args.quiet)
    print(render_report(rep))
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="lowbit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="quantize the real models and print the result tables (default)")
    run.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="packed size and weight SQNR of a real model for every format")
    rep.add_argument("--model", default=None, help="llama2.c checkpoint (default: shared stories260K)")
    q = sub.add_parser("quantize", help="quantize a Hugging Face Llama/Mistral/Qwen2 folder")
    q.add_argument("model_dir")
    q.add_argument("--config", required=True, help="a built-in config name or a config .json file")
    q.add_argument("--calib", required=True, help="calibration text: plain text (paragraphs) or JSON lines")
    q.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    q.add_argument("--seqlen", type=int, default=512, help="tokens per sample at most (default 512)")
    q.add_argument("--sequential", action="store_true",
                   help="stream: calibrate layer by layer with one decoder layer in memory (larger-than-RAM models)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted --sequential run into --out")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--plot", default=None, help="write a PNG of per-layer error and bytes")
    q.add_argument("--max-shard-mb", type=float, default=4096, help="shard size (default 4096 MiB)")
    q.add_argument("--dist-timeout", type=float, default=None,
                   help="under torchrun: seconds a process waits for the others before it stops with an error "
                        "(default $LOWBIT_DIST_TIMEOUT or 600)")
    e = sub.add_parser("eval", help="perplexity of a float or quantized folder")
    e.add_argument("dir")
    e.add_argument("--text", required=True)
    e.add_argument("--samples", type=int, default=100)
    e.add_argument("--first", type=int, default=0, help="index of the first sample (default 0)")
    e.add_argument("--seqlen", type=int, default=PARAGRAPH_LIMIT)
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--compute", default="exact", help=COMPUTE_HELP)
    g = sub.add_parser("generate", help="greedy generation with a KV cache")
    g.add_argument("dir")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--compute", default="exact", help=COMPUTE_HELP)
    i = sub.add_parser("inspect", help="formats, bytes and error per layer of a quantized folder")
    i.add_argument("dir")
    c = sub.add_parser("convert-llama2c", help="a llama2.c checkpoint as a Hugging Face Llama folder")
    c.add_argument("checkpoint")
    c.add_argument("tokenizer")
    c.add_argument("--out", required=True)
    x = sub.add_parser("export", help="write a float or quantized model for another runtime (GGUF: llama.cpp)")
    x.add_argument("source", help="a Hugging Face folder (float or from 'lowbit quantize'), or a llama2.c .bin")
    x.add_argument("--format", required=True, help="output format; allowed: gguf")
    x.add_argument("--out", required=True, help="output file (.gguf)")
    x.add_argument("--tokenizer", default=None, help="the tokenizer .bin of a llama2.c checkpoint")
    x.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    import torch
    import lowbit
    if args.command in (None, "run", "report"):
        torch.set_num_threads(2)
    elif not os.environ.get("OMP_NUM_THREADS"):  # torch may default to fewer threads than the cores it may use
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    for key in ("samples", "seqlen", "max_new_tokens"):
        v = getattr(args, key, None)
        if v is not None and v < 1:
            return _die(f"--{key.replace('_', '-')}: {v} must be at least 1")
    try:
        if args.command == "quantize":
            return cmd_quantize(args)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "convert-llama2c":
            return cmd_convert_llama2c(args)
        if args.command == "export":
            return cmd_export(args)
    except (ValueError, TypeError, OSError) as err:
        return _die(str(err))
    if args.command == "report":
        from lowbit.data import data_file
        from lowbit.models import load_llama2c
        from lowbit.report import format_report, render
        path = args.model or data_file("models", "stories260K.bin")
        model = load_llama2c(path)
        n = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear)) - 1
        print(render(format_report(model), f"lowbit {lowbit.__version__} format report: {path} "
                                           f"({n} transformer Linear weights, classifier kept in float; "
                                           f"kernels: {lowbit.isa()})"))
        return 0
    from lowbit.jobs import main_job
    main_job(progress=not getattr(args, "no_progress", False))
    return 0
