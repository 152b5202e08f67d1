"""Command line: ``python3 -m lowbit [run | report] ...``.

``run`` (the default) quantizes the real models with the built-in configs and MIN-MAX
rows and prints perplexity / top-1 tables; ``report`` prints packed sizes and weight SQNR
of stories260K for every format and granularity.
"""
import argparse
import sys

import torch

import lowbit
from lowbit.data import data_file


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="quantize the real models and print the result tables (default)")
    run.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="packed size and weight SQNR of a real model for every format")
    rep.add_argument("--model", default=None, help="llama2.c checkpoint (default: shared stories260K)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.command == "report":
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


if __name__ == "__main__":
    sys.exit(main())
