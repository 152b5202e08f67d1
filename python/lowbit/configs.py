"""The built-in configurations, with AMCT's names and contents.

Access them as ``lowbit.INT8_MINMAX_WEIGHT_QUANT_CFG`` etc.: every access returns a fresh
deep copy, so changing one never changes the default.
"""
import copy

_LM_HEAD = {"lm_head"}


def _cfg(weights, inputs, algorithm, skip=True):
    quant_cfg = {"weights": weights}
    if inputs is not None:
        quant_cfg["inputs"] = inputs
    cfg = {"batch_num": 1, "quant_cfg": quant_cfg, "algorithm": algorithm}
    if skip:
        cfg["skip_layers"] = set(_LM_HEAD)
    return cfg


def _w(type_, strategy, group_size=None, scale_dtype=None):
    d = {"type": type_, "symmetric": True, "strategy": strategy}
    if group_size is not None:
        d["group_size"] = group_size
    if scale_dtype is not None:
        d["scale_dtype"] = scale_dtype
    return d


# llama.cpp's Q8_0 / Q4_0 grids: blocks of 32 weights along K with one fp16 scale each
# (lowbit.export_gguf writes these layers' codes and scales as they are); Q4_0 with
# ggml's scale rule d = max / -8 (the 16th level on the side of the largest magnitude)
_GGUF_Q8 = _w("int8", "group", 32, "float16")
_GGUF_Q4 = {**_w("int4", "group", 32, "float16"), "scale_rule": "signed_max"}
# llama.cpp's Q4_K grid: groups of 32 in super-blocks of 256 columns, each group's scale
# an fp16 d (one per super-block) times a 6-bit integer (layers need K % 256 == 0 to export)
_GGUF_Q4_K = _w("int4", "group", 32, "q4_k")
# Q6_K's: int6 codes, each group's scale an fp16 d per 256 columns times an 8-bit integer
_GGUF_Q6_K = _w("int6", "group", 32, "q6_k")


def _a(type_, strategy):
    return {"type": type_, "symmetric": True, "strategy": strategy}


_BUILTIN = {
    "INT8_MINMAX_WEIGHT_QUANT_CFG": _cfg(_w("int8", "channel"), None, {"minmax"}),
    "INT4_AWQ_WEIGHT_QUANT_CFG": _cfg(_w("int4", "channel"), None, {"awq": {"grids_num": 20}}),
    "INT4_GPTQ_WEIGHT_QUANT_CFG": _cfg(_w("int4", "channel"), None, {"gptq"}),
    "INT8_SMOOTHQUANT_CFG": _cfg(_w("int8", "channel"), _a("int8", "tensor"),
                                 {"smoothquant": {"smooth_strength": 0.5}}),
    "HIFP8_OFMR_CFG": _cfg(_w("hifloat8", "tensor"), _a("hifloat8", "tensor"), {"ofmr"}, skip=False),
    "FP8_OFMR_CFG": _cfg(_w("float8_e4m3fn", "tensor"), _a("float8_e4m3fn", "tensor"), {"ofmr"}),
    "MXFP8_QUANT_CFG": _cfg(_w("mxfp8_e4m3fn", "group", 32), _a("mxfp8_e4m3fn", "group"), {"mxquant"}),
    "MXFP4_AWQ_WEIGHT_QUANT_CFG": _cfg(_w("mxfp4_e2m1", "group", 32), None, {"awq": {"grids_num": 20}}),
    "HIFP8_CAST_CFG": _cfg(_w("hifloat8", "channel"), _a("hifloat8", "tensor"), {"cast"}),
    "HIFP8_QUANTILE_CFG": _cfg(_w("hifloat8", "tensor"), _a("hifloat8", "tensor"), {"quantile"}),
    "HIFP8_SMOOTHQUANT_CFG": _cfg(_w("hifloat8", "channel"), _a("hifloat8", "tensor"),
                                  {"smoothquant": {"smooth_strength": 0.5}}),
    "GGUF_Q8_0_CFG": _cfg(_GGUF_Q8, None, {"minmax"}),
    "GGUF_Q4_0_CFG": _cfg(_GGUF_Q4, None, {"minmax"}),
    "GGUF_Q4_0_GPTQ_CFG": _cfg(_GGUF_Q4, None, {"gptq"}),
    "GGUF_Q4_K_GPTQ_CFG": _cfg(_GGUF_Q4_K, None, {"gptq"}),
    "GGUF_Q6_K_CFG": _cfg(_GGUF_Q6_K, None, {"minmax"}),
}

BUILTIN_CONFIG_NAMES = tuple(_BUILTIN)


def builtin_config(name):
    """A fresh copy of the built-in config ``name``."""
    if name not in _BUILTIN:
        raise ValueError(f"config name: {name!r} is unknown; allowed: {', '.join(BUILTIN_CONFIG_NAMES)}")
    return copy.deepcopy(_BUILTIN[name])
