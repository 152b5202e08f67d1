"""Accuracy of convert's opt-in 8-bit compute mode (compute="int8": activations quantized
per token inside weight-only INT8/INT4 Linear products) next to the exact mode, on the
real models: stories260K perplexity and CIFAR-10 ResNet top-1. The quantized weights are
the same in both columns (one quantization, then lowbit.set_compute), so the difference
is the cost of the 8-bit activations alone.

    PYTHONPATH=python python3 bench/compute_int8_accuracy.py [--paragraphs 100] [--images 9000]

ResNets: only the classifier (fc) is a Linear layer; the convolutions stay exact, so the
ResNet rows measure the classifier's 8-bit inputs only.
"""
import argparse
import copy

import torch

import lowbit
from lowbit.eval import cifar, lm

STORIES = ["INT8_MINMAX_WEIGHT_QUANT_CFG", "GGUF_Q8_0_CFG", "INT4_GPTQ_WEIGHT_QUANT_CFG", "INT4_AWQ_WEIGHT_QUANT_CFG",
           "GGUF_Q4_0_GPTQ_CFG", "GGUF_Q4_0_CFG"]
RESNET = ["INT8_MINMAX_WEIGHT_QUANT_CFG", "INT4_GPTQ_WEIGHT_QUANT_CFG"]


def both_modes(q, evaluate):
    exact = evaluate(q)
    taken = lowbit.set_compute(q, "int8")["int8"]
    fast = evaluate(q)
    lowbit.set_compute(q, "exact")
    return exact, fast, len(taken)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paragraphs", type=int, default=100)
    ap.add_argument("--images", type=int, default=9000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = lm.load_stories260k()
    cal = lm.token_batches(tok, lm.CALIB_RANGE)
    ev = [torch.tensor([tok.encode(t)[:lm.MAX_TOKENS]]) for t in lm.paragraphs()[:args.paragraphs]]
    print(f"stories260K: perplexity on {len(ev)} paragraphs (float {lm.perplexity(model, ev):.4f}); calibration "
          f"on {len(cal)} paragraphs; lm_head stays float")
    print("| config | layers in int8 compute | exact | compute int8 | change |\n|---|---|---|---|---|")
    for name in STORIES:
        q = copy.deepcopy(model)
        cfg = getattr(lowbit, name)
        cfg["batch_num"] = len(cal)
        cfg["skip_layers"] = {"output"}
        lowbit.quantize(q, cfg)
        lm.calibrate(q, cal)
        lowbit.convert(q)
        exact, fast, n = both_modes(q, lambda m: lm.perplexity(m, ev))
        print(f"| {name} | {n} | {exact:.4f} | {fast:.4f} | {100 * (fast / exact - 1):+.2f}% |", flush=True)
    for depth in (20, 56):
        net = cifar.load_resnet(depth)
        x, y = cifar.test_set()
        data = cifar.batches(x[:args.images], y[:args.images])
        calib = cifar.batches(x[9000:], y[9000:], 250)
        print(f"\nResNet-{depth}: top-1 % on {args.images} test images (float {cifar.top1(net, data):.2f}); "
              "only fc takes the 8-bit compute")
        print("| config | layers in int8 compute | exact | compute int8 |\n|---|---|---|---|")
        for name in RESNET:
            q = copy.deepcopy(net)
            cfg = getattr(lowbit, name)
            cfg["batch_num"] = len(calib)
            lowbit.quantize(q, cfg)
            with torch.no_grad():
                for xb, _ in calib:
                    q(xb)
            lowbit.convert(q)
            exact, fast, n = both_modes(q, lambda m: cifar.top1(m, data))
            print(f"| {name} | {n} | {exact:.2f} | {fast:.2f} |", flush=True)


if __name__ == "__main__":
    main()
