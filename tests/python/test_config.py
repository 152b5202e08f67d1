"""Config validation (C++ rules through lowbit._C) and the built-in configs."""
import pytest

import lowbit


def base(**quant_cfg):
    return {"quant_cfg": {"weights": {"type": "int8"}, **quant_cfg}}


def test_builtin_configs_parse_and_are_fresh_copies():
    assert len(lowbit.BUILTIN_CONFIG_NAMES) == 14
    for name in lowbit.BUILTIN_CONFIG_NAMES:
        lowbit.validate_config(getattr(lowbit, name))
    a = lowbit.INT8_MINMAX_WEIGHT_QUANT_CFG
    a["quant_cfg"]["weights"]["type"] = "int4"
    a["skip_layers"].add("x")
    assert lowbit.INT8_MINMAX_WEIGHT_QUANT_CFG["quant_cfg"]["weights"]["type"] == "int8"
    assert lowbit.INT8_MINMAX_WEIGHT_QUANT_CFG["skip_layers"] == {"lm_head"}


def test_builtin_config_contents():
    c = lowbit.MXFP8_QUANT_CFG
    assert c["quant_cfg"]["weights"] == {"type": "mxfp8_e4m3fn", "symmetric": True, "strategy": "group", "group_size": 32}
    assert c["quant_cfg"]["inputs"] == {"type": "mxfp8_e4m3fn", "symmetric": True, "strategy": "group"}
    assert "skip_layers" not in lowbit.HIFP8_OFMR_CFG
    assert lowbit.INT4_AWQ_WEIGHT_QUANT_CFG["algorithm"] == {"awq": {"grids_num": 20}}
    assert lowbit.INT8_SMOOTHQUANT_CFG["algorithm"] == {"smoothquant": {"smooth_strength": 0.5}}
    assert lowbit.INT8_SMOOTHQUANT_CFG["quant_cfg"]["inputs"]["strategy"] == "tensor"
    n = lowbit.validate_config(lowbit.INT4_GPTQ_WEIGHT_QUANT_CFG)
    assert n["weights"] == {"type": "int4", "symmetric": True, "strategy": "channel", "group_size": 0}
    assert n["inputs"] is None and n["algorithm"] == {"gptq": {}} and n["skip_layers"] == ["lm_head"]


def test_defaults_and_normalization():
    n = lowbit.validate_config({"quant_cfg": {"weights": {"type": "mxfp4_e2m1"}}})
    assert n["batch_num"] == 1 and n["algorithm"] == {"minmax": {}}
    assert n["weights"]["strategy"] == "group" and n["weights"]["group_size"] == 32
    n = lowbit.validate_config({"quant_cfg": {"weights": {"type": "int4", "strategy": "group"}}, "algorithm": "gptq"})
    assert n["weights"]["group_size"] == 128 and n["algorithm"] == {"gptq": {}}
    n = lowbit.validate_config({**base(inputs={"type": "int8", "strategy": "token"})})
    assert n["inputs"]["strategy"] == "token"


def test_overrides_are_validated_and_kept_in_order():
    cfg = base(**{"layers.1.*.weights": {"type": "int4", "strategy": "group", "group_size": 32},
                  "*.w2.inputs": {"enable_quant": False}, "layers.*.weights": {"type": "int8", "strategy": "tensor"}})
    n = lowbit.validate_config(cfg)
    assert [o["glob"] for o in n["overrides"]] == ["layers.1.*", "*.w2", "layers.*"]
    assert n["overrides"][1]["has_inputs"] and n["overrides"][1]["inputs"] is None
    with pytest.raises(ValueError, match=r"quant_cfg.layers.0.weights.group_size: 40 is not a multiple of 32"):
        lowbit.validate_config(base(**{"layers.0.weights": {"type": "int4", "strategy": "group", "group_size": 40}}))
    with pytest.raises(ValueError, match=r"quant_cfg\['fc'\]: hifloat8 x int8 \(activation x weight\) is not a legal"):
        lowbit.validate_config(base(**{"fc.inputs": {"type": "hifloat8"}}))


@pytest.mark.parametrize("cfg,exc,pattern", [
    ({"batch_nm": 1, "quant_cfg": {}}, ValueError, r"batch_nm: unknown key \(did you mean 'batch_num'\?\)"),
    ({"batch_num": 0, **base()}, ValueError, r"batch_num: 0 must be a positive int"),
    ({"batch_num": True, **base()}, TypeError, r"batch_num: expected an int, got bool True"),
    ({"batch_num": 2.0, **base()}, TypeError, r"batch_num: expected an int, got float 2"),
    ({}, ValueError, r"quant_cfg: missing"),
    ({"quant_cfg": {"weights": {"type": "int3"}}}, ValueError,
     r"quant_cfg.weights.type: 'int3' is not allowed \(did you mean 'int8'\?\); allowed: int8, int4, hifloat8"),
    ({"quant_cfg": {"weights": {"type": "int8", "symetric": True}}}, ValueError,
     r"quant_cfg.weights.symetric: unknown key \(did you mean 'symmetric'\?\)"),
    ({"quant_cfg": {"weights": {"type": "int8", "symmetric": "yes"}}}, TypeError,
     r"quant_cfg.weights.symmetric: expected True or False, got str 'yes'"),
    ({"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 48}}}, ValueError,
     r"quant_cfg.weights.group_size: 48 is not a multiple of 32"),
    ({"quant_cfg": {"weights": {"type": "int4", "strategy": "channel", "group_size": 32}}}, ValueError,
     r"quant_cfg.weights.group_size: only allowed with strategy 'group'"),
    ({"quant_cfg": {"weights": {"type": "mxfp4_e2m1", "strategy": "group", "group_size": 64}}}, ValueError,
     r"mxfp4_e2m1 weights use blocks of 32"),
    ({"quant_cfg": {"weights": {"type": "hifloat8", "symmetric": False}}}, ValueError,
     r"quant_cfg.weights.symmetric: False is only allowed for int8 and int4"),
    ({"quant_cfg": {"weights": {"type": "float8_e4m3fn", "strategy": "group"}}}, ValueError,
     r"quant_cfg.weights.strategy: 'group' is not allowed for float8_e4m3fn; allowed: tensor, channel"),
    ({"quant_cfg": {"weights": {"type": "float4_e2m1", "strategy": "channel"}}}, ValueError,
     r"quant_cfg.weights.strategy: 'channel' is not allowed for float4_e2m1; allowed: group"),
    (base(inputs={"type": "int4"}), ValueError, r"quant_cfg.inputs.type: 'int4' is not allowed"),
    (base(inputs={"type": "int8", "strategy": "token", "symmetric": False}), ValueError,
     r"quant_cfg.inputs.symmetric: False is not allowed with strategy 'token'"),
    (base(inputs={"enable_quant": True}), ValueError, r"quant_cfg.inputs.enable_quant: only False is meaningful"),
    ({"quant_cfg": {"weights": {"type": "int8", "strategy": "group", "group_size": 32}, "inputs": {"type": "int8"}}},
     ValueError, r"quant_cfg.weights.strategy: 'group' is not allowed for int8 x int8 \(activation x weight\)"),
    ({"quant_cfg": {"weights": {"type": "float4_e2m1"}, "inputs": {"type": "float8_e4m3fn", "strategy": "token"}}},
     ValueError, r"quant_cfg.inputs.strategy: 'token' is not allowed for float8_e4m3fn x float4_e2m1"),
    (base(weight={"type": "int8"}), ValueError, r"quant_cfg.weight: unknown key \(did you mean 'weights'\?\)"),
    ({**base(), "algorithm": {"gptq", "awq"}}, ValueError, r"algorithm: 'awq' and 'gptq' both claim nn.Linear"),
    ({**base(), "algorithm": "gtpq"}, ValueError, r"algorithm: 'gtpq' is not allowed \(did you mean 'gptq'\?\)"),
    ({**base(), "algorithm": {"awq": {"grids_num": 0}}}, ValueError, r"algorithm.awq.grids_num: 0 must be a positive int"),
    ({**base(), "algorithm": {"awq": {"grid_num": 10}}}, ValueError,
     r"algorithm.awq.grid_num: unknown key \(did you mean 'grids_num'\?\)"),
    ({**base(), "algorithm": {"smoothquant": {"smooth_strength": 0.5}}}, ValueError,
     r"algorithm: 'smoothquant' is not available for int8 weight-only quantization; allowed: minmax, gptq, awq"),
    ({**base(inputs={"type": "int8"}), "algorithm": {"smoothquant": {"smooth_strength": 1.0}}}, ValueError,
     r"algorithm.smoothquant.smooth_strength: 1 is not in the open interval \(0, 1\)"),
    ({**base(), "algorithm": "ofmr"}, ValueError, r"algorithm: 'ofmr' is not available for int8 weight-only"),
    ({**base(), "algorithm": 3}, TypeError, r"algorithm: expected a str, set or dict, got int 3"),
    ({**base(), "skip_layers": "lm_head"}, TypeError, r"skip_layers: expected an iterable of str \(a set or list\)"),
    ({**base(), "skip_layers": ["a", 1]}, TypeError, r"skip_layers: every entry must be a str, got int 1"),
    ({"quant_cfg": {"weights": object()}}, TypeError, r"quant_cfg.weights: expected a dict, got object <object"),
    ([], TypeError, r"config: expected a dict, got list"),
    ({1: 2}, TypeError, r"config: every key must be a str, got int 1"),
])
def test_invalid_configs(cfg, exc, pattern):
    with pytest.raises(exc, match=pattern):
        lowbit.validate_config(cfg)


def test_scale_dtype_float16_weights_option():
    g32 = {"type": "int4", "strategy": "group", "group_size": 32}
    n = lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_dtype": "float16"}}})
    assert n["weights"]["scale_dtype"] == "float16"
    # the default is float32, left out of the normalized entry (as in files saved before it)
    assert "scale_dtype" not in lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_dtype": "float32"}}})["weights"]
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.weights.scale_dtype: 'bfloat16' is not allowed \(did you mean 'float16'\?\); "
                                                 r"allowed: float32, float16"):
        lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_dtype": "bfloat16"}}})
    with pytest.raises(lowbit.ConfigTypeError, match=r"quant_cfg.weights.scale_dtype: expected a str, got int 16"):
        lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_dtype": 16}}})
    with pytest.raises(lowbit.ConfigError, match=r"scale_dtype: 'float16' is only allowed for int8 and int4 weights "
                                                 r"\(hifloat8"):
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "hifloat8", "scale_dtype": "float16"}}})
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.inputs.scale_dtype: unknown key"):
        lowbit.validate_config({"quant_cfg": {"weights": g32, "inputs": {"type": "int8", "scale_dtype": "float16"}}})
    for name in ("GGUF_Q8_0_CFG", "GGUF_Q4_0_CFG", "GGUF_Q4_0_GPTQ_CFG"):
        w = lowbit.validate_config(getattr(lowbit, name))["weights"]
        assert (w["strategy"], w["group_size"], w["symmetric"], w["scale_dtype"]) == ("group", 32, True, "float16")


def test_compute_scales_float16_rounds_then_derives_offsets():
    import torch
    w = torch.randn(16, 96) * 0.05
    for sym in (True, False):
        s32, o32 = lowbit.compute_scales(w, "int4", "group", 32, sym)
        s16, o16 = lowbit.compute_scales(w, "int4", "group", 32, sym, scale_dtype="float16")
        assert torch.equal(s16, s32.half().float())  # the nearest fp16 value
        assert not torch.equal(s16, s32)
        if not sym:  # the zero point of the rounded scale, by the same rule
            lo = w.reshape(16, 3, 32).amin(-1).clamp(max=0)
            assert torch.equal(o16, torch.round(-8 - lo / s16).int())
    with pytest.raises(ValueError, match=r"scale_dtype: 'float16' is only allowed for int8 and int4"):
        lowbit.compute_scales(w, "hifloat8", "channel", scale_dtype="float16")
    with pytest.raises(ValueError, match=r"scale_dtype: 'half' is not allowed; allowed: float32, float16"):
        lowbit.compute_scales(w, "int8", "channel", scale_dtype="half")
