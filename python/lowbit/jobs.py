"""The main job: quantize the real models with the built-in configs and MIN-MAX rows,
calibrate, convert, evaluate, and print one table per model."""
import copy
import time

import torch
from tqdm import tqdm

import lowbit
from lowbit.modules.deploy import DeployLayer


def _w(t, strategy="channel", group_size=None):
    d = {"type": t, "symmetric": True, "strategy": strategy}
    if group_size:
        d["group_size"] = group_size
    return d


def lm_rows():
    rows = [(name, lowbit.builtin_config(name)) for name in lowbit.BUILTIN_CONFIG_NAMES]
    rows += [("MINMAX W8 channel", {"quant_cfg": {"weights": _w("int8")}}),
             ("MINMAX W8 group32", {"quant_cfg": {"weights": _w("int8", "group", 32)}}),
             ("MINMAX W4 channel", {"quant_cfg": {"weights": _w("int4")}}),
             ("MINMAX W4 group32", {"quant_cfg": {"weights": _w("int4", "group", 32)}}),
             ("MINMAX W8A8 (tensor)", {"quant_cfg": {"weights": _w("int8"),
                                                     "inputs": {"type": "int8", "strategy": "tensor"}}}),
             ("MINMAX W8A8 (token)", {"quant_cfg": {"weights": _w("int8"),
                                                    "inputs": {"type": "int8", "strategy": "token"}}}),
             ("GPTQ W4 channel", {"quant_cfg": {"weights": _w("int4")}, "algorithm": "gptq"}),
             ("GPTQ W4 group32", {"quant_cfg": {"weights": _w("int4", "group", 32)}, "algorithm": "gptq"}),
             ("MINMAX W3 group32", {"quant_cfg": {"weights": _w("int3", "group", 32)}}),
             ("GPTQ W3 group32", {"quant_cfg": {"weights": _w("int3", "group", 32)}, "algorithm": "gptq"}),
             ("AWQ W4 group32", {"quant_cfg": {"weights": _w("int4", "group", 32)}, "algorithm": {"awq": {}}}),
             ("MINMAX MXFP4", {"quant_cfg": {"weights": _w("mxfp4_e2m1", "group", 32)}}),
             ("GPTQ MXFP4", {"quant_cfg": {"weights": _w("mxfp4_e2m1", "group", 32)}, "algorithm": "gptq"}),
             ("SMOOTHQUANT W4A8", {"quant_cfg": {"weights": _w("int4", "group", 32),
                                                 "inputs": {"type": "int8", "strategy": "token"}},
                                   "algorithm": {"smoothquant": {"smooth_strength": 0.5}}}),
             ("SMOOTHQUANT W4A8 auto", {"quant_cfg": {"weights": _w("int4", "group", 32),
                                                      "inputs": {"type": "int8", "strategy": "token"}},
                                        "algorithm": {"smoothquant": {"smooth_strength": "auto"}}}),
             ("INT8_SMOOTHQUANT auto", {**lowbit.INT8_SMOOTHQUANT_CFG,
                                        "algorithm": {"smoothquant": {"smooth_strength": "auto"}}})]
    return [(n, c) for n, c in rows if c is not None]


def cnn_rows():
    def full(t, symmetric=True, **extra):
        cfg = {"quant_cfg": {"weights": _w(t), "inputs": {"type": t, "strategy": "tensor", "symmetric": symmetric}}}
        return {**cfg, **extra}

    def first_input_float(cfg):  # the network input stays float: the first convolution is weight-only
        return {**cfg, "quant_cfg": {**cfg["quant_cfg"], "conv1.inputs": {"enable_quant": False}}}

    return [("INT8 x INT8 MINMAX", full("int8")), ("INT8 x INT8 MINMAX asym", full("int8", symmetric=False)),
            ("INT8 x INT8 bias_correction", full("int8", bias_correction=True)),
            ("HIFLOAT8 x HIFLOAT8 MINMAX", full("hifloat8")),
            ("HIF8 bias_correction", full("hifloat8", bias_correction=True)),
            ("HIF8 first input float", first_input_float(full("hifloat8"))),
            ("FP8 x FP8 MINMAX", full("float8_e4m3fn")),
            ("FP8 first input float", first_input_float(full("float8_e4m3fn"))),
            ("HIFP8_OFMR_CFG", lowbit.HIFP8_OFMR_CFG),
            ("FP8_OFMR_CFG", lowbit.FP8_OFMR_CFG),
            ("HIFP8_OFMR_CFG sequential", lowbit.HIFP8_OFMR_CFG, True),
            ("FP8_OFMR_CFG sequential", lowbit.FP8_OFMR_CFG, True),
            ("MINMAX W4 channel (RTN)", {"quant_cfg": {"weights": _w("int4")}}),
            ("GPTQ W4 channel", {"quant_cfg": {"weights": _w("int4")}, "algorithm": "gptq"})]


def _sizes(model):
    layers = [m for m in model.modules() if isinstance(m, DeployLayer)]
    float_bytes = sum(int(torch.tensor(m.weight_shape).prod()) * torch.finfo(m.weight_dtype).bits // 8 for m in layers)
    return len(layers), float_bytes, sum(m.packed_bytes() for m in layers)


def run_config(model, cfg, calib_batches, evaluate, calib_fn, sequential=False):
    """quantize -> calibrate -> convert -> evaluate; returns a row dict. Sequential rows
    calibrate block by block through lowbit.calibrate (later blocks see quantized inputs)."""
    q = copy.deepcopy(model)
    t0 = time.perf_counter()
    lowbit.quantize(q, cfg, sequential=sequential)
    if sequential:
        lowbit.calibrate(q, [b[0] if isinstance(b, tuple) else b for b in calib_batches])
    else:
        calib_fn(q, calib_batches)
    lowbit.convert(q)
    t_quant = time.perf_counter() - t0
    n, fb, pb = _sizes(q)
    score = evaluate(q)
    return {"layers": n, "float_bytes": fb, "packed_bytes": pb, "score": score, "seconds": t_quant,
            "eval_seconds": time.perf_counter() - t0 - t_quant}


def render(title, metric, float_score, results, higher_better):
    lines = [title, f"{'config':<28} {'layers':>6} {'weight bytes float -> packed':>30} {metric:>11} "
                    f"{'vs float':>9} {'quant s':>8} {'eval s':>7}"]
    lines.append(f"{'float':<28} {'':>6} {'':>30} {float_score:>11.4f} {'':>9}")
    for name, r in results:
        delta = r["score"] - float_score
        rel = f"{100 * delta / float_score:+.2f}%" if not higher_better else f"{delta:+.2f}"
        size = f"{r['float_bytes']:,} -> {r['packed_bytes']:,}"
        lines.append(f"{name:<28} {r['layers']:>6} {size:>30} {r['score']:>11.4f} {rel:>9} {r['seconds']:>8.1f} "
                     f"{r['eval_seconds']:>7.1f}")
    return "\n".join(lines)


def stories_job(progress=True):
    from lowbit.eval import lm
    model, tok = lm.load_stories260k()
    ev = lm.token_batches(tok, lm.EVAL_RANGE)
    cal = lm.token_batches(tok, lm.CALIB_RANGE)
    base = lm.perplexity(model, ev, progress, "float perplexity")
    results = []
    rows = lm_rows()
    for name, cfg in tqdm(rows, desc="stories260K configs", disable=not progress):
        cfg = copy.deepcopy(cfg)
        cfg["batch_num"] = len(cal)               # calibrate on all 128 calibration paragraphs
        cfg["skip_layers"] = {"output"}           # the classifier stays in float (tied to the embedding)
        results.append((name, run_config(model, cfg, cal, lambda q: lm.perplexity(q, ev, progress, name),
                                         lambda q, b: lm.calibrate(q, b, progress))))
    return render(f"stories260K (llama2.c, 35 transformer Linear layers; perplexity on paragraphs 0-99 of "
                  f"tinystories_val, calibration on paragraphs 1000-1127)", "perplexity", base, results, False)


def resnet_job(depth=20, progress=True):
    from lowbit.eval import cifar
    model = cifar.load_resnet(depth)
    x, y = cifar.test_set()
    ev = cifar.batches(x[:9000], y[:9000])
    cal = cifar.batches(x[9000:], y[9000:], 250)
    base = cifar.top1(model, ev, progress, "float top-1")

    def calib(q, batches):
        with torch.no_grad():
            for xb, _ in tqdm(batches, desc="calibration", disable=not progress, leave=False):
                q(xb)

    results = []
    for name, cfg, *sequential in tqdm(cnn_rows(), desc=f"ResNet-{depth} configs", disable=not progress):
        cfg = copy.deepcopy(cfg)
        cfg["batch_num"] = len(cal)
        results.append((name, run_config(model, cfg, cal, lambda q: cifar.top1(q, ev, progress, name), calib,
                                         sequential=bool(sequential))))
    return render(f"ResNet-{depth} on CIFAR-10 (top-1 % on test images 0-8999; calibration on images 9000-9999; "
                  f"every Conv2d and the Linear quantized, each BatchNorm folded into its Conv2d by convert)",
                  "top-1 %", base, results, True)


def main_job(progress=True):
    torch.set_num_threads(2)
    print(f"lowbit {lowbit.__version__} (kernels: {lowbit.isa()}, torch threads: {torch.get_num_threads()})")
    print(stories_job(progress))
    print()
    print(resnet_job(20, progress))
    print()
    print(resnet_job(56, progress))
