"""Calibration modules: quantize() replaces Linear/Conv2d layers with these.

A layer that needs activation statistics (static per-tensor activation scales) runs in
float for its first `batch_num` calls while it records them, computes its scales at the
batch_num-th call, and returns fake-quantized output from then on. Layers without that
need (weight-only, dynamic per-token or MX activations, cast) are fake-quantized from the
first call. All state is in registered buffers: a state_dict saved mid-calibration can be
restored and calibration continues.
"""
import torch
from torch import nn

from lowbit import formats
from lowbit.modules.common import Conv2dMath, LinearMath, QuantLayerBase


class CalibLayer(QuantLayerBase):
    def __init__(self, ori, layer_name, layer_cfg):
        super().__init__()
        self._init_common(ori, layer_name, layer_cfg)
        self.batch_num = int(layer_cfg["batch_num"])
        # The user's tensors are shared, never modified.
        self.weight = ori.weight
        self.bias = ori.bias
        w = ori.weight.detach()
        if not torch.isfinite(w).all():
            raise ValueError(f"layer '{layer_name}': weight contains NaN or Inf; quantization would deploy "
                             f"non-finite scales")
        self.register_buffer("calib_calls", torch.zeros((), dtype=torch.int64))
        w2d = w.reshape(w.shape[0], -1)
        if self.two_level:
            s1 = w2d.float().abs().amax(dim=1, keepdim=True) / 448.0
            s1 = torch.where((s1 < 1.192092896e-7) | ~torch.isfinite(s1), torch.ones_like(s1), s1)
            self.register_buffer("w_scale1", s1)
            w8 = formats.decode(formats.encode(w2d.float() / s1, "float8_e4m3fn"), "float8_e4m3fn")
            scale, offset = self.wspec.weight_scales(w8)
        else:
            scale, offset = self.wspec.weight_scales(w2d)
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_offset", offset)
        self.needs_calibration = self.static_act
        if self.needs_calibration:
            self.register_buffer("act_min", torch.tensor(float("inf")))
            self.register_buffer("act_max", torch.tensor(float("-inf")))
            self.register_buffer("act_scale", torch.ones(1, 1))
            self.register_buffer("act_offset", torch.zeros(1, 1, dtype=torch.int32))

    @property
    def calibrated(self):
        return not self.needs_calibration or int(self.calib_calls) >= self.batch_num

    def weight_fake_quant(self):
        w2d = self.weight.detach().reshape(self.weight_shape[0], -1)
        if self.two_level:
            w8 = formats.decode(formats.encode(w2d.float() / self.w_scale1, "float8_e4m3fn"), "float8_e4m3fn")
            w8q = self.wspec.weight_qdq(w8, self.w_scale, self.w_offset)
            return self.two_level_weight(w8q, self.weight_dtype).reshape(self.weight_shape)
        return self.wspec.weight_qdq(w2d, self.w_scale, self.w_offset).reshape(self.weight_shape)

    def _observe(self, x):
        xd = x.detach()
        if not torch.isfinite(xd).all():
            raise ValueError(f"layer '{self.layer_name}', calibration batch {int(self.calib_calls) + 1}: "
                             f"activations contain NaN or Inf")
        if self.algorithm == "quantile":  # exponential moving average of the per-call max |x|
            m = xd.abs().max().float()
            first = int(self.calib_calls) == 0
            self.act_max.copy_(m if first else 0.99 * self.act_max + 0.01 * m)
            self.act_min.copy_(torch.zeros(()))
        else:
            self.act_min.copy_(torch.minimum(self.act_min, xd.min().float()))
            self.act_max.copy_(torch.maximum(self.act_max, xd.max().float()))
        self.calib_calls += 1
        if int(self.calib_calls) == self.batch_num:
            scale, offset = self.aspec.static_scale(self.act_min, self.act_max)
            self.act_scale.copy_(scale)
            self.act_offset.copy_(offset)

    def forward(self, x):
        if not self.calibrated:
            self._observe(x)
            return self.compute(x, self.weight, self.bias)
        return self.compute(self.act_qdq(x), self.weight_fake_quant(),
                            self.effective_bias(self.bias, x.dtype))


class CalibLinear(LinearMath, CalibLayer):
    def __init__(self, ori, layer_name, layer_cfg):
        CalibLayer.__init__(self, ori, layer_name, layer_cfg)
        self.in_features, self.out_features = ori.in_features, ori.out_features


class CalibConv2d(Conv2dMath, CalibLayer):
    def __init__(self, ori, layer_name, layer_cfg):
        CalibLayer.__init__(self, ori, layer_name, layer_cfg)
        self._copy_conv_attrs(ori)
