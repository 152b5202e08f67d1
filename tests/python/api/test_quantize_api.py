"""quantize -> calibrate -> convert on small models, for every legal combination."""
import copy
import logging

import pytest
import torch
from torch import nn

import lowbit
from conftest import A, W, assert_close_to_reference, assert_deploy_layers_match
from lowbit.modules import CalibConv2d, CalibLinear, DeployConv2d, DeployLinear


# (weights, inputs, algorithm, SQNR floor in dB against the float model on Gaussian data).
# Floors sit a few dB under what each format's precision gives on this 2-layer MLP:
# 8-bit integer ~6 dB/bit (W8A8 ~30 dB), 8-bit floats keep 3-4 mantissa bits (~25 dB),
# 4-bit formats ~1.5 mantissa bits (~13-15 dB, both layers' errors add up).
COMBOS = [
    (W("int8", "tensor"), None, "minmax", 30), (W("int8", "channel"), None, "minmax", 30),
    (W("int8", "group", 32, False), None, "minmax", 30), (W("int4", "channel"), None, "minmax", 12),
    (W("int4", "group", 32), None, "minmax", 13), (W("int4", "group", 64, False), None, "minmax", 13),
    (W("hifloat8", "tensor"), None, "minmax", 22), (W("hifloat8", "channel"), None, "cast", 22),
    (W("hifloat8", "channel"), None, "quantile", 22), (W("float8_e4m3fn", "channel"), None, "minmax", 22),
    (W("float4_e2m1", "group", 32), None, "minmax", 12), (W("float4_e1m2", "group", 64), None, "minmax", 12),
    (W("mxfp4_e2m1"), None, "minmax", 11), (W("mxfp4_e2m1"), None, "mxquant", 11), (W("mxfp8_e4m3fn"), None, "mxquant", 20),
    (W("int8", "channel"), A("int8", "tensor"), "minmax", 25), (W("int8", "tensor"), A("int8", "tensor", False), "minmax", 25),
    (W("int8", "channel"), A("int8", "token"), "minmax", 25),
    (W("hifloat8", "tensor"), A("hifloat8", "tensor"), "minmax", 20),
    (W("hifloat8", "channel"), A("hifloat8", "tensor"), "cast", 18),
    (W("hifloat8", "tensor"), A("hifloat8", "tensor"), "quantile", 20),
    (W("hifloat8", "channel"), A("hifloat8", "token"), "minmax", 20),
    (W("float8_e4m3fn", "tensor"), A("float8_e4m3fn", "tensor"), "minmax", 20),
    (W("float8_e4m3fn", "channel"), A("float8_e4m3fn", "token"), "minmax", 20),
    (W("mxfp8_e4m3fn"), A("mxfp8_e4m3fn", "group"), "mxquant", 18),
    (W("mxfp4_e2m1"), A("mxfp8_e4m3fn", "group"), "mxquant", 10),
    (W("float4_e2m1", "group", 32), A("float8_e4m3fn", "tensor"), "minmax", 11),
]


def combo_id(c):
    w, a, alg, _ = c
    return f"{w['type']}-{w.get('strategy', 'd')}{'' if w['symmetric'] else '-asym'}" + \
        (f"_x_{a['type']}-{a['strategy']}{'' if a['symmetric'] else '-asym'}" if a else "") + f"_{alg}"


def config(w, a, alg, batch_num=2):
    qc = {"weights": w}
    if a:
        qc["inputs"] = a
    return {"batch_num": batch_num, "quant_cfg": qc, "algorithm": {alg}}


class ReLU32(nn.Module):
    """ReLU computed in float32 (torch 1.13 has no float16 ReLU on CPU)."""
    def forward(self, x):
        return torch.relu(x.float()).to(x.dtype)


def mlp(dtype=torch.float32, k=96):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(k, 64), ReLU32(), nn.Linear(64, 33, bias=False)).to(dtype)


def float_reference(model, x):
    """Float output; float16 runs in float32 (torch has no float16 matmul on CPU)."""
    if x.dtype == torch.float16:
        return copy.deepcopy(model).float()(x.float())
    return model(x).float()


def sqnr(ref, x):
    return float(10 * torch.log10(ref.double().pow(2).sum() / (ref.double() - x.double()).pow(2).sum()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_every_legal_linear_combination(combo, dtype):
    w, a, alg, floor = combo
    model = mlp(dtype)
    torch.manual_seed(1)
    batches = [torch.randn(4, 7, 96).to(dtype) for _ in range(3)]
    ref = float_reference(model, batches[2])
    lowbit.quantize(model, config(w, a, alg))
    assert all(isinstance(m, CalibLinear) for m in (model[0], model[2]))
    out1 = model(batches[0])
    assert out1.dtype == dtype
    if model[0].needs_calibration:  # float output while calibrating
        if dtype == torch.float16:  # the reference runs wholly in float32, the model rounds between layers
            assert torch.allclose(out1.float(), float_reference(mlp(dtype), batches[0]), rtol=1e-2, atol=2e-3)
        else:
            assert torch.equal(out1, mlp(dtype)(batches[0]))
    model(batches[1])
    fq = model(batches[2])
    assert fq.dtype == dtype and fq.shape == (4, 7, 33)
    assert sqnr(ref, fq) > floor - (3 if dtype != torch.float32 else 0), sqnr(ref, fq)
    lowbit.convert(model)
    assert all(isinstance(m, DeployLinear) for m in (model[0], model[2]))
    assert model[0].weight_packed.dtype == torch.uint8
    assert assert_deploy_layers_match(model, batches[2]) == 2  # each layer == its fake-quant reference
    assert sqnr(fq, model(batches[2])) > 40  # and the model as a whole


def test_calibration_float_until_batch_num_then_quantized():
    model = mlp()
    x = torch.randn(5, 96)
    ref = model(x)
    lowbit.quantize(model, config(W("int8"), A("int8"), "minmax", batch_num=3))
    for i in range(3):
        assert torch.equal(model(x), ref), f"call {i + 1} should be float"
        assert int(model[0].calib_calls) == i + 1
    assert not torch.equal(model(x), ref)
    assert int(model[0].calib_calls) == 3  # counting stops once calibrated


def test_weight_only_is_fake_quantized_from_the_first_call():
    model = mlp()
    x = torch.randn(5, 96)
    ref = model(x)
    lowbit.quantize(model)  # default: INT8_MINMAX_WEIGHT_QUANT_CFG
    y = model(x)
    assert not torch.equal(y, ref) and sqnr(ref, y) > 30
    lowbit.convert(model)  # batch_num was never reached: weight-only needs no calibration


@pytest.mark.parametrize("rank", [2, 3, 4, 5, 6])
def test_input_ranks(rank):
    model = mlp()
    x = torch.randn(*([2] * (rank - 1)), 96)
    lowbit.quantize(model, config(W("int8"), A("int8", "token"), "minmax"))
    y = model(x)
    lowbit.convert(model)
    assert y.shape == x.shape[:-1] + (33,) and model(x).shape == y.shape
    assert assert_deploy_layers_match(model, x) == 2


CONV_COMBOS = [
    (W("hifloat8", "tensor"), A("hifloat8"), "minmax", 18), (W("hifloat8", "channel"), A("hifloat8"), "minmax", 18),
    (W("float8_e4m3fn", "channel"), A("float8_e4m3fn"), "minmax", 18), (W("int8", "channel"), A("int8"), "minmax", 25),
    (W("int4", "group", 32), None, "minmax", 10), (W("int8", "channel", symmetric=False), None, "minmax", 30),
    (W("hifloat8", "channel"), None, "minmax", 20), (W("float4_e2m1", "group", 32), None, "minmax", 10),
    (W("mxfp4_e2m1"), None, "minmax", 10),
]


class SmallCNN(nn.Module):
    def __init__(self, padding_mode="reflect"):  # torch 1.13 has no bfloat16 reflection pad on CPU
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.c2 = nn.Conv2d(16, 8, 3, stride=2, padding=1, padding_mode=padding_mode)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.dw(x))
        return self.fc(torch.relu(self.c2(x)).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("combo", CONV_COMBOS, ids=combo_id)
def test_conv2d_combinations(combo, dtype):
    w, a, alg, floor = combo
    torch.manual_seed(0)
    model = SmallCNN("reflect" if dtype == torch.float32 else "zeros").to(dtype)
    xs = [torch.randn(2, 3, 16, 16).to(dtype) for _ in range(3)]
    ref = float_reference(model, xs[2])
    lowbit.quantize(model, config(w, a, alg))
    assert isinstance(model.c1, CalibConv2d) and isinstance(model.dw, CalibConv2d)
    model(xs[0]), model(xs[1])
    fq = model(xs[2])
    assert sqnr(ref, fq) > floor - (4 if dtype != torch.float32 else 0)
    lowbit.convert(model)
    assert isinstance(model.c2, DeployConv2d)
    assert assert_deploy_layers_match(model, xs[2]) >= 3
    assert sqnr(fq, model(xs[2])) > 35


def test_root_module_that_is_a_linear():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    x = torch.randn(3, 64)
    ref = lin(x)
    same = lowbit.quantize(lin, config(W("int4", "group", 32), None, "minmax"))
    assert same is lin and isinstance(lin, CalibLinear)
    y = lin(x)
    lowbit.convert(lin)
    assert isinstance(lin, DeployLinear) and sqnr(ref, y) > 12
    assert_close_to_reference(lin(x), y, 64)


class MyLinear(nn.Linear):
    pass


def test_subclasses_are_quantized_and_names_kept():
    model = nn.Sequential()
    model.add_module("proj", MyLinear(32, 32))
    model.add_module("head", nn.Linear(32, 4))
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}}})
    assert isinstance(model.proj, CalibLinear) and model.proj.layer_name == "proj"


def test_state_dict_mid_calibration_restores_and_continues():
    xs = [torch.randn(6, 96) * (i + 1) for i in range(4)]
    cfg = config(W("int8"), A("int8"), "minmax", batch_num=4)
    a = lowbit.quantize(mlp(), cfg)
    a(xs[0]), a(xs[1])
    sd = copy.deepcopy(a.state_dict())
    assert int(sd["0.calib_calls"]) == 2 and "0.act_max" in sd
    b = lowbit.quantize(mlp(), cfg)
    b.load_state_dict(sd)
    for m in (a, b):
        m(xs[2]), m(xs[3])
    assert torch.equal(a[0].act_scale, b[0].act_scale)
    assert torch.equal(a(xs[0]), b(xs[0]))


def test_convert_before_calibration_names_the_layer_and_changes_nothing():
    model = lowbit.quantize(mlp(), config(W("int8"), A("int8"), "minmax", batch_num=3))
    model(torch.randn(2, 96))
    with pytest.raises(ValueError, match=r"convert: calibration is not finished for 2 layer\(s\): '0' \(1 of 3 batches\)"):
        lowbit.convert(model)
    assert isinstance(model[0], CalibLinear)


def test_errors_leave_the_model_untouched():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    bad = [({"quant_cfg": {"weights": {"type": "int8", "strategy": "group", "group_size": 40}}}, ValueError),
           ({"quant_cfg": {"weights": {"type": "int8"}}, "skip_layers": {""}}, ValueError),
           ({"quant_cfg": {"weights": {"type": "int8"}, "2.inputs": {"type": "hifloat8"}}}, ValueError),
           ({"quant_cfg": {"weights": {"type": "int4"}}, "algorithm": {"ofmr"}}, ValueError),
           ("INT8", TypeError)]
    for cfg, exc in bad:
        with pytest.raises(exc):
            lowbit.quantize(model, cfg)
        assert [type(m) for m in model.modules()] == types
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match=r"model: expected a torch.nn.Module, got dict"):
        lowbit.quantize({}, None)
    with pytest.raises(ValueError, match=r"target: 'npu' is not allowed; allowed: generic, ascend"):
        lowbit.quantize(model, None, target="npu")


def test_nan_weights_and_activations_are_errors_naming_the_layer():
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer '2': weight contains NaN or Inf"):
        lowbit.quantize(model)
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], CalibLinear)
    model = lowbit.quantize(mlp(), config(W("int8"), A("int8"), "minmax", batch_num=3))
    model(torch.randn(2, 96))
    x = torch.randn(2, 96)
    x[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"layer '0', calibration batch 2: activations contain NaN or Inf"):
        model(x)


def test_skip_layers_substring_globs_first_match_and_summary(caplog):
    model = nn.Sequential()
    for name in ("layers_0_attn", "layers_0_mlp", "layers_1_attn", "lm_head"):
        model.add_module(name, nn.Linear(64, 64))
    cfg = {"quant_cfg": {"weights": {"type": "int8"},
                         "layers_0_*.weights": {"type": "int4", "strategy": "group", "group_size": 32},
                         "*attn.weights": {"type": "hifloat8", "strategy": "channel"}},
           "skip_layers": {"head"}}
    with caplog.at_level(logging.INFO, logger="lowbit"):
        lowbit.quantize(model, cfg)
    assert "lowbit.quantize: 3 layers quantized, 1 skipped" in caplog.text
    assert model.layers_0_attn.wspec.fmt == "int4"       # first matching glob wins
    assert model.layers_1_attn.wspec.fmt == "hifloat8"
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, CalibLinear)
    rows = {r.name: r for r in lowbit.summary(model)}
    assert rows["lm_head"].status == "skipped" and rows["lm_head"].reason == "skip_layers: 'head'"
    assert rows["layers_0_mlp"].weights == "int4/group32" and rows["layers_0_mlp"].status == "calibrated"
    assert "skip_layers: 'head'" in str(lowbit.summary(model))


def test_zero_layers_quantized_is_an_error_that_says_why():
    with pytest.raises(ValueError, match=r"no layer would be quantized \(skip_layers: '0'\)"):
        lowbit.quantize(nn.Sequential(nn.Linear(4, 4)), {"quant_cfg": {"weights": {"type": "int8"}}, "skip_layers": ["0"]})
    with pytest.raises(ValueError, match=r"the model has no nn.Linear or nn.Conv2d layer"):
        lowbit.quantize(nn.ReLU(), None)
    # an algorithm that handles only Linear, on a CNN of Conv2d layers
    with pytest.raises(ValueError, match=r"no configured algorithm handles nn.Conv2d \(mxquant\)"):
        lowbit.quantize(nn.Sequential(nn.Conv2d(3, 3, 1)), lowbit.MXFP8_QUANT_CFG)


def test_conv_layers_outside_the_supported_rows_are_skipped_with_a_reason():
    model = SmallCNN()
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8", "strategy": "token"}}})
    rows = {r.name: r for r in lowbit.summary(model)}
    assert rows["c1"].status == "skipped" and "per tensor, not int8 per token" in rows["c1"].reason
    assert rows["fc"].status == "calibrated"


def test_ascend_target_applies_its_limits():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64).bfloat16())
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}}}, target="ascend")
    rows = {r.name: r for r in lowbit.summary(model)}
    assert rows["0"].status == "skipped" and "float16/bfloat16" in rows["0"].reason
    assert rows["1"].status == "calibrated"
    m2 = nn.Sequential(nn.Linear(128, 8).bfloat16())
    with pytest.raises(ValueError, match=r"float8_e4m3fn x float4_e2m1 needs a layer without bias"):
        lowbit.quantize(m2, config(W("float4_e2m1", "group", 32), A("float8_e4m3fn"), "minmax"), target="ascend")
    lowbit.quantize(m2, config(W("float4_e2m1", "group", 32), A("float8_e4m3fn"), "minmax"))  # generic: fine


def test_algorithm_register_custom_modules():
    class HalfScaleLinear(CalibLinear):
        """A toy algorithm: minmax weights, output halved (to see it ran)."""
        def forward(self, x):
            return super().forward(x) * 0.5

    lowbit.algorithm_register("halfscale", nn.Linear, HalfScaleLinear, DeployLinear)
    model = mlp()
    x = torch.randn(3, 96)
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}}, "algorithm": {"halfscale": {"k": 1}}})
    assert isinstance(model[0], HalfScaleLinear) and model[0].layer_cfg["params"] == {"k": 1}
    assert model(x).shape == (3, 33)
    lowbit.convert(model)
    assert isinstance(model[0], DeployLinear)
    with pytest.raises(ValueError, match=r"'gptq' is a built-in algorithm"):
        lowbit.algorithm_register("gptq", nn.Linear, HalfScaleLinear)
    with pytest.raises(TypeError, match=r"src_op must be an nn.Module class or one of the names Linear, Conv2d"):
        lowbit.algorithm_register("x", 3, HalfScaleLinear)
    with pytest.raises(ValueError, match=r"src_op 'Dense' is not allowed; allowed names: Linear, Conv2d"):
        lowbit.algorithm_register("x", "Dense", HalfScaleLinear)
