"""The quantized computation shared by calibration and deploy modules. Both classes
call the same code with the same tensors (deploy gets its weight from unpack(), which
is bit-identical to the QDQ weight), so deploy output equals calibrated fake-quant
output exactly."""
import torch
import torch.nn.functional as F
from torch import nn

from lowbit import formats
from lowbit.modules.qspec import QSpec

INT32_MAX = 2 ** 31 - 1


def fp8_row_scales(w2d):
    """FP8 x FP4 first level: s1[n] = rowabsmax / 448, guarded like every scale."""
    s1 = w2d.float().abs().amax(dim=1, keepdim=True) / 448.0
    return torch.where((s1 < 1.192092896e-7) | ~torch.isfinite(s1), torch.ones_like(s1), s1)


def fp8_stage(w2d, s1):
    """W8 = fp8(W / s1), the values the FP4 second level quantizes."""
    return formats.decode(formats.encode(w2d.float() / s1, "float8_e4m3fn"), "float8_e4m3fn")


class QuantLayerBase(nn.Module):
    """Common state: layer name, specs, activation quantization parameters."""

    def _init_common(self, ori, layer_name, layer_cfg):
        self.layer_name = layer_name
        self.layer_cfg = layer_cfg
        self.wspec = QSpec.from_dict(layer_cfg["weights"])
        self.aspec = QSpec.from_dict(layer_cfg["inputs"]) if layer_cfg.get("inputs") else None
        self.algorithm = layer_cfg["algorithm"]
        self.weight_shape = tuple(ori.weight.shape)
        self.weight_dtype = ori.weight.dtype
        self.two_level = self.aspec is not None and self.aspec.fmt == "float8_e4m3fn" and self.wspec.fmt == "float4_e2m1"
        # static per-tensor activation scale, from calibration statistics
        self.static_act = (self.aspec is not None and self.aspec.strategy == "tensor" and not self.aspec.is_mx
                           and self.algorithm != "cast")
        self.groups = getattr(ori, "groups", 1)
        self.int32_bias = self.static_act and self.aspec.fmt == "int8" and ori.bias is not None
        self._unit = torch.ones(1, 1)  # the HiF8 cast's scale (and the integer kernels' unused ones)

    def extra_repr(self):
        a = self.aspec.label() if self.aspec else "weight-only"
        return f"{self.layer_name!r}, weights={self.wspec.label()}, inputs={a}, algorithm={self.algorithm}"

    # ---- activations ----
    def smoothed(self, x):
        """AWQ / SmoothQuant: x / s (the weight holds W * s)."""
        smooth = getattr(self, "smooth", None)
        return x if smooth is None else x / smooth.to(x.dtype)

    def activation_rule(self):
        """How the activations are quantized, or None: (format, granularity, group size,
        symmetric, scale, offset), scale and offset None for a rule computed from x itself.
        Calibration's fake quantization and the deploy ops both take it from here."""
        a = self.aspec
        if a is None:
            return None
        if self.static_act:  # per tensor, from calibration statistics
            return a.fmt, "tensor", 0, a.symmetric, self.act_scale, self.act_offset
        if self.algorithm == "cast":  # HiF8 cast: scale 1
            return a.fmt, "tensor", 0, True, self._unit, None
        return a.fmt, a.strategy, a.gs, a.symmetric, None, None  # dynamic: per token, or MX blocks

    def act_only(self, x):
        """Activation fake quantization by activation_rule()."""
        rule = self.activation_rule()
        if rule is None:
            return x
        fmt, granularity, group_size, symmetric, scale, offset = rule
        return formats.fake_quant(x, fmt, granularity, group_size, symmetric, scale=scale, offset=offset)

    def act_qdq(self, x):
        return self.act_only(self.smoothed(x))

    # ---- bias ----
    def effective_bias(self, bias, dtype):
        """Float bias, or for INT8 x INT8 with a static per-tensor activation scale the
        bias quantized to int32 with scale s_x * s_w (what an integer kernel adds)."""
        if bias is None or not self.int32_bias:
            return bias
        s = self.act_scale.reshape(()) * self.w_scale.reshape(-1)
        q = torch.clamp(torch.round(bias.float() / s), -INT32_MAX - 1, INT32_MAX)
        return (q * s).to(dtype)

    def row_scaled_weight(self, w, dtype):
        """Rows of an fp32 weight times w_scale1 (FP8 x FP4's first level, or a BatchNorm
        folded by convert), then rounded to dtype: what the kernels decode."""
        return (w * self.w_scale1).to(dtype)

    def compute(self, x, w, bias):
        raise NotImplementedError


def _fp32_for_cpu_half(fn, x, w, bias, also_bf16=False):
    """torch's CPU kernels have no float16 matmul/convolution: compute those in float32
    (float32 accumulation) and return float16. ``also_bf16``: the same for bfloat16
    (torch 1.13's bf16 convolution on CPUs without AVX-512 rounds partial sums to bf16,
    5x the error of one rounding at the end; the deploy kernels accumulate in fp32)."""
    if (x.dtype == torch.float16 or (also_bf16 and x.dtype == torch.bfloat16)) and x.device.type == "cpu":
        b = None if bias is None else bias.float()
        return fn(x.float(), w.float(), b).to(x.dtype)
    return fn(x, w, bias)


class LinearMath:
    def compute(self, x, w, bias):
        return _fp32_for_cpu_half(F.linear, x, w, bias)


class Conv2dMath:
    def compute(self, x, w, bias):
        return _fp32_for_cpu_half(lambda a, b, c: nn.Conv2d._conv_forward(self, a, b, c), x, w, bias, also_bf16=True)

    def _copy_conv_attrs(self, ori):
        for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                  "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, k, getattr(ori, k))
