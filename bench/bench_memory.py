"""Memory of the real models before and after conversion: the bytes the model's tensors
take (lowbit.model_bytes) and the process's resident set (RSS), each model and config in
its own process. Float weights must not survive conversion: the converted model keeps
packed codes and scales only (layers left in float, like stories260K's classifier, stay).

    PYTHONPATH=python python3 bench/bench_memory.py
"""
import gc
import json
import subprocess
import sys

import torch

CONFIGS = {"W8 channel": {"type": "int8"}, "W4 group 32": {"type": "int4", "strategy": "group", "group_size": 32}}


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(model_name, cfg_name):
    import lowbit
    from lowbit.eval import cifar, lm
    if model_name == "stories260K":
        model, tok = lm.load_stories260k()
        x = lm.token_batches(tok, lm.EVAL_RANGE, limit=1)[0]
        skip = {"output"}
    else:
        model = cifar.load_resnet(int(model_name.split("-")[1]))
        x = cifar.test_set(limit=8)[0]
        skip = set()
    with torch.no_grad():
        model(x)
    gc.collect()
    before = (lowbit.model_bytes(model), rss_mb())
    lowbit.quantize(model, {"quant_cfg": {"weights": CONFIGS[cfg_name]}, "skip_layers": skip})
    lowbit.convert(model)
    gc.collect()
    with torch.no_grad():
        model(x)
    after = (lowbit.model_bytes(model), rss_mb())
    from lowbit.modules.deploy import DeployLayer
    packed = sum(m.packed_bytes() for m in model.modules() if isinstance(m, DeployLayer))
    print(json.dumps({"model": model_name, "config": cfg_name, "bytes_before": before[0], "rss_before": before[1],
                      "bytes_after": after[0], "rss_after": after[1], "packed": packed}))


def main():
    if len(sys.argv) == 3:
        return child(sys.argv[1], sys.argv[2])
    print(f"{'model':12} {'config':12} {'tensors before':>15} {'after':>10} {'of which packed':>16} "
          f"{'RSS before MB':>14} {'RSS after MB':>13}")
    for model in ("stories260K", "resnet-20", "resnet-56"):
        for cfg in CONFIGS:
            out = subprocess.run([sys.executable, __file__, model, cfg], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{model:12} {cfg:12} {r['bytes_before']:15,} {r['bytes_after']:10,} {r['packed']:16,} "
                  f"{r['rss_before']:14.1f} {r['rss_after']:13.1f}")


if __name__ == "__main__":
    main()
