"""Deploy convolutions against torch's F.conv2d (mkldnn), measured in the same run.

Part 1, layers: the 3x3 convolutions of the CIFAR ResNets (16/32/64 channels, stride 1
and 2) at several batch sizes, each weight format through torch.ops.lowbit.conv2d_packed
(and INT8 x INT8 through conv2d_int8), against F.conv2d on the float weight.
Part 2, models: images/s of the real ResNet-20/56 (../shared/data) in float and after
convert() with INT8 x INT8, HiF8 x HiF8 (OFMR) and W4 per-channel weights, fed the test
images as they load (channels-last views of the NHWC array, which every layer keeps) and
as contiguous NCHW copies.
Calls alternate between the two sides, several rounds; the tables show medians.

    PYTHONPATH=python python3 bench/bench_conv.py [--batches 1,64,256] [--rounds 7] [--layouts NCHW,NHWC]
        [--threads 2] [--no-models]
"""
import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

import lowbit
from lowbit import formats

OPS = torch.ops.lowbit
EMPTY = torch.empty(0, dtype=torch.int32)
LAYERS = [(16, 16, 32, 1), (32, 32, 16, 1), (64, 64, 8, 1), (16, 32, 32, 2), (32, 64, 16, 2)]  # cin, cout, hw, stride
WEIGHT_ONLY = [("W8 int8", "int8"), ("W8 hif8", "hifloat8"), ("W4 int4", "int4")]


def medians(fns, rounds):
    """Median seconds of each function, calls interleaved round by round."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for t, fn in zip(times, fns):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def layer_table(batches, rounds, layouts):
    print("3x3 convolutions, padding 1, fp32 activations: ms per call and speed-up over F.conv2d "
          "(NHWC: channels-last input and weight on both sides)")
    labels = [label for label, _ in WEIGHT_ONLY] + ["A8W8 tensor"]
    print(f"{'batch':>5} {'layout':>6} {'layer':>16} {'torch ms':>9} | " + " | ".join(f"{lab:>13}" for lab in labels))
    for b, layout, (cin, cout, hw, stride) in ((b, lay, shape) for b in batches for lay in layouts for shape in LAYERS):
        x = torch.randn(b, cin, hw, hw)
        if layout == "NHWC":
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(cout, cin, 3, 3)
        k = cin * 9
        wt = w.contiguous(memory_format=torch.channels_last) if layout == "NHWC" else w
        geometry = ([3, 3], [stride, stride], [1, 1], [1, 1], 1)
        fns = [lambda: F.conv2d(x, wt, None, stride, 1)]
        for _, fmt in WEIGHT_ONLY:
            s, o = formats.compute_scales(w.reshape(cout, k), fmt, "channel", 0, True)
            p = formats.pack(w.reshape(cout, k), fmt, s, o, "channel", 0, True)
            fns.append(lambda p=p, s=s, fmt=fmt: OPS.conv2d_packed(x, p, s, EMPTY, None, None, fmt, "channel", 0,
                                                                   True, k, torch.float32, *geometry))
        s, o = formats.compute_scales(w.reshape(cout, k), "int8", "channel", 0, True)
        p = formats.pack(w.reshape(cout, k), "int8", s, o, "channel", 0, True)
        a_scale = torch.tensor([float(x.abs().max()) / 127])
        fns.append(lambda: OPS.conv2d_int8(x, p, s.reshape(-1), 8, k, a_scale, torch.zeros(1, dtype=torch.int32),
                                           None, *geometry))
        t = medians(fns, rounds)
        cells = " | ".join(f"{1e3 * v:6.2f} {t[0] / v:5.2f}x" for v in t[1:])
        print(f"{b:>5} {layout:>6} {f'{cin}->{cout} {hw}x{hw} s{stride}':>16} {1e3 * t[0]:9.2f} | {cells}")


def model_table(batches, rounds):
    from lowbit.eval import cifar
    x, _ = cifar.test_set(limit=max(batches) + 250)
    calib = [x[i:i + 250] for i in range(0, 250, 250)]
    configs = [("INT8 x INT8", {"quant_cfg": {"weights": {"type": "int8", "strategy": "channel"},
                                              "inputs": {"type": "int8", "strategy": "tensor"}}}),
               ("HIFP8_OFMR", lowbit.HIFP8_OFMR_CFG),
               ("W4 channel", {"quant_cfg": {"weights": {"type": "int4", "strategy": "channel"}}})]
    print("\nReal models (CIFAR-10 test images), images/s; ratio = float time / that model's time. convert() folds")
    print("each BatchNorm into its convolution; 'float BN-folded' is the float model with torch.fx's own Conv+BN")
    print("fusion (torch.fx.experimental.optimization.fuse), the float baseline a user could also have")
    names = ["float BN-folded"] + [n for n, _ in configs]
    print(f"{'model':>10} {'batch':>5} {'input':>6} {'float img/s':>12} | " + " | ".join(f"{n:>17}" for n in names))
    for depth in (20, 56):
        model = cifar.load_resnet(depth).eval()
        converted = [fuse(copy.deepcopy(model))]
        for _, cfg in configs:
            q = copy.deepcopy(model)
            cfg = copy.deepcopy(cfg)
            cfg["batch_num"] = len(calib)
            lowbit.quantize(q, cfg)
            with torch.no_grad():
                for xb in calib:
                    q(xb)
            lowbit.convert(q)
            converted.append(q.eval())
        for b in batches:
            for layout in ("NHWC", "NCHW"):  # the test images are channels-last views; NCHW copies
                xb = x[250:250 + b]
                xb = xb if layout == "NHWC" else xb.contiguous()
                with torch.no_grad():
                    t = medians([lambda: model(xb)] + [lambda q=q: q(xb) for q in converted], rounds)
                cells = " | ".join(f"{b / v:9.0f} {t[0] / v:5.2f}x" for v in t[1:])
                print(f"{f'ResNet-{depth}':>10} {b:>5} {layout:>6} {b / t[0]:12.0f} | {cells}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layouts", default="NCHW,NHWC", help="layer table input layouts")
    ap.add_argument("--no-models", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(v) for v in args.batches.split(",")]
    print(f"threads {torch.get_num_threads()}, lowbit ISA {OPS.isa()}, int8 kernel {OPS.int8_kernel()}")
    layer_table(batches, args.rounds, args.layouts.split(","))
    if not args.no_models:
        model_table(batches, args.rounds)


if __name__ == "__main__":
    main()
