"""Config validation (C++ rules through lowbit._C) and the built-in configs."""
import pytest
import torch

import lowbit
from format_cases import names_where, names_with


def base(**quant_cfg):
    return {"quant_cfg": {"weights": {"type": "int8"}, **quant_cfg}}


def test_builtin_configs_parse_and_are_fresh_copies():
    assert len(lowbit.BUILTIN_CONFIG_NAMES) == 16
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
    ({"quant_cfg": {"weights": {"type": "int5"}}}, ValueError,
     r"quant_cfg.weights.type: 'int5' is not allowed \(did you mean 'int8'\?\); allowed: int8, int4, hifloat8"),
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
     r"quant_cfg.weights.symmetric: False is only allowed for " + names_where("allows_asym")),
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
    with pytest.raises(lowbit.ConfigError, match=r"scale_dtype: 'float16' is only allowed for " +
                       names_where("allows_fp16_scale") + r" weights \(hifloat8"):
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "hifloat8", "scale_dtype": "float16"}}})
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.inputs.scale_dtype: unknown key"):
        lowbit.validate_config({"quant_cfg": {"weights": g32, "inputs": {"type": "int8", "scale_dtype": "float16"}}})
    for name in ("GGUF_Q8_0_CFG", "GGUF_Q4_0_CFG", "GGUF_Q4_0_GPTQ_CFG"):
        w = lowbit.validate_config(getattr(lowbit, name))["weights"]
        assert (w["strategy"], w["group_size"], w["symmetric"], w["scale_dtype"]) == ("group", 32, True, "float16")


def test_scale_rule_signed_max_weights_option():
    g32 = {"type": "int4", "strategy": "group", "group_size": 32}
    n = lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_rule": "signed_max"}}})
    assert n["weights"]["scale_rule"] == "signed_max"
    # the default is absmax, left out of the normalized entry (as in files saved before it)
    assert "scale_rule" not in lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_rule": "absmax"}}})["weights"]
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.weights.scale_rule: 'signed-max' is not allowed \(did you "
                                                 r"mean 'signed_max'\?\); allowed: absmax, signed_max"):
        lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_rule": "signed-max"}}})
    with pytest.raises(lowbit.ConfigTypeError, match=r"quant_cfg.weights.scale_rule: expected a str, got bool True"):
        lowbit.validate_config({"quant_cfg": {"weights": {**g32, "scale_rule": True}}})
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.weights.scale_rule: 'signed_max' is only allowed for "
                                                 r"symmetric int4 weights \(got int8\); allowed for int8: absmax"):
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "int8", "scale_rule": "signed_max"}}})
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.weights.scale_rule: 'signed_max' is only allowed for "
                                                 r"symmetric int4 weights \(got asymmetric int4\)"):
        lowbit.validate_config({"quant_cfg": {"weights": {**g32, "symmetric": False, "scale_rule": "signed_max"}}})
    with pytest.raises(lowbit.ConfigError, match=r"scale_rule: 'signed_max' is only allowed for symmetric int4 "
                                                 r"weights \(got hifloat8\)"):
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "hifloat8", "scale_rule": "signed_max"}}})
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.inputs.scale_rule: unknown key"):
        lowbit.validate_config({"quant_cfg": {"weights": g32, "inputs": {"type": "int8", "scale_rule": "signed_max"}}})
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.\*wq.weights.scale_rule: 'signed_max' is only allowed"):
        lowbit.validate_config({"quant_cfg": {"weights": g32, "*wq.weights": {"type": "int8",
                                                                             "scale_rule": "signed_max"}}})
    for name in ("GGUF_Q4_0_CFG", "GGUF_Q4_0_GPTQ_CFG"):
        assert lowbit.validate_config(getattr(lowbit, name))["weights"]["scale_rule"] == "signed_max"
    assert "scale_rule" not in lowbit.validate_config(lowbit.GGUF_Q8_0_CFG)["weights"]


def _ggml_q4_0(x, fp16):
    """ggml's Q4_0 rule on blocks of 32 (numpy): d = m / -8, m the first value of largest
    magnitude; codes round(x / d) clamped to [-8, 7], against the stored (fp16) d."""
    import numpy as np
    b = x.numpy().reshape(x.shape[0], -1, 32).astype(np.float32)
    m = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)[..., 0]
    d = m / np.float32(-8)
    if fp16:
        d = d.astype(np.float16).astype(np.float32)
    d = np.where(np.abs(d) < np.float32(1.192092896e-7), np.float32(1), d)  # lowbit's guard (all-zero blocks)
    q = np.clip(np.rint(b / d[..., None]), -8, 7) + np.float32(0)  # integer codes: no -0 (so 0 * d < 0 is -0)
    return d, (q * d[..., None]).astype(np.float32).reshape(x.shape)


@pytest.mark.parametrize("fp16", [False, True])
def test_signed_max_is_ggml_q4_0_rule(fp16):
    import numpy as np
    import torch
    torch.manual_seed(5)
    x = torch.randn(32, 256)
    x[0, :32] = 0                                   # all-zero block: scale 1.0, codes 0
    x[1, :32] = torch.linspace(-0.9, 1, 32)         # largest magnitude positive (+1, last)
    x[2, 32:64] = torch.linspace(1, -1.5, 32)       # largest magnitude negative
    x[3, :32] = torch.arange(32) / 4.0 - 4.0        # -4 .. 3.75: level ties x / d = k + 0.5 (half to even)
    x[4, :32] = torch.tensor([2.0, -2.0] * 16)      # +m and -m tie: lowbit takes -m
    x[5, :32] = 1e-7                                # |d| below the guard
    dt = "float16" if fp16 else "float32"
    isas = lowbit.available_isas()
    try:
        results = []
        for isa in sorted(isas):
            lowbit.set_isa(isa)
            s, o = lowbit.compute_scales(x, "int4", "group", 32, True, scale_dtype=dt, scale_rule="signed_max")
            q = lowbit.fake_quant(x, "int4", "group", 32, True, scale=s, offset=o)
            packed = lowbit.pack(x, "int4", s, o, "group", 32, True)
            back = lowbit.unpack(packed, "int4", s, 256, o, "group", 32, True)
            assert torch.equal(back.view(torch.int32), q.view(torch.int32)), isa
            results.append((s, q))
    finally:
        lowbit.set_isa("auto")
    for s, q in results[1:]:  # every instruction set bit for bit
        assert torch.equal(s.view(torch.int32), results[0][0].view(torch.int32))
        assert torch.equal(q.view(torch.int32), results[0][1].view(torch.int32))
    s, q = results[0]
    d, want = _ggml_q4_0(x, fp16)
    tie = np.zeros(s.shape, bool)
    tie[4, 0] = True  # ggml takes the first of +2, -2 (d = -0.25); lowbit the negative one
    assert np.array_equal(s.numpy()[~tie], d[~tie])
    assert s[4, 0] == 0.25 and d[4, 0] == -0.25
    rows = ~tie.repeat(32, 1)
    assert np.array_equal(q.numpy()[rows].view(np.int32), want[rows].view(np.int32))
    assert s[0, 0] == 1.0 and torch.all(q[0, :32] == 0) and s[5, 0] == 1.0
    assert s[1, 0] < 0 and q[1, 31] == 1.0 and s[2, 1] > 0 and q[2, 63] == -1.5  # m itself is a level
    assert (s < 0).any() and (s > 0).any()
    if fp16:
        assert torch.equal(s.half().float(), s)
    # the mirror image of the tie block is ggml's choice on its grid: the same error
    assert np.isclose(np.abs(q[4, :32].numpy() - x[4, :32].numpy()).sum(),
                      np.abs(want[4, :32] - x[4, :32].numpy()).sum())
    if not fp16:  # random rows: ggml's reference quantizer verbatim (x * (1 / d) + 8.5, truncated)
        b = x[6:].numpy().reshape(-1, 32)
        m = np.take_along_axis(b, np.abs(b).argmax(-1)[:, None], -1)[:, 0]
        dd = m / np.float32(-8)
        qq = np.minimum(15, (b * (np.float32(1) / dd)[:, None] + np.float32(8.5)).astype(np.int8)) - 8
        assert np.array_equal(s[6:].numpy().reshape(-1), dd)
        assert np.array_equal(q[6:].numpy().reshape(-1, 32), (qq * dd[:, None]).astype(np.float32))
    with pytest.raises(ValueError, match=r"scale_rule: 'signed_max' is only allowed for symmetric int4"):
        lowbit.compute_scales(x, "int8", "group", 32, scale_rule="signed_max")
    with pytest.raises(ValueError, match=r"scale_rule: 'signed_max' is only allowed for symmetric int4"):
        lowbit.compute_scales(x, "int4", "group", 32, False, scale_rule="signed_max")
    with pytest.raises(ValueError, match=r"scale_rule: 'max' is not allowed; allowed: absmax, signed_max"):
        lowbit.compute_scales(x, "int4", "group", 32, scale_rule="max")


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
    with pytest.raises(ValueError, match=r"scale_dtype: 'float16' is only allowed for " + names_where("allows_fp16_scale")):
        lowbit.compute_scales(w, "hifloat8", "channel", scale_dtype="float16")
    with pytest.raises(ValueError, match=r"scale_dtype: 'half' is not allowed; allowed: float32, float16"):
        lowbit.compute_scales(w, "int8", "channel", scale_dtype="half")


def test_q4_k_scale_dtype_is_the_gguf_q4_k_grid_and_checked():
    w = lowbit.validate_config(lowbit.GGUF_Q4_K_GPTQ_CFG)["weights"]
    assert w == {"type": "int4", "symmetric": True, "strategy": "group", "group_size": 32, "scale_dtype": "q4_k"}
    assert lowbit.validate_config({"quant_cfg": {"weights": {**w, "type": "int3"}}})["weights"]["scale_dtype"] == "q4_k"
    for bad, got in (({"type": "int8"}, "int8, strategy 'group', group_size 32"),
                     ({"group_size": 64}, "int4, strategy 'group', group_size 64"),
                     ({"symmetric": False}, "asymmetric int4, strategy 'group', group_size 32"),
                     ({"strategy": "channel", "group_size": None}, "int4, strategy 'channel'")):
        weights = {k: v for k, v in {**w, **bad}.items() if v is not None}
        with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.weights.scale_dtype: 'q4_k' is only allowed for "
                           r"symmetric " + names_with("superblock_scale", "q4_k") + r" weights with strategy 'group' "
                           r"and group_size 32 \(got " + got):
            lowbit.validate_config({"quant_cfg": {"weights": weights}})
    with pytest.raises(lowbit.ConfigError, match=r"scale_dtype: 'q8' is not allowed; allowed: float32, float16, q4_k"):
        lowbit.validate_config({"quant_cfg": {"weights": {**w, "scale_dtype": "q8"}}})
    x = torch.randn(6, 300)  # a ragged last super-block (10 groups: 8 + 2) and a ragged last group
    s, _ = lowbit.compute_scales(x, "int4", "group", 32, scale_dtype="q4_k")
    d, sc = torch.ops.lowbit.split_superblock_scales(s, 63)
    assert d.shape == (6, 2) and sc.shape == (6, 10) and bool((sc >= 1).all()) and bool((sc <= 63).all())
    assert torch.equal(d.repeat_interleave(8, 1)[:, :10] * sc.float(), s)  # exactly d x sc
    assert torch.equal(d.half().float(), d)
    plain, _ = lowbit.compute_scales(x, "int4", "group", 32)
    assert float(((s - plain).abs() / plain).max()) < 0.2  # a 6-bit grid under each super-block's largest scale


def test_q6_k_scale_dtype_is_int6s_grid_and_each_grid_belongs_to_its_formats():
    w = lowbit.validate_config(lowbit.GGUF_Q6_K_CFG)["weights"]
    assert w == {"type": "int6", "symmetric": True, "strategy": "group", "group_size": 32, "scale_dtype": "q6_k"}
    with pytest.raises(lowbit.ConfigError, match=r"quant_cfg.weights.scale_dtype: 'q6_k' is only allowed for "
                       r"symmetric " + names_with("superblock_scale", "q6_k") + r" weights .*\(got int4, .*allowed "
                       r"for it: float32, float16, q4_k"):
        lowbit.validate_config({"quant_cfg": {"weights": {**w, "type": "int4"}}})
    with pytest.raises(ValueError, match=r"scale_dtype: 'q4_k' is the K-quant grid of int4 and int3; int6's is 'q6_k'"):
        lowbit.compute_scales(torch.randn(2, 64), "int6", "group", 32, scale_dtype="q4_k")
    x = torch.randn(3, 512)
    s, _ = lowbit.compute_scales(x, "int6", "group", 32, scale_dtype="q6_k")
    d, sc = torch.ops.lowbit.split_superblock_scales(s, 127)
    assert int(sc.max()) == 127 and torch.equal(d.repeat_interleave(8, 1) * sc.float(), s)
    with pytest.raises(ValueError, match=r"scales of row 0, super-block 0 are not an fp16 d times integers 1\.\.63"):
        torch.ops.lowbit.split_superblock_scales(s, 63)

