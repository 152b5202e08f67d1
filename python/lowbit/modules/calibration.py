"""Calibration modules: quantize() replaces Linear/Conv2d layers with these.

A layer that needs activation statistics (static per-tensor activation scales) runs in
float for its first `batch_num` calls while it records them, computes its scales at the
batch_num-th call, and returns fake-quantized output from then on. Layers without that
need (weight-only, dynamic per-token or MX activations, cast) are fake-quantized from the
first call. All state is in registered buffers: a state_dict saved mid-calibration can be
restored and calibration continues.
"""
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.modules.common import Conv2dMath, LinearMath, QuantLayerBase, fp8_row_scales, fp8_stage

log = logging.getLogger("lowbit")


class CalibLayer(QuantLayerBase):
    def __init__(self, ori, layer_name, layer_cfg):
        super().__init__()
        self._init_common(ori, layer_name, layer_cfg)
        self.batch_num = int(layer_cfg["batch_num"])
        # The user's tensors are shared, never modified.
        self.weight = ori.weight
        self.bias = ori.bias
        w = ori.weight.detach()
        # checked in 1M-element pieces: no weight-sized temporary (large models)
        if not all(bool(torch.isfinite(c).all()) for c in w.reshape(-1).split(1 << 20)):
            raise ValueError(f"layer '{layer_name}': weight contains NaN or Inf; quantization would deploy "
                             f"non-finite scales")
        self.register_buffer("calib_calls", torch.zeros((), dtype=torch.int64))
        s1, scale, offset = self._weight_scales(w.reshape(w.shape[0], -1))
        if s1 is not None:
            self.register_buffer("w_scale1", s1)
        self.register_buffer("w_scale", scale)
        self.register_buffer("w_offset", offset)
        self.needs_calibration = self.static_act or self.uses_data
        if self.static_act:
            self.register_buffer("act_min", torch.tensor(float("inf")))
            self.register_buffer("act_max", torch.tensor(float("-inf")))
            self.register_buffer("act_scale", torch.ones(1, 1))
            self.register_buffer("act_offset", torch.zeros(1, 1, dtype=torch.int32))
        self.register_buffer("recon_error", torch.tensor(float("nan"), dtype=torch.float64))
        self.progress = None  # set by quantize(): shared per-layer progress display
        self.init_algorithm()

    # ---- hooks for algorithms (subclasses) ----
    uses_data = False  # the algorithm needs calibration data even without static activation scales

    def init_algorithm(self):
        pass

    def observe_algorithm(self, x):
        pass

    def finalize_algorithm(self):
        """Called once, at the batch_num-th call; may set weight buffers, w_scale, and
        act_scale (then returns True to keep it from the min/max rule)."""
        return False

    @torch.no_grad()
    def output_error(self, x):
        """Relative output MSE of the quantized layer against float on one calibration batch."""
        y = self.compute(x, self.weight, self.bias).double()
        yq = self.compute(self.act_qdq(x), self.weight_fake_quant(), self.effective_bias(self.bias, x.dtype)).double()
        den = float(y.pow(2).sum())
        return float((y - yq).pow(2).sum()) / den if den > 0 else 0.0

    def _weight_scales(self, w2d):
        """(s1 or None, scale, offset) of a [N, K] weight; s1 only for FP8 x FP4."""
        if not self.two_level:
            return (None, *self.wspec.weight_scales(w2d))
        s1 = fp8_row_scales(w2d)
        return (s1, *self.wspec.weight_scales(fp8_stage(w2d, s1)))

    def recompute_weight_scales(self):
        """Weight scales from weight_source() (after an algorithm changed it)."""
        s1, scale, offset = self._weight_scales(self.weight_source())
        if s1 is not None:
            self.w_scale1.copy_(s1)
        self.w_scale.copy_(scale)
        self.w_offset.copy_(offset)

    def weight_source(self):
        """The [N, K] tensor that is quantized (the original weight by default)."""
        return self.weight.detach().reshape(self.weight_shape[0], -1)

    def input_rows(self, x, max_rows=None):
        """Calibration rows [M, K] as the layer's matmul sees them, one tensor per
        convolution group (Linear: the last axis; Conv2d: unfolded patches). With
        ``max_rows``, a convolution unfolds only the first images needed to reach it
        (whole images: no aliasing with positions) and a Linear keeps evenly spaced rows."""
        if isinstance(self, CalibConv2d):
            if max_rows is not None:
                h_out, w_out = self.compute(x[:1], self.weight, None).shape[-2:]
                x = x[: max(1, -(-max_rows // (h_out * w_out)))]
            if self.padding_mode != "zeros":
                x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
                pad = 0
            else:
                pad = self.padding
            cols = F.unfold(x.float(), self.kernel_size, self.dilation, pad, self.stride)  # [B, C*kh*kw, L]
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            kg = rows.shape[1] // self.groups
            return [rows[:, g * kg:(g + 1) * kg] for g in range(self.groups)]
        rows = x.reshape(-1, x.shape[-1]).float()
        if max_rows is not None and rows.shape[0] > max_rows:
            rows = rows[:: -(-rows.shape[0] // max_rows)]
        return [rows]

    @property
    def calibrated(self):
        return not self.needs_calibration or int(self.calib_calls) >= self.batch_num

    def weight_fake_quant(self):
        w2d = self.weight_source()
        if self.two_level:
            w8q = self.wspec.weight_qdq(fp8_stage(w2d, self.w_scale1), self.w_scale, self.w_offset)
            return self.row_scaled_weight(w8q, self.weight_dtype).reshape(self.weight_shape)
        return self.wspec.weight_qdq(w2d, self.w_scale, self.w_offset).to(self.weight_dtype).reshape(self.weight_shape)

    @staticmethod
    def _input_range(xd):
        """(min, max) in one pass; NaN propagates into both."""
        if not xd.numel():
            return xd.new_zeros(()), xd.new_zeros(())
        if xd.dtype == torch.float16:  # (torch 1.13 has no fp16 aminmax on CPU)
            return xd.min(), xd.max()
        return torch.aminmax(xd)

    def checks_finite_itself(self, x):
        """True when observe_algorithm checks x for NaN/Inf (then _observe does not)."""
        return False

    def nonfinite_input_error(self, xd):
        where = f"layer '{self.layer_name}', calibration batch {int(self.calib_calls) + 1}"
        lo, hi = self._input_range(xd)
        if torch.isfinite(lo) and torch.isfinite(hi):  # finite, but its squares overflow float32
            return ValueError(f"{where}: activations too large (up to {max(-float(lo), float(hi)):.3g} in "
                              f"magnitude): their squares overflow float32")
        return ValueError(f"{where}: activations contain NaN or Inf")

    def _observe(self, x):
        xd = x.detach()
        if self.static_act or not self.checks_finite_itself(xd):
            lo, hi = self._input_range(xd)
            if not (torch.isfinite(lo) and torch.isfinite(hi)):
                raise self.nonfinite_input_error(xd)
        if self.static_act and self.algorithm == "quantile":  # EMA of the per-call max |x|
            m = torch.maximum(-lo, hi).float()
            first = int(self.calib_calls) == 0
            self.act_max.copy_(m if first else 0.99 * self.act_max + 0.01 * m)
            self.act_min.copy_(torch.zeros(()))
        elif self.static_act:
            self.act_min.copy_(torch.minimum(self.act_min, lo.float()))
            self.act_max.copy_(torch.maximum(self.act_max, hi.float()))
        self.observe_algorithm(xd)
        self.calib_calls += 1
        if int(self.calib_calls) == self.batch_num:
            t0 = time.perf_counter()
            act_done = self.finalize_algorithm()
            if self.static_act and not act_done:
                scale, offset = self.aspec.static_scale(self.act_min, self.act_max)
                self.act_scale.copy_(scale)
                self.act_offset.copy_(offset)
            self.recon_error.fill_(self.output_error(xd))
            seconds = time.perf_counter() - t0
            log.info("lowbit: %s %r: relative output error %.3g (%.2f s)", self.algorithm, self.layer_name,
                     float(self.recon_error), seconds)
            if self.progress is not None:
                self.progress.layer_done(self.layer_name, float(self.recon_error), seconds)

    deferred = False  # sequential mode: float and no observation until this layer's turn
    fake_quant_weight_cache = None  # sequential mode: weight_fake_quant() while a block's outputs are computed

    def forward(self, x):
        if self.deferred:
            return self.compute(x, self.weight, self.bias)
        if not self.calibrated:
            self._observe(x)
            return self.compute(x, self.weight, self.bias)
        w = self.fake_quant_weight_cache
        return self.compute(self.act_qdq(x), self.weight_fake_quant() if w is None else w,
                            self.effective_bias(self.bias, x.dtype))


class CalibLinear(LinearMath, CalibLayer):
    def __init__(self, ori, layer_name, layer_cfg):
        CalibLayer.__init__(self, ori, layer_name, layer_cfg)
        self.in_features, self.out_features = ori.in_features, ori.out_features


class CalibConv2d(Conv2dMath, CalibLayer):
    def __init__(self, ori, layer_name, layer_cfg):
        CalibLayer.__init__(self, ori, layer_name, layer_cfg)
        self._copy_conv_attrs(ori)
