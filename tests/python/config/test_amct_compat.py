"""AMCT behaviours that a ported script relies on (issue: AMCT drop-in), written from
AMCT's documented behaviour (shared/seed/quantize_api_reference.md, shared/spec/api.md),
and target="ascend"'s layer filters, table-driven."""
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

import lowbit
from conftest import A, W, assert_deploy_layers_match
from lowbit import _C, capabilities
from lowbit.formats import FORMAT_INFO

ROOT = pathlib.Path(__file__).resolve().parents[3]


def mlp(k=64, hidden=64, out=32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(k, hidden), nn.ReLU(), nn.Linear(hidden, out))


def run_calibration(model, cfg, k=64):
    torch.manual_seed(1)
    for _ in range(cfg.get("batch_num", 1)):
        model(torch.randn(8, k))


# ---- 1. src_op by name ----------------------------------------------------------------

def test_algorithm_register_takes_the_layer_class_name():
    from lowbit.modules import CalibLinear, DeployLinear

    class Marked(CalibLinear):
        pass

    lowbit.algorithm_register("by_name", "Linear", Marked, DeployLinear)
    lowbit.algorithm_register("by_qualified_name", "torch.nn.Linear", Marked, DeployLinear)
    for name in ("by_name", "by_qualified_name"):
        model = mlp()
        lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}}, "algorithm": {name}})
        assert isinstance(model[0], Marked) and isinstance(model[2], Marked)
        assert [r.algorithm for r in lowbit.summary(model)] == [name, name]
    with pytest.raises(ValueError, match=r"src_op 'Conv1d' is not allowed; allowed names: Linear, Conv2d"):
        lowbit.algorithm_register("bad", "Conv1d", Marked, DeployLinear)


# ---- 2. an AMCT-style custom algorithm: plain nn.Module quant and deploy ops ------------

class RoundToGridQuant(nn.Module):
    """AMCT's custom-algorithm sample shape: a plain nn.Module built from the original
    layer, its name and its config; per-channel symmetric int8 weights computed here."""

    def __init__(self, ori_module, layer_name, layer_cfg):
        super().__init__()
        self.layer_name = layer_name
        self.bits = layer_cfg["params"].get("bits", 8)
        self.register_buffer("weight", ori_module.weight.detach().clone())
        self.bias = ori_module.bias
        self.calls = 0

    def qdq_weight(self):
        qmax = 2 ** (self.bits - 1) - 1
        scale = self.weight.abs().amax(1, keepdim=True).clamp_min(1e-12) / qmax
        return torch.clamp(torch.round(self.weight / scale), -qmax, qmax) * scale

    def forward(self, x):
        self.calls += 1
        return nn.functional.linear(x, self.qdq_weight(), self.bias)


class RoundToGridDeploy(nn.Module):
    def __init__(self, quant_module):
        super().__init__()
        self.register_buffer("weight", quant_module.qdq_weight())
        self.bias = quant_module.bias
        self.source = quant_module.layer_name

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def test_custom_algorithm_end_to_end_register_by_name_quantize_calibrate_convert_forward():
    lowbit.algorithm_register("round_grid", "Linear", RoundToGridQuant, RoundToGridDeploy)
    model = mlp()
    x = torch.randn(4, 64)
    float_out = model(x)
    # hifloat8 x int8 is no built-in combination: a custom algorithm is not held to the table
    cfg = {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "hifloat8"}},
           "algorithm": {"round_grid": {"bits": 6}}}
    lowbit.quantize(model, cfg)
    assert isinstance(model[0], RoundToGridQuant) and model[0].bits == 6 and model[0].layer_name == "0"
    assert {r.name: r.status for r in lowbit.summary(model)} == {"0": "custom", "2": "custom"}
    quant_out = model(x)  # the user's own calibration loop
    assert model[0].calls == 1
    assert 0 < float((quant_out - float_out).abs().max()) < 0.1
    lowbit.convert(model)
    assert isinstance(model[0], RoundToGridDeploy) and isinstance(model[2], RoundToGridDeploy)
    assert model[2].source == "2"
    assert torch.equal(model(x), quant_out)
    with pytest.raises(ValueError, match=r"convert: the model holds no calibration module"):
        lowbit.convert(model)


def test_custom_plain_module_without_deploy_op_is_a_loud_error_at_convert():
    lowbit.algorithm_register("round_grid_nodeploy", nn.Linear, RoundToGridQuant)
    model = mlp()
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}}, "algorithm": "round_grid_nodeploy"})
    with pytest.raises(ValueError, match=r"algorithm 'round_grid_nodeploy' registered no deploy_op for layer '0'"):
        lowbit.convert(model)
    assert isinstance(model[0], RoundToGridQuant)  # untouched


# ---- 3. MIN-MAX for int8 x int4 ---------------------------------------------------------

def test_minmax_is_legal_for_int8_activations_and_int4_weights():
    cfg = {"batch_num": 2, "quant_cfg": {"weights": {"type": "int4"}, "inputs": {"type": "int8"}},
           "algorithm": {"minmax"}}
    lowbit.validate_config(cfg)
    model = mlp()
    lowbit.quantize(model, cfg)
    run_calibration(model, cfg)
    lowbit.convert(model)
    assert model[0].integer_kernel and model[0].wspec.fmt == "int4" and model[0].aspec.fmt == "int8"
    assert assert_deploy_layers_match(model, torch.randn(5, 64)) == 2
    conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    lowbit.quantize(conv, cfg)
    for _ in range(2):
        conv(torch.randn(2, 8, 6, 6))
    lowbit.convert(conv)
    assert conv[0].integer_kernel
    assert assert_deploy_layers_match(conv, torch.randn(2, 8, 6, 6)) == 1


# ---- 4. inputs.dynamic -----------------------------------------------------------------

@pytest.mark.parametrize("inputs, strategy", [
    ({"type": "int8", "dynamic": True}, "token"),
    ({"type": "int8", "dynamic": True, "strategy": "token"}, "token"),
    ({"type": "int8", "dynamic": False}, "tensor"),
    ({"type": "hifloat8", "dynamic": True}, "token"),
])
def test_inputs_dynamic_selects_per_token_activations(inputs, strategy):
    cfg = {"quant_cfg": {"weights": {"type": inputs["type"]}, "inputs": inputs}}
    assert lowbit.validate_config(cfg)["inputs"]["strategy"] == strategy


@pytest.mark.parametrize("inputs, exc, pattern", [
    ({"type": "int8", "dynamic": True, "strategy": "tensor"}, ValueError,
     r"quant_cfg.inputs.dynamic: True needs strategy 'token' \(got 'tensor'\)"),
    ({"type": "int8", "dynamic": False, "strategy": "token"}, ValueError,
     r"quant_cfg.inputs.dynamic: False contradicts strategy 'token'"),
    ({"type": "int8", "dynamic": "yes"}, TypeError, r"quant_cfg.inputs.dynamic: expected True or False, got str 'yes'"),
    ({"type": "mxfp8_e4m3fn", "dynamic": True}, ValueError, r"quant_cfg.inputs.dynamic: not allowed for mxfp8_e4m3fn"),
])
def test_inputs_dynamic_errors(inputs, exc, pattern):
    w = {"type": "mxfp8_e4m3fn"} if inputs["type"].startswith("mx") else {"type": "int8"}
    with pytest.raises(exc, match=pattern):
        lowbit.validate_config({"quant_cfg": {"weights": w, "inputs": inputs}})


def test_dynamic_int8_model_runs_per_token():
    model = mlp()
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8", "dynamic": True}}})
    assert model[0].aspec.strategy == "token"
    lowbit.convert(model)
    assert assert_deploy_layers_match(model, torch.randn(3, 64)) == 2


# ---- 5. per-layer entries only ---------------------------------------------------------

def test_quant_cfg_with_only_per_layer_entries_quantizes_just_those_layers():
    model = mlp()
    cfg = {"quant_cfg": {"2.weights": {"type": "int4", "strategy": "group", "group_size": 32}}}
    norm = lowbit.validate_config(cfg)
    assert norm["weights"] is None and norm["overrides"][0]["glob"] == "2"
    lowbit.quantize(model, cfg)
    rows = {r.name: r for r in lowbit.summary(model)}
    assert rows["2"].status == "calibrated" and rows["2"].weights == "int4/group32"
    assert rows["0"].status == "skipped" and "no '<glob>.weights' entry of quant_cfg matches" in rows["0"].reason
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], lowbit.modules.CalibLinear)


def test_per_layer_inputs_alone_is_not_enough():
    with pytest.raises(ValueError, match=r"quant_cfg.weights: missing; give 'weights' or at least one '<glob>.weights'"):
        lowbit.validate_config({"quant_cfg": {"0.inputs": {"type": "int8"}}})
    with pytest.raises(ValueError, match=r"quant_cfg: missing"):
        lowbit.validate_config({})


# ---- 6. global enable_quant False ------------------------------------------------------

def test_global_inputs_enable_quant_false_means_weight_only():
    cfg = {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"enable_quant": False}}}
    assert lowbit.validate_config(cfg)["inputs"] is None
    model = mlp()
    lowbit.quantize(model, cfg)
    assert model[0].aspec is None
    with pytest.raises(ValueError, match=r"quant_cfg.inputs.enable_quant: only False is meaningful"):
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"enable_quant": True}}})


# ---- 7. type errors are ValueErrors too ------------------------------------------------

@pytest.mark.parametrize("cfg, pattern", [
    ({"batch_num": 1.2, "quant_cfg": {"weights": {"type": "int8"}}}, r"batch_num: expected an int, got float 1.2"),
    ({"quant_cfg": {"weights": {"type": "int8", "symmetric": "true"}}},
     r"quant_cfg.weights.symmetric: expected True or False, got str 'true'"),
    ({"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 2.2}}},
     r"quant_cfg.weights.group_size: expected an int, got float 2.2"),
])
def test_wrong_value_types_are_both_value_and_type_errors(cfg, pattern):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for catch in (ValueError, TypeError, lowbit.ConfigError, lowbit.ConfigTypeError):
        with pytest.raises(catch, match=pattern):
            lowbit.quantize(model, cfg)
    assert isinstance(model[0], nn.Linear) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert issubclass(lowbit.ConfigTypeError, lowbit.ConfigError) and issubclass(lowbit.ConfigError, ValueError)


def test_bad_values_are_config_errors_but_not_type_errors():
    with pytest.raises(lowbit.ConfigError) as info:
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "int5"}}})
    assert not isinstance(info.value, TypeError)


# ---- 8. group without group_size -------------------------------------------------------

@pytest.mark.parametrize("fmt, size", [("int8", 128), ("int4", 128), ("float4_e2m1", 32), ("float4_e1m2", 32),
                                       ("mxfp4_e2m1", 32), ("mxfp8_e4m3fn", 32)])
def test_group_without_group_size_uses_the_documented_default(fmt, size):
    w = lowbit.validate_config({"quant_cfg": {"weights": {"type": fmt, "strategy": "group"}}})["weights"]
    assert (w["strategy"], w["group_size"]) == ("group", size)
    readme = (ROOT / "README.md").read_text()
    assert "**`group` without `group_size`** means 128 for int8/int4\nand 32 for the FP4 and MX formats" in readme


# ---- target="ascend": every AMCT/Ascend layer filter ----------------------------------

def lin(k, n, dtype, bias=True):
    return nn.Linear(k, n, bias=bias).to(dtype)


def conv(padding_mode="zeros", dtype=torch.float32):
    return nn.Conv2d(16, 32, 3, padding=1, padding_mode=padding_mode).to(dtype)


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
ASCEND_CASES = [
    # (layer, weights, inputs, algorithm, expected skip reason or None)
    (lin(128, 64, F16), W("int8"), None, "minmax", None),
    (lin(128, 64, F32), W("int8"), None, "minmax", "ascend: int8 weight-only needs a float16/bfloat16 layer (layer is float32)"),
    (lin(128, 48, F16), W("int8"), None, "minmax", "ascend: int8 weight-only needs N a multiple of 32 (N=48)"),
    (lin(70016, 32, F16), W("int8"), None, "minmax", "ascend: int8 weight-only needs K, N <= 65535 (K=70016, N=32)"),
    (lin(128, 64, F32), W("int4"), None, "minmax", None),
    (lin(96, 64, F16), W("int4"), None, "minmax", "ascend: int4 weight-only needs K a multiple of 64 (K=96)"),
    (lin(128, 64, F16), W("int4", "group", 128), None, "minmax", "ascend: group_size must be below K (group_size 128, K=128)"),
    (lin(256, 64, F16), W("int4", "group", 128), None, "minmax", None),
    (lin(96, 64, BF16), W("float4_e2m1", "group", 32), None, "minmax",
     "ascend: float4_e2m1 weight-only needs K a multiple of 64 (K=96)"),
    (lin(128, 96, BF16), W("mxfp4_e2m1"), None, "minmax", "ascend: mxfp4_e2m1 weight-only needs N a multiple of 64 (N=96)"),
    (lin(128, 64, BF16), W("mxfp8_e4m3fn"), None, "minmax", "ascend: no kernel for mxfp8_e4m3fn weight-only"),
    (lin(128, 64, F16), W("hifloat8"), None, "minmax", None),
    # the 65535 limit is the weight-only kernels' only
    (lin(70016, 32, F16), W("int8"), A("int8"), "minmax", None),
    (lin(128, 64, F32), W("int8"), A("int8"), "minmax", "ascend: int8 x int8 needs a float16/bfloat16 layer (layer is float32)"),
    (lin(40, 16, F16), W("int8"), A("int8", "token"), "minmax",
     "ascend: int8 x int8 with per-token activations needs K a multiple of 16 (K=40)"),
    (lin(48, 12, F16), W("int8"), A("int8", "token"), "minmax",
     "ascend: int8 x int8 with per-token activations needs N a multiple of 8 (N=12)"),
    (lin(48, 16, F16), W("int8"), A("int8", "token"), "minmax", None),
    (lin(64, 64, F16), W("int4"), A("int8"), "minmax", None),
    (lin(64, 64, BF16), W("int4"), A("int8"), "minmax", "ascend: int8 x int4 needs a float16 layer (layer is bfloat16)"),
    (lin(68, 64, F16), W("int4"), A("int8"), "minmax", "ascend: int8 x int4 needs K a multiple of 8 (K=68)"),
    (lin(128, 64, BF16, bias=False), W("float4_e2m1", "group", 32), A("float8_e4m3fn"), "minmax", None),
    (lin(128, 64, BF16), W("float4_e2m1", "group", 32), A("float8_e4m3fn"), "minmax",
     "ascend: float8_e4m3fn x float4_e2m1 needs a layer without bias"),
    (lin(96, 64, BF16, bias=False), W("float4_e2m1", "group", 32), A("float8_e4m3fn"), "minmax",
     "ascend: float8_e4m3fn x float4_e2m1 needs K a multiple of 64 (K=96)"),
    (lin(64, 32, BF16), W("mxfp8_e4m3fn"), A("mxfp8_e4m3fn", "group"), "mxquant", None),
    (lin(96, 32, BF16), W("mxfp8_e4m3fn"), A("mxfp8_e4m3fn", "group"), "mxquant",
     "ascend: mxfp8_e4m3fn x mxfp8_e4m3fn needs an even ceil(K/32) (K=96)"),
    (lin(64, 32, F16), W("mxfp8_e4m3fn"), A("mxfp8_e4m3fn", "group"), "mxquant",
     "ascend: mxfp8_e4m3fn x mxfp8_e4m3fn needs a bfloat16 layer (layer is float16)"),
    (lin(96, 32, BF16), W("mxfp4_e2m1"), A("mxfp8_e4m3fn", "group"), "mxquant",
     "ascend: mxfp8_e4m3fn x mxfp4_e2m1 needs K a multiple of 64 (K=96)"),
    (lin(100, 30, F32), W("hifloat8"), A("hifloat8"), "ofmr", None),
    (conv(), W("hifloat8"), A("hifloat8"), "ofmr", None),
    (conv(dtype=BF16), W("float8_e4m3fn"), A("float8_e4m3fn"), "ofmr", None),
    (conv("reflect"), W("hifloat8"), A("hifloat8"), "ofmr",
     "ascend: nn.Conv2d needs padding_mode 'zeros' (layer has 'reflect')"),
    (conv(), W("hifloat8"), A("hifloat8"), "minmax",
     "ascend: nn.Conv2d hifloat8 x hifloat8 needs algorithm ofmr (got 'minmax')"),
    (conv(dtype=F16), W("int8"), None, "minmax", "ascend: nn.Conv2d is not supported for int8 weight-only"),
    (conv(dtype=F16), W("int8"), A("int8"), "minmax",
     "ascend: nn.Conv2d is not supported for int8 x int8"),
]


@pytest.mark.parametrize("case", range(len(ASCEND_CASES)))
def test_ascend_layer_filters(case):
    layer, w, inputs, algorithm, reason = ASCEND_CASES[case]
    cfg = {"quant_cfg": {"weights": w, **({"inputs": inputs} if inputs else {})}, "algorithm": {algorithm}}
    model = nn.Sequential(layer)
    if reason is None:
        lowbit.quantize(model, cfg, target="ascend")
        assert lowbit.summary(model)[0].status.startswith("calibrat"), lowbit.summary(model)[0]
    else:  # the only layer skipped: quantize says why, and the model is untouched
        with pytest.raises(ValueError) as info:
            lowbit.quantize(model, cfg, target="ascend")
        assert str(info.value) == f"quantize: no layer would be quantized ({reason})"
        assert type(model[0]) in (nn.Linear, nn.Conv2d)
    # the generic target quantizes every one of them
    generic = nn.Sequential(layer)
    lowbit.quantize(generic, cfg)
    assert lowbit.summary(generic)[0].status.startswith("calibrat")


# ---- one table -------------------------------------------------------------------------

def test_the_validator_and_the_table_agree_on_every_combination():
    """Every (inputs, weights, algorithm) the table lists validates, and every one it
    does not list is refused: the validator reads nothing else."""
    rows = capabilities.rows()
    listed = {(r["inputs"], r["weights"]): r for r in rows}
    # every activation and weight type of the format table, every built-in algorithm
    acts = [None] + [f for f, row in FORMAT_INFO.items() if row["as_input"]]
    weights = [f for f, row in FORMAT_INFO.items() if row["as_weight"]]
    algorithms = [a["name"] for a in _C.algorithm_table()]
    assert acts == [None, "int8", "hifloat8", "float8_e4m3fn", "mxfp8_e4m3fn"]
    assert weights[:8] == ["int8", "int4", "hifloat8", "float8_e4m3fn", "mxfp8_e4m3fn", "mxfp4_e2m1", "float4_e2m1",
                           "float4_e1m2"]
    assert set(algorithms) >= {"minmax", "gptq", "awq", "smoothquant", "ofmr", "mxquant", "cast", "quantile"}
    checked = 0
    for a in acts:
        for w in weights:
            qc = {"weights": {"type": w}}
            if a:
                qc["inputs"] = {"type": a}
            for alg in algorithms:
                row = listed.get((a, w))
                legal = row is not None and alg in row["algorithms"]
                try:
                    lowbit.validate_config({"quant_cfg": qc, "algorithm": alg})
                    ok = True
                except ValueError:
                    ok = False
                assert ok == legal, (a, w, alg)
                checked += 1
    assert checked == len(acts) * len(weights) * len(algorithms)
    assert all(r["inputs"] in acts and r["weights"] in weights for r in rows)  # every row was checked


def test_readme_capability_table_is_generated_from_the_table():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "capability_table.py"), "--check"],
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "python")})
    assert r.returncode == 0, r.stderr
    readme = (ROOT / "README.md").read_text()
    assert capabilities.readme_block() in readme
    assert "| int8 x int4 (symmetric weights) | minmax, smoothquant |" in readme


def test_differences_from_amct_are_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Differences from AMCT, on purpose:"):]
    for item in ("Unknown keys raise", "A config that quantizes no layer raises", "An empty string in `skip_layers`"):
        assert item in section
