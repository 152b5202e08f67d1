import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from lowbit.data import data_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state (reproducible failures);
    LOWBIT_TEST_SEED picks another one."""
    import os

    import torch
    torch.manual_seed(int(os.environ.get("LOWBIT_TEST_SEED", "1234")))


@pytest.fixture
def shared_data():
    d = data_dir()
    if not (d / "models" / "stories260K.bin").exists():
        pytest.skip(f"shared data folder not found at {d} (set LOWBIT_DATA); real-model test skipped")
    return d


_OUT_EPS = {"torch.float32": 2.0 ** -24, "torch.bfloat16": 2.0 ** -8, "torch.float16": 2.0 ** -11}


def assert_close_to_reference(got, want, k, what="output", magnitude=None):
    """The deploy kernels' contract: equal to the fake-quant reference up to the order of
    the fp32 summation. ``magnitude`` (same shape: sum_k |x||w| + |b|, the scale fp32
    summation errors grow with) bounds the difference by k fp32 roundings of it plus one
    rounding to the output dtype on each side; without it the largest output stands in."""
    import torch
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    out_eps = _OUT_EPS[str(want.dtype)]
    if magnitude is None:
        magnitude = torch.full(want.shape, float(want.float().abs().max()) or 1e-30)
    bound = k * 2.0 ** -23 * magnitude.float() + 2 * out_eps * torch.maximum(want.float().abs(), magnitude.float())
    diff = (got.float() - want.float()).abs()
    worst = float((diff - bound).max())
    assert worst <= 0, (f"{what}: |deploy - reference| exceeds its bound by {worst:.3g} "
                        f"(max diff {float(diff.max()):.3g}, k={k}, dtype={want.dtype})")
    return float(diff.max())


def assert_deploy_layers_match(model, *inputs):
    """Runs the converted model once and checks every deploy layer's output against its
    fake-quant reference on the very input it received. Returns the number of layers."""
    import torch
    from lowbit.modules.deploy import DeployLayer
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0].detach(), out.detach())))
             for m in model.modules() if isinstance(m, DeployLayer)]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    assert seen, "no deploy layer ran"
    for mod, x, y in seen:
        with torch.no_grad():
            xq = mod.act_qdq(x.float()).abs()
            b = mod.effective_bias(mod.bias, torch.float32)
            mag = mod.compute(xq, mod.weight_dequant().float().abs(), None if b is None else b.float().abs())
            assert_close_to_reference(y, mod.reference_forward(x), mod.cols, what=mod.layer_name, magnitude=mag)
    return len(seen)


def W(type_, strategy=None, group_size=None, symmetric=True):
    """A quant_cfg 'weights' entry (strategy and group_size only when given)."""
    d = {"type": type_, "symmetric": symmetric}
    if strategy:
        d["strategy"] = strategy
    if group_size:
        d["group_size"] = group_size
    return d


def A(type_, strategy="tensor", symmetric=True):
    """A quant_cfg 'inputs' entry."""
    return {"type": type_, "symmetric": symmetric, "strategy": strategy}


def run_lowbit(*args, cwd=None):
    """Runs ``python3 -m lowbit ARGS``; asserts success; returns (stdout, stderr)."""
    import os
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    r = subprocess.run([sys.executable, "-m", "lowbit", *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, r.stderr


@pytest.fixture(scope="session")
def stories_folder(tmp_path_factory):
    """(the stories260K llama2.c model converted to a Hugging Face folder by the lowbit
    command, a calibration text file of the protocol's calibration paragraphs, the
    evaluation text file)."""
    d = data_dir()
    if not (d / "models" / "stories260K.bin").exists():
        pytest.skip(f"shared data folder not found at {d} (set LOWBIT_DATA); real-model test skipped")
    out = tmp_path_factory.mktemp("hf") / "stories260K"
    stdout, _ = run_lowbit("convert-llama2c", d / "models" / "stories260K.bin", d / "models" / "tok512.bin",
                           "--out", out)
    assert "config.json" in stdout
    calib = tmp_path_factory.mktemp("calib") / "calib.txt"
    from lowbit.eval.lm import CALIB_RANGE, paragraphs
    calib.write_text("\n\n".join(paragraphs()[CALIB_RANGE[0]:CALIB_RANGE[1]]) + "\n", encoding="utf-8")
    return out, calib, d / "text" / "tinystories_val.txt"
