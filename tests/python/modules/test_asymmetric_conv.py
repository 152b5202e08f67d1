"""Asymmetric (zero point) INT8 activations on Conv2d: the integer convolution kernels
take the zero point (the padding gets the code of 0.0) and equal fake quantization."""
import pytest
import torch
from torch import nn

import lowbit
from conftest import assert_deploy_layers_match


def model(groups, padding, stride, padding_mode):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 16, 3, stride, padding, groups=groups, padding_mode=padding_mode), nn.ReLU(),
                         nn.Conv2d(16, 8, 1))


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("groups, padding, stride, padding_mode", [
    (1, 1, 1, "zeros"), (4, 1, 2, "zeros"), (8, 0, 1, "zeros"), (1, 2, 1, "zeros"), (1, 1, 1, "reflect")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_asymmetric_int8_conv_deploy_equals_fake_quant(weights, groups, padding, stride, padding_mode, channels_last):
    m = model(groups, padding, stride, padding_mode)
    cfg = {"batch_num": 2, "quant_cfg": {"weights": {"type": weights}, "inputs": {"type": "int8", "symmetric": False}}}
    lowbit.quantize(m, cfg)
    torch.manual_seed(1)
    for _ in range(2):
        m(torch.randn(2, 8, 9, 9) * 0.5 + 1.0)  # a range off zero: zero points away from 0 and -128
    assert [r.status for r in lowbit.summary(m)] == ["calibrated", "calibrated"]
    offsets = [int(m[0].act_offset), int(m[2].act_offset)]
    assert all(-128 <= o <= 127 for o in offsets) and offsets[0] not in (0, -128)
    lowbit.convert(m)
    assert m[0].integer_kernel and m[2].integer_kernel
    x = torch.randn(2, 8, 9, 9) * 0.5 + 1.0
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert assert_deploy_layers_match(m, x) == 2


def test_asymmetric_activations_use_the_whole_code_range_after_relu():
    """Post-ReLU maps: a zero point of -128 gives 256 levels over [0, max] where symmetric
    int8 has 128, so the activation error is lower."""
    errors = {}
    for symmetric in (True, False):
        torch.manual_seed(0)
        m = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 16, 3, 1, 1))
        cfg = {"quant_cfg": {"weights": {"type": "int8"}, "inputs": {"type": "int8", "symmetric": symmetric}}}
        lowbit.quantize(m, cfg)
        torch.manual_seed(1)
        m(torch.randn(4, 8, 12, 12))
        errors[symmetric] = float(m[1].recon_error)
        assert int(m[1].act_offset) == (0 if symmetric else -128)
    assert errors[False] < 0.5 * errors[True], errors
