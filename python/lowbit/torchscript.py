"""TorchScript export of converted models, for running them from C++ (no Python).

The deploy layers compute with torch.ops.lowbit.* only, so a converted model traces into
a graph of torch and lowbit ops. ``export_torchscript`` writes that graph plus a small
file holding an example input and the output Python computed for it; the C++ program
``build/lowbit_run_model`` (examples/cpp/run_deployed.cpp) loads both with libtorch and
liblowbit_ops.so and checks that it reproduces the output.
"""
import warnings
from pathlib import Path

import torch

from lowbit.modules.calibration import CalibLayer


class _Example(torch.nn.Module):
    def __init__(self, x, y):
        super().__init__()
        self.register_buffer("x", x)
        self.register_buffer("y", y)

    def forward(self):
        return self.y


def export_torchscript(model, example, folder):
    """Traces ``model`` (converted) on ``example`` and writes ``folder/model.pt`` and
    ``folder/io.pt``. Returns (model path, io path, the traced model's output).

    Tracing records one input shape's control flow (what torch.jit.trace always does);
    the saved model accepts inputs of that shape."""
    if any(isinstance(m, CalibLayer) for m in model.modules()):
        raise ValueError("export_torchscript: the model still has calibration layers; run lowbit.convert(model) first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
        y = traced(example)
    model_path, io_path = folder / "model.pt", folder / "io.pt"
    traced.save(str(model_path))
    torch.jit.script(_Example(example, y)).save(str(io_path))
    return model_path, io_path, y
