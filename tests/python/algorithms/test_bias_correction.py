"""bias_correction: each layer's bias absorbs the mean output change that quantization
causes on calibration data (every algorithm and format, Linear and Conv2d)."""
import pytest
import torch
from torch import nn

import lowbit


def depthwise_stack(seed=0):
    """Depthwise 3x3 layers with zero-sum kernels and ReLU6: per-tensor HiF8 shifts their
    outputs' means (the case where bias correction matters)."""
    torch.manual_seed(seed)
    layers = []
    for i in range(4):
        c = nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=i % 2 == 0)
        with torch.no_grad():
            c.weight.sub_(c.weight.mean((1, 2, 3), keepdim=True)).mul_(3)
        layers += [c, nn.ReLU6()]
    return nn.Sequential(*layers)


def images(seed=1):
    torch.manual_seed(seed)
    return nn.functional.relu6(torch.randn(8, 32, 16, 16) * 2 + 1)


HIF8 = {"quant_cfg": {"weights": {"type": "hifloat8", "strategy": "tensor"}, "inputs": {"type": "hifloat8"}},
        "algorithm": "minmax"}


def quantized(cfg, correct, model=None, x=None):
    model = depthwise_stack() if model is None else model
    cfg = {**cfg, "batch_num": 1, "bias_correction": correct}
    lowbit.quantize(model, cfg, sequential=True)
    lowbit.calibrate(model, [images() if x is None else x])
    return lowbit.convert(model)


def rel_error(model, x):
    ref = depthwise_stack()(x)
    return float(((model(x) - ref) ** 2).mean() / (ref ** 2).mean())


def test_bias_correction_reduces_the_output_error_of_a_depthwise_stack():
    x_test = images(seed=7)
    plain = rel_error(quantized(HIF8, False), x_test)
    corrected = rel_error(quantized(HIF8, True), x_test)
    assert corrected < 0.95 * plain, (plain, corrected)


@pytest.mark.parametrize("cfg", [
    {"quant_cfg": {"weights": {"type": "int4"}}},                                         # weight-only, no data before
    {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8"}}},             # int32 bias
    {"quant_cfg": {"weights": {"type": "float8_e4m3fn"}, "inputs": {"type": "float8_e4m3fn"}}, "algorithm": "ofmr"},
    {"quant_cfg": {"weights": {"type": "int4", "strategy": "group", "group_size": 32}}, "algorithm": "gptq"},
])
@pytest.mark.parametrize("bias", [True, False])
def test_corrected_linear_layer_keeps_the_float_mean_on_the_calibration_batch(cfg, bias):
    torch.manual_seed(0)
    layer = nn.Linear(64, 48, bias=bias)
    user_bias = None if layer.bias is None else layer.bias.detach().clone()
    x = torch.randn(256, 64) + 0.5
    ref = layer(x).detach()
    model = nn.Sequential(layer)
    lowbit.quantize(model, {**cfg, "batch_num": 1, "bias_correction": True})
    assert model[0].needs_calibration
    model(x)
    y = model(x)  # calibrated fake-quant output
    shift = (y - ref).mean(0)
    assert float(shift.abs().max()) < 1e-3 * float(ref.abs().mean())  # an int32 bias rounds to s_x * s_w
    assert model[0].bias is not None and model[0].bias.shape == (48,)
    if bias:
        assert torch.equal(layer.bias.detach(), user_bias)  # the user's tensor is untouched
    lowbit.convert(model)
    assert torch.allclose(model(x), y, rtol=1e-4, atol=1e-4)


def test_uncorrected_layers_keep_their_bias_exactly():
    model = nn.Sequential(nn.Linear(16, 8))
    b = model[0].bias.detach().clone()
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int4"}}})
    assert not model[0].needs_calibration and torch.equal(model[0].bias.detach(), b)


def test_save_and_load_keep_a_bias_that_correction_added(tmp_path):
    model = quantized(HIF8, True)
    x = images(seed=3)
    y = model(x)
    assert model[2].bias is not None  # the float layer had none
    lowbit.save(model, tmp_path)
    fresh = lowbit.load(depthwise_stack(), tmp_path)
    assert torch.equal(fresh(x), y)
    # and a model saved without correction still loads onto the bias-free layers
    plain = quantized(HIF8, False)
    lowbit.save(plain, tmp_path / "plain")
    assert lowbit.load(depthwise_stack(), tmp_path / "plain")[2].bias is None


def test_bias_correction_must_be_a_bool():
    with pytest.raises(lowbit.ConfigTypeError, match=r"bias_correction: expected True or False, got str 'yes'"):
        lowbit.validate_config({"quant_cfg": {"weights": {"type": "int8"}}, "bias_correction": "yes"})
    assert lowbit.validate_config({"quant_cfg": {"weights": {"type": "int8"}}})["bias_correction"] is False


def test_reported_error_is_measured_against_the_float_layer_as_it_was():
    """recon_error compares with the original float layer, not one carrying the corrected bias."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    x = torch.randn(256, 64) + 0.5
    ref = layer(x).detach().double()
    model = nn.Sequential(layer)
    lowbit.quantize(model, {"quant_cfg": {"weights": {"type": "int4"}}, "batch_num": 1, "bias_correction": True})
    model(x)
    yq = model(x).detach().double()
    want = float((ref - yq).pow(2).sum() / ref.pow(2).sum())
    assert float(model[0].recon_error) == pytest.approx(want, rel=1e-9)
