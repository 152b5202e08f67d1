"""Deploy models are traceable, and the C++ example program (libtorch + liblowbit_ops.so,
no Python) reproduces their outputs."""
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit

RUNNER = Path(__file__).resolve().parents[3] / "build" / "lowbit_run_model"


def run_cpp(model_path, io_path):
    if not RUNNER.exists():
        pytest.fail(f"{RUNNER} is missing: scripts/build.sh builds it")
    return subprocess.run([str(RUNNER), str(model_path), str(io_path)], capture_output=True, text=True, timeout=300)


def test_cpp_program_reproduces_a_small_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 9))
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32}},
                            "skip_layers": {"4"}})
    lowbit.convert(model)
    x = torch.randn(5, 40)
    m, io, y = lowbit.export_torchscript(model, x, tmp_path)
    assert torch.equal(y, model(x))  # the traced graph is the Python model
    r = run_cpp(m, io)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "output [5, 9], max |C++ - Python| = 0" in r.stdout


def test_cpp_program_detects_a_wrong_output(tmp_path):
    model = nn.Sequential(nn.Linear(32, 8))
    lowbit.convert(lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}}}))
    x = torch.randn(2, 32)
    m, io, y = lowbit.export_torchscript(model, x, tmp_path)
    torch.jit.script(lowbit.torchscript._Example(x, y + 1)).save(str(io))
    r = run_cpp(m, io)
    assert r.returncode == 1 and "max |C++ - Python| = 1" in r.stdout


def test_export_refuses_calibration_layers(tmp_path):
    model = lowbit.quantize(nn.Sequential(nn.Linear(32, 8)), {"quant_cfg": {"weights": {"type": "int8"}}})
    with pytest.raises(ValueError, match="run lowbit.convert"):
        lowbit.export_torchscript(model, torch.randn(1, 32), tmp_path)


def test_real_models_run_from_cpp(shared_data, tmp_path):
    from lowbit.eval import cifar, lm
    lm_model, tok = lm.load_stories260k()
    cfg = lowbit.INT4_GPTQ_WEIGHT_QUANT_CFG
    cfg["algorithm"] = "minmax"  # round to nearest: the export is what is tested here
    cfg["skip_layers"] = {"output"}
    lowbit.convert(lowbit.quantize(lm_model, cfg))
    tokens = lm.token_batches(tok, lm.EVAL_RANGE, limit=1)[0]
    r = run_cpp(*lowbit.export_torchscript(lm_model, tokens, tmp_path / "lm")[:2])
    assert r.returncode == 0, r.stdout + r.stderr

    net = cifar.load_resnet(20)
    x, _ = cifar.test_set(limit=64)
    lowbit.quantize(net, {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8"}}, "batch_num": 1})
    with torch.no_grad():
        net(x)
    lowbit.convert(net)
    r = run_cpp(*lowbit.export_torchscript(net, x[:8], tmp_path / "resnet")[:2])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "output [8, 10]" in r.stdout
