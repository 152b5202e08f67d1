"""convert() folds an inference BatchNorm2d into the deploy convolution that feeds it
(lowbit.batchnorm_fold): which pairs fold, that the output only moves by fp32 rounding,
in every kernel family, and that save/load and TorchScript keep the folded model."""
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.modules.deploy import DeployConv2d
from conftest import assert_deploy_layers_match


def _trained_bn(c, affine=True):
    bn = nn.BatchNorm2d(c, affine=affine)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.2, 3)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(-2, 2)  # negative multipliers too
            bn.bias.uniform_(-1, 1)
    return bn


class Net(nn.Module):
    """conv_a -> bn_a (folds); conv_b's output also feeds a residual (no fold); bn_shared
    runs twice (no fold); conv_c has bias and an affine-free BN (folds); conv_d is skipped
    by the config, so its BN stays."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1, bias=False), _trained_bn(8)
        self.conv_b, self.bn_b = nn.Conv2d(8, 8, 3, padding=1), _trained_bn(8)
        self.bn_shared = _trained_bn(8)
        self.conv_c, self.bn_c = nn.Conv2d(8, 6, 3, stride=2, padding=1), _trained_bn(6, affine=False)
        self.conv_d, self.bn_d = nn.Conv2d(6, 6, 1), _trained_bn(6)

    def forward(self, x):
        a = F.relu(self.bn_a(self.conv_a(x)))
        b = self.conv_b(a)
        a = self.bn_b(b) + b
        a = self.bn_shared(a) + self.bn_shared(a * 0.5)
        c = F.relu(self.bn_c(self.conv_c(a)))
        return self.bn_d(self.conv_d(c))


def _convert(model, cfg, x, **kw):
    cfg = copy.deepcopy(cfg)
    cfg.setdefault("skip_layers", {"conv_d"})
    lowbit.quantize(model, cfg)
    with torch.no_grad():
        model(x)
    return lowbit.convert(model, **kw)


W4 = {"quant_cfg": {"weights": {"type": "int4", "strategy": "channel"}}}


def test_folds_exactly_the_pairs_whose_batchnorm_reads_only_the_conv(caplog):
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(4, 3, 10, 10)
    with caplog.at_level(logging.INFO, logger="lowbit"):
        _convert(model, W4, x)
    assert isinstance(model.bn_a, nn.Identity) and isinstance(model.bn_c, nn.Identity)
    assert isinstance(model.bn_b, nn.BatchNorm2d)       # conv_b's output has a second reader
    assert isinstance(model.bn_shared, nn.BatchNorm2d)  # runs twice
    assert isinstance(model.bn_d, nn.BatchNorm2d)       # conv_d stayed float
    assert model.conv_a.folded_batchnorm == "bn_a" and "batchnorm='bn_a' folded" in repr(model.conv_a)
    assert getattr(model.conv_b, "folded_batchnorm", None) is None
    assert "BatchNorm 'bn_a' folded into 'conv_a'" in caplog.text
    assert "BatchNorm 'bn_c' folded into 'conv_c'" in caplog.text and "'bn_b' folded" not in caplog.text


def test_folded_output_equals_unfolded_up_to_fp32_rounding():
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(4, 3, 10, 10)
    folded, plain = _convert(copy.deepcopy(net), W4, x), _convert(copy.deepcopy(net), W4, x, fold_batchnorm=False)
    assert isinstance(plain.bn_a, nn.BatchNorm2d)
    with torch.no_grad():
        y, want = folded(x), plain(x)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert assert_deploy_layers_match(folded, x) == 3  # each folded layer equals its own reference


@pytest.mark.parametrize("wtype,itype", [("int8", "int8"), ("hifloat8", "hifloat8"), ("float8_e4m3fn", None),
                                         ("mxfp4_e2m1", None), ("float4_e2m1", "float8_e4m3fn")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_kernel_family_applies_the_folded_affine(wtype, itype, channels_last):
    """INT8 x INT8 (integer kernel: multiplier in its weight scale), HiF8 x HiF8 (fused
    activation QDQ), weight-only FP8, MX blocks and FP8 x FP4 (multiplier times its own
    row scale): the deploy layer with a folded BatchNorm equals conv -> BatchNorm computed
    from its dequantized weight, and its own fake-quant reference."""
    torch.manual_seed(1)
    conv, bn = nn.Conv2d(16, 12, 3, padding=1, bias=True), _trained_bn(12)
    model = nn.Sequential(conv, bn).eval()
    x = torch.randn(3, 16, 9, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    q = {"weights": {"type": wtype}}
    if itype:
        q["inputs"] = {"type": itype, "strategy": "tensor"}
    ref_model = copy.deepcopy(model)
    lowbit.quantize(ref_model, {"quant_cfg": q})
    with torch.no_grad():
        ref_model(x)
    lowbit.convert(ref_model, fold_batchnorm=False)
    _convert(model, {"quant_cfg": q}, x)
    d = model[0]
    assert isinstance(model[1], nn.Identity) and d._buffers["w_scale1"].shape == (12, 1)
    if wtype == "int8":
        assert d.integer_kernel
    with torch.no_grad():
        y, want = model(x), ref_model(x)
    tol = 1e-5 * float(want.abs().max())
    assert float((y - want).abs().max()) <= tol, (wtype, float((y - want).abs().max()))
    assert_deploy_layers_match(model, x)


def test_opt_out_untraceable_models_and_bad_argument(caplog):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), _trained_bn(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    x = torch.randn(2, 3, 8, 8)
    model = Branchy().eval()
    with caplog.at_level(logging.INFO, logger="lowbit"):
        _convert(model, W4, x)
    assert isinstance(model.bn, nn.BatchNorm2d)
    assert "BatchNorm layers not folded: torch.fx cannot trace the model" in caplog.text
    kept = _convert(Net().eval(), W4, torch.randn(2, 3, 10, 10), fold_batchnorm=False)
    assert isinstance(kept.bn_a, nn.BatchNorm2d) and isinstance(kept.bn_c, nn.BatchNorm2d)
    model = Net().eval()
    lowbit.quantize(model, W4)
    with pytest.raises(TypeError, match="fold_batchnorm: expected True or False, got 'yes'"):
        lowbit.convert(model, fold_batchnorm="yes")
    assert any(type(m).__name__ == "CalibConv2d" for m in model.modules())  # untouched


def test_no_running_statistics_no_fold():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)
    model = _convert(nn.Sequential(conv, bn).eval(), W4, torch.randn(2, 3, 8, 8))
    assert isinstance(model[1], nn.BatchNorm2d)


def test_folded_model_saves_loads_and_traces(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 10)
    model = _convert(Net().eval(), {"quant_cfg": {"weights": {"type": "hifloat8"},
                                                  "inputs": {"type": "hifloat8", "strategy": "tensor"}}}, x)
    lowbit.save(model, tmp_path / "m")
    torch.manual_seed(0)
    fresh = lowbit.load(Net().eval(), tmp_path / "m")
    assert isinstance(fresh.bn_a, nn.Identity) and isinstance(fresh.bn_b, nn.BatchNorm2d)
    assert fresh.conv_c.folded_batchnorm == "bn_c"
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    _, _, y = lowbit.export_torchscript(model, x, tmp_path / "ts")
    with torch.no_grad():
        assert torch.equal(y, model(x))


def test_load_names_a_folded_batchnorm_missing_from_the_model(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    model = _convert(nn.Sequential(nn.Conv2d(3, 4, 3), _trained_bn(4)).eval(), W4, x)
    lowbit.save(model, tmp_path)
    with pytest.raises(ValueError, match="folded BatchNorm '1', which is ReLU in the model"):
        lowbit.load(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), tmp_path)


def test_resnet20_hifp8_folded_keeps_accuracy(shared_data):
    """Real model: HiF8 x HiF8 ResNet-20 with its 19 BatchNorms folded classifies the test
    images like the unfolded one (only activation codes at rounding boundaries can move)."""
    from lowbit.eval import cifar
    x, y = cifar.test_set()
    calib, ev = x[9000:9250], cifar.batches(x[:2000], y[:2000])
    accs, models = [], []
    for fold in (False, True):
        m = cifar.load_resnet(20)
        cfg = copy.deepcopy(lowbit.HIFP8_OFMR_CFG)
        cfg["batch_num"] = 1
        lowbit.quantize(m, cfg)
        with torch.no_grad():
            m(calib)
        lowbit.convert(m, fold_batchnorm=fold)
        accs.append(cifar.top1(m, ev))
        models.append(m)
    assert sum(isinstance(mod, nn.Identity) for mod in models[1].modules()) == 19
    assert sum(isinstance(mod, DeployConv2d) and getattr(mod, "folded_batchnorm", None) is not None
               for mod in models[1].modules()) == 19
    assert abs(accs[1] - accs[0]) <= 0.3, accs
    with torch.no_grad():
        agree = (models[0](x[2000:2500]).argmax(1) == models[1](x[2000:2500]).argmax(1)).float().mean()
    assert agree >= 0.99, float(agree)


@pytest.mark.parametrize("wtype,itype", [("int4", None), ("hifloat8", "hifloat8"), ("int8", "int8")])
def test_bf16_model_folds_within_bf16_rounding(wtype, itype):
    """A bf16 model: the folded bias is stored in bf16 and the decoded weights are rounded
    to bf16 after the multiplier, so the outputs differ from conv -> BatchNorm by bf16
    roundings (about one ulp of the largest output), not more."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1), _trained_bn(12)).eval().to(torch.bfloat16)
    x = torch.randn(2, 16, 9, 9).to(torch.bfloat16)
    q = {"weights": {"type": wtype}}
    if itype:
        q["inputs"] = {"type": itype, "strategy": "tensor"}
    outs = []
    for fold in (False, True):
        m = copy.deepcopy(model)
        lowbit.quantize(m, {"quant_cfg": q})
        with torch.no_grad():
            m(x)
        lowbit.convert(m, fold_batchnorm=fold)
        assert isinstance(m[1], nn.Identity) == fold
        with torch.no_grad():
            outs.append(m(x))
    assert outs[1].dtype == torch.bfloat16
    diff, top = float((outs[0].float() - outs[1].float()).abs().max()), float(outs[0].float().abs().max())
    assert diff <= 2 ** -7 * top, (diff, top)
