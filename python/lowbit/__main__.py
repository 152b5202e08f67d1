"""Command line: ``python3 -m lowbit [report] [--model PATH]``."""
import argparse
import sys

import torch

import lowbit
from lowbit.data import data_file


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    rep = sub.add_parser("report", help="packed size and weight SQNR of a real model for every format")
    rep.add_argument("--model", default=None, help="llama2.c checkpoint (default: shared stories260K)")
    rep.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command in (None, "report"):
        from lowbit.models import load_llama2c
        from lowbit.report import format_report, render
        torch.set_num_threads(getattr(args, "threads", 2))
        path = getattr(args, "model", None) or data_file("models", "stories260K.bin")
        model = load_llama2c(path)
        rows = format_report(model)
        n = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear)) - 1
        print(render(rows, f"lowbit {lowbit.__version__} format report: {path} "
                           f"({n} transformer Linear weights, classifier kept in float; kernels: {lowbit.isa()})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
