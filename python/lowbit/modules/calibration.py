"""Calibration modules: quantize() replaces Linear/Conv2d layers with these.

A layer that needs activation statistics (static per-tensor activation scales) runs in
float for its first `batch_num` calls while it records them, computes its scales at the
batch_num-th call, and returns fake-quantized output from then on. Layers without that
need (weight-only, dynamic per-token or MX activations, cast) are fake-quantized from the
first call. All state is in registered buffers: a state_dict saved mid-calibration can be
restored and calibration continues.

A calibration batch is checked before any statistic changes (its shape, that it is not
empty, that it is finite, and the algorithm's own limits such as the float32 Hessian's
range): a rejected batch is a ValueError naming the layer and leaves no trace, so
calibration goes on with the next batch as if the rejected one had never come.
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
        self.bias_correction = bool(layer_cfg.get("bias_correction", False))
        self.needs_calibration = self.static_act or self.uses_data or self.bias_correction
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

    def quantized_output(self, x):
        """The calibrated layer's (fake-quantized) output on ``x``."""
        return self.compute(self.act_qdq(x), self.weight_fake_quant(), self.effective_bias(self.bias, x.dtype))

    @torch.no_grad()
    def output_error(self, x, y=None):
        """Relative output MSE of the quantized layer against float on one calibration batch
        (``y``: the float output, when the caller already has it)."""
        y = (self.compute(x, self.weight, self.bias) if y is None else y).double()
        yq = self.quantized_output(x).double()
        den = float(y.pow(2).sum())
        return float((y - yq).pow(2).sum()) / den if den > 0 else 0.0

    @torch.no_grad()
    def correct_bias(self, x):
        """Empirical bias correction: the bias (a new tensor; the user's is not modified, a
        bias-free layer gets one) minus the mean per-output change that quantization
        causes on calibration batch ``x``, so the quantized layer's outputs have the float
        layer's mean there. For INT8 x INT8 the corrected bias is then rounded to int32.
        Returns the float layer's output on x (with the bias it had before)."""
        y_float = self.compute(x, self.weight, self.bias)
        y, yq = y_float.double(), self.quantized_output(x).double()
        channel_dim = self.channel_dim % y.dim()
        dims = [d for d in range(y.dim()) if d != channel_dim]
        shift = (y - yq).mean(dims)
        base = torch.zeros_like(shift) if self.bias is None else self.bias.detach().double()
        self.bias = nn.Parameter((base + shift).to(self.weight_dtype), requires_grad=False)
        return y_float

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

    def input_rows(self, x, max_rows=None, spread=False):
        """Calibration rows [M, K] as the layer's matmul sees them, one tensor per
        convolution group (Linear: the last axis; Conv2d: unfolded patches). With
        ``max_rows``, a Linear keeps evenly spaced rows; a convolution unfolds only the
        first images needed to reach it (whole images: no aliasing with positions) or, with
        ``spread``, gathers max_rows patches from all over the batch (spread_patches)."""
        rows = x.reshape(-1, x.shape[-1]).float()
        if max_rows is not None and rows.shape[0] > max_rows:
            rows = rows[:: -(-rows.shape[0] // max_rows)]
        return [rows]

    def input_row_count(self, x):
        """How many rows input_rows(x) gives without max_rows (what a sample stands for)."""
        return x.numel() // max(x.shape[-1], 1)

    channel_dim = -1  # the output axis of the output channels

    def as_batch(self, x):
        """x as the layer's calibration code takes it (a Conv2d: unbatched images get a batch axis)."""
        return x

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

    def error_prefix(self):
        """'layer NAME', plus the calibration batch while the layer collects statistics."""
        if self.deferred or self.calibrated:
            return f"layer '{self.layer_name}'"
        return f"layer '{self.layer_name}', calibration batch {int(self.calib_calls) + 1}"

    def input_shape_error(self, x):
        """Why the layer cannot take an input of x's shape (None when it can)."""
        return None

    def nonfinite_input_error(self, xd, lo=None, hi=None):
        if lo is None:
            lo, hi = self._input_range(xd)
        if torch.isfinite(lo) and torch.isfinite(hi):  # finite, but too large for check_observation
            amax = max(-float(lo), float(hi))
            return ValueError(f"{self.error_prefix()}: activations too large (up to {amax:.3g} in magnitude): "
                              f"their sums of squares would overflow the float32 Hessian")
        return ValueError(f"{self.error_prefix()}: activations contain NaN or Inf")

    def check_observation(self, x, lo, hi):
        """Raises when the algorithm's statistics cannot take x (finite, non-empty, of the
        right shape, with min lo and max hi); called before anything changes."""

    def _observe(self, x):
        xd = x.detach()
        if xd.numel() == 0:  # no rows: a layer finalized on it would have seen nothing
            raise ValueError(f"{self.error_prefix()}: empty input (shape {list(xd.shape)})")
        xd = self.as_batch(xd)
        # every check before the first statistic changes: a rejected batch leaves no trace
        lo, hi = self._input_range(xd)
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise self.nonfinite_input_error(xd, lo, hi)
        self.check_observation(xd, lo, hi)
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
            # the error against the float layer as it was (before a corrected bias)
            y_float = self.correct_bias(xd) if self.bias_correction else None
            self.recon_error.fill_(self.output_error(xd, y_float))
            seconds = time.perf_counter() - t0
            log.info("lowbit: %s %r: relative output error %.3g (%.2f s)", self.algorithm, self.layer_name,
                     float(self.recon_error), seconds)
            if self.progress is not None:
                self.progress.layer_done(self.layer_name, float(self.recon_error), seconds)

    deferred = False  # sequential mode: float and no observation until this layer's turn
    fake_quant_weight_cache = None  # sequential mode: weight_fake_quant() while a block's outputs are computed

    def forward(self, x):
        problem = self.input_shape_error(x)
        if problem is not None:
            raise ValueError(f"{self.error_prefix()}: {problem}")
        if self.deferred:
            return self.compute(x, self.weight, self.bias)
        if not self.calibrated:
            self._observe(x)
            return self.compute(x, self.weight, self.bias)
        w = self.fake_quant_weight_cache
        return self.compute(self.act_qdq(x), self.weight_fake_quant() if w is None else w,
                            self.effective_bias(self.bias, x.dtype))


class CalibLinear(LinearMath, CalibLayer):
    layer_type = "Linear"  # the algorithm table's name of the layer type (what algorithms may ask)

    def __init__(self, ori, layer_name, layer_cfg):
        CalibLayer.__init__(self, ori, layer_name, layer_cfg)
        self.in_features, self.out_features = ori.in_features, ori.out_features

    def input_shape_error(self, x):
        if x.dim() == 0:
            return "expected an input of at least 1 dimension, got shape []"
        k = self.weight_shape[1]
        if x.shape[-1] != k:
            return f"input width {x.shape[-1]} (shape {list(x.shape)}) does not match in_features {k}"
        return None


class CalibConv2d(Conv2dMath, CalibLayer):
    layer_type = "Conv2d"

    def __init__(self, ori, layer_name, layer_cfg):
        CalibLayer.__init__(self, ori, layer_name, layer_cfg)
        self._copy_conv_attrs(ori)

    def input_shape_error(self, x):
        if x.dim() not in (3, 4):
            return f"expected a 3-D or 4-D input, got shape {list(x.shape)}"
        channels = self.weight_shape[1] * self.groups
        if x.shape[-3] != channels:
            return f"input has {x.shape[-3]} channels (shape {list(x.shape)}), expected in_channels {channels}"
        return None

    channel_dim = 1

    def as_batch(self, x):
        return x.unsqueeze(0) if x.dim() == 3 else x  # an unbatched image: a batch of one

    def input_rows(self, x, max_rows=None, spread=False):
        if max_rows is not None and spread:
            rows = self.spread_patches(x, max_rows)
        else:
            if max_rows is not None:
                x = x[: self.images_for_rows(x, max_rows)]
            cols = F.unfold(self.conv_padded(x.float()), self.kernel_size, self.dilation, 0, self.stride)
            rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [B * L, C*kh*kw]
        kg = rows.shape[1] // self.groups
        return [rows[:, g * kg:(g + 1) * kg] for g in range(self.groups)]

    def input_row_count(self, x):
        h_out, w_out = self.output_hw(*x.shape[-2:])
        return x.shape[0] * h_out * w_out

    def output_hw(self, h, w):
        """The output's spatial size for an [.., h, w] input."""
        if self.padding == "same":
            return h, w
        pad = (0, 0) if self.padding == "valid" else self.padding
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, p, d, k, s in zip((h, w), pad, self.dilation, self.kernel_size, self.stride))

    def conv_padded(self, x):
        """x with the convolution's padding applied (any padding_mode, 'same' included)."""
        pads = self._reversed_padding_repeated_twice
        if not any(pads):
            return x
        return F.pad(x, pads, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)

    def spread_patches(self, x, max_rows):
        """[min(max_rows, B * L), C*kh*kw] rows of the unfolded x (B images of L output
        positions), spread over the whole batch: the B * L (image, position) pairs in order
        are cut into max_rows equal strata and one pair is taken from each, at a fixed
        pseudo-random offset (evenly spread over images and positions, no aliasing with the
        output width). Only those patches are gathered: nothing is unfolded in full."""
        h_out, w_out = self.output_hw(*x.shape[-2:])
        per_image = h_out * w_out
        total = x.shape[0] * per_image
        xp = self.conv_padded(x.float())
        if total <= max_rows:
            idx = torch.arange(total)
        else:
            g = torch.Generator().manual_seed(22)  # fixed: the same shapes give the same rows
            u = torch.rand(max_rows, generator=g, dtype=torch.float64)
            idx = ((torch.arange(max_rows, dtype=torch.float64) + u) * (total / max_rows)).long().clamp_(max=total - 1)
        img, pos = idx // per_image, idx % per_image
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        hh = (pos // w_out * sh).unsqueeze(1) + torch.arange(kh) * dh  # [M, kh] input rows of each patch
        ww = (pos % w_out * sw).unsqueeze(1) + torch.arange(kw) * dw   # [M, kw] input columns
        patches = xp[img.reshape(-1, 1, 1), :, hh.unsqueeze(2), ww.unsqueeze(1)]  # [M, kh, kw, C]
        return patches.permute(0, 3, 1, 2).reshape(len(idx), -1)  # F.unfold's (c, i, j) order

    def images_for_rows(self, x, max_rows):
        """How many of x's first (whole) images input_rows unfolds to reach max_rows rows."""
        h_out, w_out = self.output_hw(*x.shape[-2:])
        return min(x.shape[0], max(1, -(-max_rows // max(h_out * w_out, 1))))
