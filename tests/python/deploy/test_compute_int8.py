"""The opt-in 8-bit compute mode (convert(compute="int8") / lowbit.set_compute):
torch.ops.lowbit.linear_dynamic_int8 against its reference (per-token INT8 fake
quantization of the activations, then the product with the dequantized weight), every
instruction set bit for bit against the scalar kernel, NaN/Inf rows, errors, and which
layers the mode takes, with the reason for the others."""
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from conftest import assert_close_to_reference
from lowbit import formats

OPS = torch.ops.lowbit
WEIGHTS = [  # format, granularity, group size
    ("int4", "group", 32), ("int4", "group", 64), ("int4", "group", 128), ("int4", "channel", 0), ("int4", "tensor", 0),
    ("int8", "channel", 0), ("int8", "group", 96), ("int8", "tensor", 0)]
# M, N, K; M = 70 at K = 4096 spans two passes over the activation rows (64 rows of 4 KiB each)
SHAPES = [(1, 7, 100), (3, 33, 64), (5, 16, 4096), (8, 9, 96), (13, 5, 33), (70, 9, 4096)]


ISAS = formats.available_isas()  # every instruction set this CPU runs


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    OPS.set_isa("auto")


def packed(n, k, fmt, gran, gs, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g) * 3
    scale, offset = formats.compute_scales(w, fmt, gran, gs, True)
    p = formats.pack(w, fmt, scale, offset, gran, gs, True)
    return p, scale, formats.unpack(p, fmt, scale, k, offset, gran, gs, True, torch.float32)


def reference(x, w, bias=None):
    xq = formats.fake_quant(x.float(), "int8", "token", 0, True)
    return F.linear(xq, w, bias), F.linear(xq.abs(), w.abs(), None if bias is None else bias.abs())


def run(x, p, s, fmt, gs, k, bias=None, smooth=None):
    return OPS.linear_dynamic_int8(x, p, s, formats.FORMAT_INFO[fmt]["bits"], gs, k, bias, smooth)


@pytest.mark.parametrize("fmt,gran,gs", WEIGHTS)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_equals_reference_and_scalar_kernel_bit_for_bit(fmt, gran, gs, m, n, k):
    p, s, w = packed(n, k, fmt, gran, gs)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)) * 2
    bias = torch.randn(n, generator=torch.Generator().manual_seed(2))
    outs = {}
    for isa in ISAS:
        OPS.set_isa(isa)
        outs[isa] = run(x, p, s, fmt, gs, k, bias)
    want, mag = reference(x, w, bias)
    assert_close_to_reference(outs["scalar"], want, k, magnitude=mag)
    for isa, y in outs.items():
        assert torch.equal(y, outs["scalar"]), isa


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_activations_give_their_dtype(dtype):
    p, s, w = packed(24, 128, "int4", "group", 32)
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = run(x, p, s, "int4", 32, 128)
    assert y.dtype == dtype and y.shape == (4, 24)
    want, mag = reference(x, w)
    assert_close_to_reference(y, want.to(dtype), 128, magnitude=mag)


def test_smooth_factors_divide_the_input():
    p, s, w = packed(12, 64, "int8", "channel", 0)
    x, smooth = torch.randn(3, 64), torch.rand(64) + 0.5
    assert torch.equal(run(x, p, s, "int8", 0, 64, smooth=smooth), run(x / smooth, p, s, "int8", 0, 64))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_nan_rows_are_nan_and_inf_rows_match_the_scalar_kernel(fmt):
    p, s, w = packed(10, 96, fmt, "channel", 0)
    x = torch.randn(4, 96)
    x[1, 5] = float("nan")
    x[2, 7] = float("-inf")  # the scale is guarded to 1: codes -128 and 127 appear
    x[3, 9] = float("inf")
    outs = {}
    for isa in ISAS:
        OPS.set_isa(isa)
        outs[isa] = run(x, p, s, fmt, 0, 96)
    y = outs["scalar"]
    assert torch.isnan(y[1]).all() and not torch.isnan(y[[0, 2, 3]]).any()
    good = [0, 2, 3]
    want, mag = reference(x[good], w)
    assert_close_to_reference(y[good], want, 96, magnitude=mag)
    for isa, out in outs.items():
        assert torch.allclose(out, y, rtol=0, atol=0, equal_nan=True), isa


def test_argument_errors_name_the_argument():
    p, s, _ = packed(4, 64, "int4", "group", 32)
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="bits: 3; allowed: 8, 4"):
        OPS.linear_dynamic_int8(x, p, s, 3, 32, 64)
    with pytest.raises(ValueError, match="w_scale: 3 entries; expected 1 or 8"):
        OPS.linear_dynamic_int8(x, p, s.flatten()[:3], 4, 32, 64)
    p96, _, _ = packed(4, 96, "int4", "group", 32)  # (quantize only makes groups of multiples of 32)
    with pytest.raises(ValueError, match="group size 48; the 8-bit compute mode needs a multiple of 32"):
        OPS.linear_dynamic_int8(torch.randn(2, 96), p96, torch.ones(4, 2), 4, 48, 96)
    with pytest.raises(ValueError, match="last dimension 65"):
        OPS.linear_dynamic_int8(torch.randn(2, 65), p, s, 4, 32, 64)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.a = nn.Linear(8 * 6 * 6, 64)
        self.b = nn.Linear(64, 64)
        self.c = nn.Linear(64, 64)
        self.d = nn.Linear(64, 10)

    def forward(self, x):
        h = self.conv(x).flatten(1)
        return self.d(self.c(torch.relu(self.b(torch.relu(self.a(h))))))


def _net():
    torch.manual_seed(0)
    cfg = {"batch_num": 1, "quant_cfg": {
        "weights": {"type": "int4", "strategy": "group", "group_size": 32},
        "b.weights": {"type": "int8", "strategy": "channel"},
        "c.weights": {"type": "int8", "symmetric": False, "strategy": "channel"},
        "d.weights": {"type": "int8", "strategy": "channel"}, "d.inputs": {"type": "int8", "strategy": "tensor"}}}
    net = lowbit.quantize(Net(), cfg)
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        net(x)
    return net, x


def test_convert_takes_weight_only_linear_layers_and_says_why_not_the_others(caplog):
    net, x = _net()
    with caplog.at_level(logging.INFO, logger="lowbit"):
        lowbit.convert(net, compute="int8")
    assert [n for n, m in net.named_modules() if getattr(m, "compute_int8", False)] == ["a", "b"]
    r = lowbit.set_compute(net, "int8")
    assert r["int8"] == ["a", "b"]
    assert r["exact"] == {"conv": "a Conv2d (the 8-bit compute mode is for Linear layers)",
                          "c": "asymmetric weights (the 8-bit compute mode takes symmetric ones)",
                          "d": "its activations are quantized already (int8 x int8 (activation x weight))"}
    assert "'c' stays exact: asymmetric weights" in caplog.text
    # each taken layer computes the 8-bit reference on the input it receives
    seen = {}
    hooks = [getattr(net, n).register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, (a[0], out)))
             for n in ("a", "b")]
    net(x)
    for h in hooks:
        h.remove()
    for n in ("a", "b"):
        layer = getattr(net, n)
        want, mag = reference(seen[n][0], layer.weight_dequant().float(), layer.bias)
        assert_close_to_reference(seen[n][1], want, layer.cols, n, mag)
    exact = copy.deepcopy(net)
    assert lowbit.set_compute(exact, "exact")["int8"] == []
    assert not torch.equal(exact(x), net(x))  # the 8-bit activations change the output


def test_bad_compute_value_raises_before_anything_changes():
    net, _ = _net()
    before = [type(m).__name__ for m in net.modules()]
    for bad in ("int4", "INT8", 8, None):
        with pytest.raises(ValueError, match=r"compute: .* is not allowed; allowed: 'exact', 'int8'"):
            lowbit.convert(net, compute=bad)
    assert [type(m).__name__ for m in net.modules()] == before
    with pytest.raises(ValueError, match="holds no deploy layer"):
        lowbit.set_compute(nn.Linear(4, 4), "int8")


def test_traced_model_keeps_the_8bit_products(tmp_path):
    net, x = _net()
    lowbit.convert(net, compute="int8")
    exact = copy.deepcopy(net)
    lowbit.set_compute(exact, "exact")
    traced = torch.jit.trace(net, x)
    # one op call per layer; the 8-bit kernel is the layer's plan, a constant of the trace
    assert "lowbit::linear_deploy" in str(traced.inlined_graph)
    assert torch.equal(traced(x), net(x)) and not torch.equal(traced(x), exact(x))


def test_stories260k_perplexity_cost_is_small(shared_data):
    from lowbit.eval import lm
    model, tok = lm.load_stories260k()
    cal = lm.token_batches(tok, lm.CALIB_RANGE, limit=16)
    ev = lm.token_batches(tok, lm.EVAL_RANGE, limit=20)
    cfg = lowbit.GGUF_Q4_0_GPTQ_CFG
    cfg["batch_num"] = len(cal)
    cfg["skip_layers"] = {"output"}
    lowbit.quantize(model, cfg)
    lm.calibrate(model, cal)
    lowbit.convert(model)
    exact = lm.perplexity(model, ev)
    assert len(lowbit.set_compute(model, "int8")["int8"]) == 35
    fast = lm.perplexity(model, ev)
    assert fast != exact and abs(fast / exact - 1) < 0.005, (exact, fast)
