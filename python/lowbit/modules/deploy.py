"""Deploy modules: convert() turns calibration modules into these. They hold packed
low-bit weights (uint8 codes, scales, offsets; E8M0 bytes for MX) and multiply with them
directly in C++ (torch.ops.lowbit.linear_packed, or linear_int8 for INT8 x INT8; both
quantize the activations inside the op): no float copy of the weight is made. Their output equals the calibrated fake-quant output up to
the order of the fp32 summation (``reference_forward`` computes the latter, for tests).

Convolutions run in C++ too (torch.ops.lowbit.conv2d_packed / conv2d_int8, activations
quantized inside): input patches are packed straight into the GEMM tiles, one product per
group, NCHW output.
Everything in ``forward`` is a torch op, so deploy models can be traced and run from C++.
"""
import torch
import torch.nn.functional as F
from torch import nn

from lowbit import _C
from lowbit.modules.common import Conv2dMath, LinearMath, QuantLayerBase, fp8_stage

_OPS = torch.ops.lowbit
NO_ACTIVATION_QUANT = ("", "tensor", 0, True, None, None)  # the ops' activation arguments: none


class DeployLayer(QuantLayerBase):
    def __init__(self, calib):
        super().__init__()
        if not calib.calibrated:
            raise ValueError(f"convert: layer '{calib.layer_name}' has seen {int(calib.calib_calls)} of "
                             f"{calib.batch_num} calibration batches")
        self._init_common(calib, calib.layer_name, calib.layer_cfg)
        self.int32_bias = calib.int32_bias  # (the float layer's bias decides, not one bias_correction added)
        w2d = calib.weight_source()
        self.cols = w2d.shape[1]
        if self.two_level:
            packed = self.wspec.weight_pack(fp8_stage(w2d, calib.w_scale1), calib.w_scale, calib.w_offset)
            self.register_buffer("w_scale1", calib.w_scale1.clone())
        else:
            packed = self.wspec.weight_pack(w2d, calib.w_scale, calib.w_offset)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("w_scale", calib.w_scale.clone())
        # symmetric formats have no offsets: nothing is stored
        self.register_buffer("w_offset", calib.w_offset.clone() if not self.wspec.symmetric
                             else torch.zeros(0, dtype=torch.int32))
        bias = calib.bias.detach().clone() if calib.bias is not None else None
        self.register_buffer("bias", bias)
        smooth = getattr(calib, "smooth", None)
        self.register_buffer("smooth", smooth.clone() if smooth is not None else None)
        self.register_buffer("recon_error", calib.recon_error.clone())
        if calib.static_act:
            self.register_buffer("act_scale", calib.act_scale.clone())
            self.register_buffer("act_offset", calib.act_offset.clone())
        self._finish_init(is_conv=hasattr(calib, "kernel_size"))

    def _finish_init(self, is_conv):
        a, w = self.aspec, self.wspec
        # The capability table decides (config/capabilities.cpp): INT8 activations x INT8/INT4
        # weights run as an integer product when every output channel has one weight scale
        # and the activation rows are the kernel's rows (per token only on a Linear).
        self.integer_kernel = a is not None and _C.uses_integer_kernel(is_conv, w.to_dict(), a.to_dict())
        self._build_op_args()

    STORED = ("weight_packed", "w_scale", "w_offset", "w_scale1", "bias", "smooth", "recon_error", "act_scale",
              "act_offset")

    @classmethod
    def from_stored(cls, ori, layer_name, layer_cfg, weight_dtype, stored, folded_batchnorm=None):
        """A deploy layer built from saved tensors alone (``stored``: {buffer name: tensor},
        checked by lowbit's saved-model validator) and the float layer's shape: no float
        weight is read, so ``ori`` may live on the meta device. Raises ValueError when a
        tensor the settings need is missing or one they exclude is present."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._init_common(ori, layer_name, layer_cfg)
        self.weight_dtype = weight_dtype
        k = 1
        for d in self.weight_shape[1:]:
            k *= d
        self.cols = k
        need = {"weight_packed", "w_scale", "w_offset", "recon_error"}
        if ori.bias is not None or folded_batchnorm:
            need.add("bias")
        if self.static_act:
            need |= {"act_scale", "act_offset"}
        if self.two_level or folded_batchnorm:
            need.add("w_scale1")
        allowed = need | {"smooth", "bias"}  # a bias-free layer gets one from bias_correction
        missing, extra = sorted(need - set(stored)), sorted(set(stored) - allowed)
        if missing or extra:
            raise ValueError(f"layer '{layer_name}': stored tensors do not match its settings: missing {missing}, "
                             f"unexpected {extra}")
        for name in cls.STORED:
            if name in stored or name in ("bias", "smooth"):
                self.register_buffer(name, stored.get(name))
        if folded_batchnorm:
            self.folded_batchnorm = folded_batchnorm
            self.int32_bias = False
        if hasattr(ori, "kernel_size"):
            self._copy_conv_attrs(ori)
        else:
            self.in_features, self.out_features = ori.in_features, ori.out_features
        self._finish_init(is_conv=hasattr(ori, "kernel_size"))
        return self

    def _build_op_args(self):
        """The op arguments that depend on the weight's format and dtype (again after
        lowbit.load sets the saved weight dtype)."""
        w = self.wspec
        self._weight_args = (w.fmt, w.strategy, w.gs, w.symmetric, self.cols, self.weight_dtype)

    def _register_plan(self, kernel, quantize_inside=True):
        """The op plan (deploy_plan, read by linear_deploy / conv2d_deploy on every call):
        ``kernel`` 0 packed, 1 integer, 2 the 8-bit compute mode; the product's spec; where
        a static activation scale comes from (the layer's buffers, or scale 1 for the HiF8
        cast); whether the bias is rounded to int32 steps. ``quantize_inside`` False: the
        activations are quantized before the op (a Conv2d's explicit padding). Converting
        these from Python on every call cost 2 us, a third of a small layer's call; the
        plan is rebuilt with the op arguments and never saved."""
        act = self.activation_args() if quantize_inside else NO_ACTIVATION_QUANT
        spec = _OPS.linear_packed_spec(*self._weight_args, *act[:4])
        if not quantize_inside:
            source = 0
        elif self.static_act:
            source = 1
        elif kernel == 0 and self.aspec is not None and self.algorithm == "cast":
            source = 2
        else:
            source = 0
        self.register_buffer("op_plan", _OPS.deploy_plan(spec, kernel, source, self.int32_bias), persistent=False)

    def extra_repr(self):
        bn = getattr(self, "folded_batchnorm", None)
        return super().extra_repr() + (f", batchnorm={bn!r} folded" if bn else "")

    def weight_dequant(self):
        if self._buffers.get("w_scale1") is not None:  # FP8 x FP4, or a folded BatchNorm: rows times s1
            w = self.wspec.weight_unpack(self.weight_packed, self.w_scale, self.w_offset, self.cols, torch.float32)
            return self.row_scaled_weight(w, self.weight_dtype).reshape(self.weight_shape)
        w = self.wspec.weight_unpack(self.weight_packed, self.w_scale, self.w_offset, self.cols, self.weight_dtype)
        return w.reshape(self.weight_shape)

    def fold_output_affine(self, mult, shift):
        """Makes the layer compute mult * y + shift per output channel (convert's BatchNorm
        folding). mult joins the per-row weight multiplier w_scale1, which every kernel
        applies as it decodes a row (the integer kernels take it in their weight scale), and
        the bias becomes mult * bias + shift, kept in float: the codes do not change."""
        n = self.weight_shape[0]
        mult, shift = mult.float().reshape(n, 1), shift.float().reshape(n)
        s1 = self._buffers.get("w_scale1")
        self.register_buffer("w_scale1", mult.clone() if s1 is None else s1 * mult)
        bias = self.effective_bias(self._buffers["bias"], torch.float32)
        bias = shift if bias is None else bias.float() * mult.reshape(n) + shift
        self.register_buffer("bias", bias.to(self.weight_dtype))
        self.int32_bias = False
        self._build_op_args()

    def reference_forward(self, x):
        """The fake-quant computation with a dequantized weight (what calibration returns),
        which forward() equals up to the order of the fp32 summation. One exception: the
        integer kernel dequantizes 16-bit activations in fp32 (exact int32 sums, one scale
        per output), so its reference keeps the activation QDQ in fp32 instead of rounding
        every dequantized activation to bf16/fp16 as the 16-bit fake-quant does."""
        if self.integer_kernel and x.dtype != torch.float32:
            b = self.effective_bias(self.bias, torch.float32)
            y = self.compute(self.act_qdq(x.float()), self.weight_dequant().float(), None if b is None else b.float())
            return y.to(x.dtype)
        return self.compute(self.act_qdq(x), self.weight_dequant(), self.effective_bias(self.bias, x.dtype))

    def activation_args(self):
        """The activation fake quantization linear_packed applies inside the op:
        activation_rule(), or format '' for none (also for the integer kernels, which
        quantize the activations by their own arguments)."""
        rule = self.activation_rule()
        return NO_ACTIVATION_QUANT if rule is None or self.integer_kernel else rule

    _compute_int8 = False

    @property
    def compute_int8(self):
        """The opt-in 8-bit compute mode (convert(compute="int8") / lowbit.set_compute)."""
        return self._compute_int8

    @compute_int8.setter
    def compute_int8(self, on):
        self._compute_int8 = bool(on)
        self._build_op_args()

    def compute_int8_skip_reason(self):
        """Why the 8-bit compute mode leaves this layer exact ('' when it takes it); the
        rule is the capability table's (config/capabilities.cpp)."""
        return _C.compute_int8_skip_reason(hasattr(self, "kernel_size"), self.wspec.to_dict(),
                                           None if self.aspec is None else self.aspec.to_dict(), self.cols,
                                           self._buffers.get("w_scale1") is not None)

    def packed_bytes(self):
        return sum(b.numel() * b.element_size() for k, b in self.named_buffers()
                   if k in ("weight_packed", "w_scale", "w_scale1", "w_offset"))


class DeployLinear(LinearMath, DeployLayer):
    def __init__(self, calib):
        DeployLayer.__init__(self, calib)
        self.in_features, self.out_features = calib.in_features, calib.out_features

    def _build_op_args(self):
        # (again when the weight dtype, the compute mode or a folded BatchNorm changes)
        super()._build_op_args()
        self._register_plan(2 if self.compute_int8 else 1 if self.integer_kernel else 0)

    def forward(self, x):
        b = self._buffers
        # (the op divides x by the AWQ / SmoothQuant factors when `smooth` is given)
        return _OPS.linear_deploy(x, b["weight_packed"], b["w_scale"], b["w_offset"], b.get("w_scale1"), b["bias"],
                                  b["op_plan"], b.get("act_scale"), b.get("act_offset"), b["smooth"])


class DeployConv2d(Conv2dMath, DeployLayer):
    def __init__(self, calib):
        DeployLayer.__init__(self, calib)
        self._copy_conv_attrs(calib)
        self._build_op_args()  # (the first call, from DeployLayer, came before the geometry was known)

    def _build_op_args(self):
        # The plan as for DeployLinear (conv2d_deploy reads it) and the geometry as one int64
        # tensor. Explicit padding (reflect, replicate, circular, "same") happens in forward,
        # with the float activations quantized before it, as calibration does; the integer
        # kernel quantizes the padded input itself.
        super()._build_op_args()
        if not hasattr(self, "kernel_size"):
            return
        self._explicit_pad = self.padding_mode != "zeros" or isinstance(self.padding, str)
        self._quant_before_pad = self._explicit_pad and not self.integer_kernel and self.aspec is not None
        self._register_plan(1 if self.integer_kernel else 0, quantize_inside=not self._quant_before_pad)
        pad = (0, 0) if self._explicit_pad else tuple(self.padding)
        self.register_buffer("conv_geometry", torch.tensor(
            [*self.kernel_size, *self.stride, *pad, *self.dilation, self.groups], dtype=torch.long), persistent=False)

    def forward(self, x):
        b = self._buffers
        x = self.smoothed(x)
        if self._explicit_pad:
            x = _pad(self.act_only(x) if self._quant_before_pad else x, self._reversed_padding_repeated_twice,
                     self.padding_mode)
        return _OPS.conv2d_deploy(x, b["weight_packed"], b["w_scale"], b["w_offset"], b.get("w_scale1"), b["bias"],
                                  b["op_plan"], b["conv_geometry"], b.get("act_scale"), b.get("act_offset"))


def _pad(x, pads, padding_mode):
    """F.pad for a Conv2d's padding mode. torch 1.13 has no bf16/fp16 reflection or
    replication padding on CPU: those pad in float32, which copies values exactly."""
    mode = "constant" if padding_mode == "zeros" else padding_mode
    if mode in ("reflect", "replicate") and x.dtype in (torch.bfloat16, torch.float16):
        return F.pad(x.float(), pads, mode=mode).to(x.dtype)
    return F.pad(x, pads, mode=mode)
