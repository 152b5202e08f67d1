"""lowbit.save / lowbit.load round trips and bad files."""
import torch
from torch import nn

import pytest

import lowbit
from lowbit.modules import DeployConv2d, DeployLinear


def make_mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 40)).to(dtype)


CONFIGS = [
    {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32, "symmetric": False}}},
    {"batch_num": 2, "quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8", "symmetric": False}}},
    {"quant_cfg": {"weights": {"type": "mxfp4_e2m1"}, "inputs": {"type": "mxfp8_e4m3fn"}}, "algorithm": "mxquant"},
    {"batch_num": 2, "quant_cfg": {"weights": {"type": "float4_e2m1"}, "inputs": {"type": "float8_e4m3fn"}}},
    {"batch_num": 2, "quant_cfg": {"weights": {"type": "hifloat8", "strategy": "tensor"},
                                   "inputs": {"type": "hifloat8"}}, "algorithm": "quantile"},
    {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32, "symmetric": False,
                               "scale_dtype": "float16"}}},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["quant_cfg"]["weights"]["type"] +
                         c["quant_cfg"]["weights"].get("scale_dtype", ""))
def test_round_trip_is_bit_exact(cfg, dtype, tmp_path):
    model = make_mlp(dtype)
    xs = [torch.randn(5, 96).to(dtype) for _ in range(3)]
    lowbit.quantize(model, cfg)
    for x in xs[:2]:
        model(x)
    lowbit.convert(model)
    want = model(xs[2])
    lowbit.save(model, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "lowbit.json").exists()
    fresh = lowbit.load(make_mlp(dtype), tmp_path / "out")
    assert isinstance(fresh[0], DeployLinear)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0, equal_nan=True, msg=k)
    assert torch.equal(fresh(xs[2]), want)


def test_conv_model_round_trip(tmp_path):
    def cnn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    model = cnn()
    x = torch.randn(2, 3, 12, 12)
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "float8_e4m3fn"}, "inputs": {"type": "float8_e4m3fn"}}})
    model(x)
    lowbit.convert(model)
    lowbit.save(model, tmp_path)
    fresh = lowbit.load(cnn(), tmp_path)
    assert isinstance(fresh[3], DeployConv2d) and torch.equal(fresh(x), model(x))


def test_save_and_load_refuse_wrong_models(tmp_path):
    model = make_mlp()
    with pytest.raises(ValueError, match=r"save: the model holds no deploy module"):
        lowbit.save(model, tmp_path)
    lowbit.quantize(model, {"batch_num": 3, "quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8"}}})
    with pytest.raises(ValueError, match=r"no deploy module"):
        lowbit.save(model, tmp_path)
    model = lowbit.convert(lowbit.quantize(make_mlp(), None))
    lowbit.save(model, tmp_path)
    with pytest.raises(ValueError, match=r"load: the model is already quantized"):
        lowbit.load(model, tmp_path)
    other = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 41))
    with pytest.raises(ValueError, match=r"load: layer '2' has weight shape \[41, 64\] in the model, \[40, 64\]"):
        lowbit.load(other, tmp_path)
    assert type(other[0]) is nn.Linear  # untouched
    with pytest.raises(ValueError, match=r"load: layer '2' of the file does not exist"):
        lowbit.load(nn.Sequential(nn.Linear(96, 64)), tmp_path)


def test_corrupt_and_truncated_files_give_clear_errors(tmp_path):
    model = lowbit.convert(lowbit.quantize(make_mlp(), None))
    lowbit.save(model, tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"safetensors: .*(truncated|outside)"):
        lowbit.load(make_mlp(), tmp_path)
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match=r"safetensors: header is not valid JSON"):
        lowbit.load(make_mlp(), tmp_path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"too short"):
        lowbit.load(make_mlp(), tmp_path)
    with pytest.raises(ValueError, match=r"cannot open"):
        lowbit.load(make_mlp(), tmp_path / "nowhere")
    m = make_mlp()
    torch.ops.lowbit.save_safetensors(str(path), ["0.weight"], [m[0].weight.detach()], [], [])
    with pytest.raises(ValueError, match=r"has no lowbit metadata"):
        lowbit.load(m, tmp_path)


def _rewrite(path, mutate):
    """Rewrites a saved model's tensors file with mutate(stored tensors dict) applied and a
    fresh checksum: a file as a hostile or buggy writer would make it."""
    names, tensors, keys, values = torch.ops.lowbit.load_safetensors(str(path / "model.safetensors"))
    stored = dict(zip(names, tensors))
    mutate(stored)
    meta = dict(zip(keys, values))
    torch.ops.lowbit.save_safetensors(str(path / "model.safetensors"), list(stored), list(stored.values()),
                                      ["lowbit"], [meta["lowbit"]], True)


@pytest.mark.parametrize("fmt,code", [("float8_e4m3fn", 0x7F), ("float8_e4m3fn", 0xFF), ("hifloat8", 0x80),
                                      ("mxfp8_e4m3fn", 0xFF)])
def test_load_rejects_nan_weight_codes(fmt, code, tmp_path):
    # quantization never writes them and the kernels assume there are none: a file that
    # holds one is corrupt (the neighbouring codes, 0x7E and 0x81, load fine); save refuses
    # to write one
    strategy = {"strategy": "group", "group_size": 32} if fmt.startswith("mx") else {}
    model = lowbit.convert(lowbit.quantize(make_mlp(), {"quant_cfg": {"weights": {"type": fmt, **strategy}}}))
    ok = code - 1 if code != 0x80 else 0x81
    model[2].weight_packed[3, 5] = ok
    lowbit.save(model, tmp_path)
    assert int(lowbit.load(make_mlp(), tmp_path)[2].weight_packed[3, 5]) == ok
    model[2].weight_packed[3, 5] = code
    with pytest.raises(ValueError, match=rf"save: .*tensor '2.weight_packed': code 197 is a NaN code of {fmt}"):
        lowbit.save(model, tmp_path / "other")
    assert not (tmp_path / "other").exists()

    def put(stored):
        stored["2.weight_packed"][3, 5] = code
    _rewrite(tmp_path, put)
    with pytest.raises(lowbit.FormatError, match=rf"load: .*model.safetensors: tensor '2.weight_packed': code 197 is "
                                                 rf"a NaN code of {fmt}, which quantization never writes"):
        lowbit.load(make_mlp(), tmp_path)


@pytest.mark.parametrize("name", ["MXFP8_QUANT_CFG", "MXFP4_AWQ_WEIGHT_QUANT_CFG"])
def test_mx_layers_whose_k_is_not_a_multiple_of_32_save_and_load(tmp_path, name):
    """MX rows are padded to whole blocks of 32: the saved-model validator must count the
    packed bytes with the same rule as pack() (stories260K's down projection has K = 172)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(172, 24), nn.ReLU(), nn.Linear(24, 8))
    lowbit.quantize(model, lowbit.builtin_config(name))
    x = torch.randn(4, 172)
    model(x)
    lowbit.convert(model)
    assert model[0].weight_packed.shape[1] == lowbit.packed_row_bytes(model[0].wspec.fmt, 172)
    assert model[0].weight_packed.shape[1] == (192 if name.startswith("MXFP8") else 96)
    lowbit.save(model, tmp_path)
    fresh = lowbit.load(nn.Sequential(nn.Linear(172, 24), nn.ReLU(), nn.Linear(24, 8)), tmp_path)
    assert torch.equal(fresh(x), model(x))


def test_float16_scales_round_trip_and_load_checks_them(tmp_path):
    import json
    cfg = {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32, "scale_dtype": "float16"}}}
    model = lowbit.convert(lowbit.quantize(make_mlp(), cfg))
    assert torch.equal(model[0].w_scale.half().float(), model[0].w_scale)
    lowbit.save(model, tmp_path)
    meta = json.loads((tmp_path / "lowbit.json").read_text())
    assert meta["layers"]["0"]["config"]["weights"]["scale_dtype"] == "float16"
    fresh = lowbit.load(make_mlp(), tmp_path)
    assert fresh[0].wspec.scale_dtype == "float16" and torch.equal(fresh[0].w_scale, model[0].w_scale)

    def off_grid(stored):
        stored["0.w_scale"] = stored["0.w_scale"].clone()
        stored["0.w_scale"].view(-1)[3] += 1e-6
    _rewrite(tmp_path, off_grid)
    with pytest.raises(ValueError, match=r"tensor '0.w_scale': element 3 is .*, not a float16 value \(the layer's "
                                         r"scale_dtype is float16\)"):
        lowbit.load(make_mlp(), tmp_path)


def test_q4_k_scales_round_trip_and_load_checks_them(tmp_path):
    import json
    cfg = {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32, "scale_dtype": "q4_k"}}}
    model = lowbit.convert(lowbit.quantize(make_mlp(), cfg))
    lowbit.save(model, tmp_path)
    meta = json.loads((tmp_path / "lowbit.json").read_text())
    assert meta["layers"]["0"]["config"]["weights"]["scale_dtype"] == "q4_k"
    fresh = lowbit.load(make_mlp(), tmp_path)
    assert fresh[0].wspec.scale_dtype == "q4_k" and torch.equal(fresh[0].w_scale, model[0].w_scale)

    def off_grid(stored):
        stored["0.w_scale"] = stored["0.w_scale"].clone()
        stored["0.w_scale"].view(-1)[4] *= 1.001
    _rewrite(tmp_path, off_grid)
    groups = model[0].w_scale.shape[1]
    with pytest.raises(ValueError, match=rf"tensor '0.w_scale': row 1, groups 0..{min(groups, 8) - 1} are not an "
                                         r"fp16 d times integers 1\.\.63 \(the layer's scale_dtype is q4_k\)"):
        lowbit.load(make_mlp(), tmp_path)


def test_signed_max_scales_round_trip_and_load_checks_them(tmp_path):
    import json
    cfg = {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32, "scale_dtype": "float16",
                                     "scale_rule": "signed_max"}}}
    model = lowbit.convert(lowbit.quantize(make_mlp(), cfg))
    s = model[0].w_scale
    assert (s < 0).any() and (s > 0).any() and torch.equal(s.half().float(), s)
    x = torch.randn(3, 96)
    lowbit.save(model, tmp_path)
    meta = json.loads((tmp_path / "lowbit.json").read_text())
    assert meta["layers"]["0"]["config"]["weights"]["scale_rule"] == "signed_max"
    fresh = lowbit.load(make_mlp(), tmp_path)
    assert fresh[0].wspec.scale_rule == "signed_max" and torch.equal(fresh[0].w_scale, s)
    assert torch.equal(fresh(x), model(x))
    neg = int((s.reshape(-1) < 0).nonzero()[0])

    def zero(stored):
        stored["0.w_scale"] = stored["0.w_scale"].clone()
        stored["0.w_scale"].view(-1)[neg] = 0.0
    _rewrite(tmp_path, zero)
    with pytest.raises(ValueError, match=rf"tensor '0.w_scale': element {neg} is 0 \(the layer's scale_rule is "
                                         r"signed_max"):
        lowbit.load(make_mlp(), tmp_path)
    # a negative scale in a layer without the rule is refused as before
    plain = {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32}}}
    lowbit.save(lowbit.convert(lowbit.quantize(make_mlp(), plain)), tmp_path / "plain")

    def negative(stored):
        stored["0.w_scale"] = stored["0.w_scale"].clone()
        stored["0.w_scale"].view(-1)[2] *= -1
    _rewrite(tmp_path / "plain", negative)
    with pytest.raises(ValueError, match=r"tensor '0.w_scale': element 2 is -.*, not positive"):
        lowbit.load(make_mlp(), tmp_path / "plain")
