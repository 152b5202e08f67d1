"""Deploy modules: convert() turns calibration modules into these. They hold packed
low-bit weights (uint8 codes, scales, offsets; E8M0 bytes for MX) and compute through
the C++ ops; their output equals the calibrated fake-quant output exactly."""
import torch

from lowbit.modules.common import Conv2dMath, LinearMath, QuantLayerBase, fp8_stage


class DeployLayer(QuantLayerBase):
    def __init__(self, calib):
        super().__init__()
        if not calib.calibrated:
            raise ValueError(f"convert: layer '{calib.layer_name}' has seen {int(calib.calib_calls)} of "
                             f"{calib.batch_num} calibration batches")
        ori = calib  # has weight, bias and the metadata
        self._init_common(ori, calib.layer_name, calib.layer_cfg)
        w2d = calib.weight_source()
        self.cols = w2d.shape[1]
        if self.two_level:
            packed = self.wspec.weight_pack(fp8_stage(w2d, calib.w_scale1), calib.w_scale, calib.w_offset)
            self.register_buffer("w_scale1", calib.w_scale1.clone())
        else:
            packed = self.wspec.weight_pack(w2d, calib.w_scale, calib.w_offset)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("w_scale", calib.w_scale.clone())
        self.register_buffer("w_offset", calib.w_offset.clone())
        bias = calib.bias.detach().clone() if calib.bias is not None else None
        self.register_buffer("bias", bias)
        smooth = getattr(calib, "smooth", None)
        self.register_buffer("smooth", smooth.clone() if smooth is not None else None)
        self.register_buffer("recon_error", calib.recon_error.clone())
        if calib.static_act:
            self.register_buffer("act_scale", calib.act_scale.clone())
            self.register_buffer("act_offset", calib.act_offset.clone())

    def weight_dequant(self):
        if self.two_level:
            w8q = self.wspec.weight_unpack(self.weight_packed, self.w_scale, self.w_offset, self.cols, torch.float32)
            return self.two_level_weight(w8q, self.weight_dtype).reshape(self.weight_shape)
        w = self.wspec.weight_unpack(self.weight_packed, self.w_scale, self.w_offset, self.cols, self.weight_dtype)
        return w.reshape(self.weight_shape)

    def forward(self, x):
        return self.compute(self.act_qdq(x), self.weight_dequant(), self.effective_bias(self.bias, x.dtype))

    def packed_bytes(self):
        n = sum(b.numel() * b.element_size() for k, b in self.named_buffers()
                if k in ("weight_packed", "w_scale", "w_scale1"))
        if not self.wspec.symmetric:
            n += self.w_offset.numel() * self.w_offset.element_size()
        return n


class DeployLinear(LinearMath, DeployLayer):
    def __init__(self, calib):
        DeployLayer.__init__(self, calib)
        self.in_features, self.out_features = calib.in_features, calib.out_features


class DeployConv2d(Conv2dMath, DeployLayer):
    def __init__(self, calib):
        DeployLayer.__init__(self, calib)
        self._copy_conv_attrs(calib)
