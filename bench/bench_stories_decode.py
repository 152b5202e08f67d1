"""Greedy decoding speed of the real stories260K LM (../shared/data) in float and after
convert() with each built-in config and the MIN-MAX weight-only rows, measured in the
same run.

stories260K is tiny (dim 64, 35 Linear layers of 64 x 64 to 512 x 64): a decoding step
is a few milliseconds of per-call overhead, not arithmetic, so this table is where a
deploy op's fixed cost (argument handling, kernel choice, thread start-up) shows.
Each round decodes --tokens tokens after the prompt "Once upon a time" with every
variant in turn, each right after a float run; the table shows the median over rounds of
tokens/s and of the ratio to the float run just before, and how many generated tokens
equal float's before the first difference. The classifier stays in float, as in the main job.

    PYTHONPATH=python python3 bench/bench_stories_decode.py [--rounds 7] [--tokens 100] [--threads 2]
"""
import argparse
import copy
import statistics
import time

import torch

import lowbit
from lowbit.eval import lm


def variants():
    rows = [(name, lowbit.builtin_config(name)) for name in lowbit.BUILTIN_CONFIG_NAMES]
    rows += [("MINMAX W4 group32", {"quant_cfg": {"weights": {"type": "int4", "strategy": "group",
                                                              "group_size": 32}}})]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = lm.load_stories260k()
    calib = lm.token_batches(tok, lm.CALIB_RANGE, limit=16)
    prompt = tok.encode("Once upon a time")
    models = [("float", model.eval())]
    for name, cfg in variants():
        q = copy.deepcopy(model)
        cfg = copy.deepcopy(cfg)
        cfg["batch_num"] = len(calib)
        cfg["skip_layers"] = {"output"}
        lowbit.quantize(q, cfg)
        lm.calibrate(q, calib)
        lowbit.convert(q)
        models.append((name, q.eval()))
    speeds = [[] for _ in models]
    ratios = [[] for _ in models]
    texts = {}

    def run(name, m):
        t = time.perf_counter()
        texts[name] = m.generate(prompt, args.tokens)
        return args.tokens / (time.perf_counter() - t)

    for _ in range(args.rounds):
        # each variant right after a float run of its own: the ratio of the pair does not
        # see the machine's slower and faster minutes, which move both alike
        for i, (name, m) in enumerate(models):
            base = run("float", models[0][1])
            speeds[0].append(base)
            if i:
                speeds[i].append(run(name, m))
                ratios[i].append(speeds[i][-1] / base)
    print(f"stories260K greedy decoding: {args.tokens} tokens after a {len(prompt)}-token prompt, "
          f"{torch.get_num_threads()} threads, kernels {lowbit.isa()}; medians of {args.rounds} rounds; "
          f"'x float': median ratio to the float run just before")
    print(f"{'variant':<30} {'tokens/s':>9} {'x float':>8} {'tokens equal to float':>22}")
    for i, ((name, _), s) in enumerate(zip(models, speeds)):
        same = next((i for i, (a, b) in enumerate(zip(texts[name], texts["float"])) if a != b), len(texts["float"]))
        ratio = statistics.median(ratios[i]) if i else 1.0
        print(f"{name:<30} {statistics.median(s):9.1f} {ratio:7.2f}x "
              f"{max(0, same - len(prompt)):>14} of {args.tokens}")


if __name__ == "__main__":
    main()
