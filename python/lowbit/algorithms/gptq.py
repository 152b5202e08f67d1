"""GPTQ calibration modules (the solver is csrc/algorithms/gptq.cpp)."""
import torch

from lowbit.algorithms.hessian import HessianMixin

# Measured on stories260K (see the closing notes of issue 4): act-order on, group
# scales taken when a group is reached (not upfront), damping 1% of mean diag(H).
DEFAULTS = {"act_order": True, "static_groups": False, "damp": 0.01, "block_size": 128}


class GPTQ(HessianMixin):
    """GPTQ for every layer type of its table row (lowbit.algorithms builds GPTQLinear and
    GPTQConv2d from it)."""

    uses_data = True

    def init_algorithm(self):
        self.init_hessian()
        # GPTQ's result lies on the format grid: it is kept packed (unpack gives it back
        # exactly), not as a second float copy of the weight
        self.register_buffer("weight_q_packed", torch.zeros(0, dtype=torch.uint8))
        if self.wspec.strategy == "tensor" and self.groups > 1:
            raise NotImplementedError(f"layer '{self.layer_name}': GPTQ with one tensor scale on a grouped "
                                      f"convolution is not supported; use strategy 'channel' or 'group'")

    def observe_algorithm(self, x):
        self.observe_hessian(x)

    def solve(self, w, h):
        """GPTQ of weight rows ``w`` [n, K] given the Hessian ``h``: (the rows on the grid,
        their scales, their offsets). Rows are independent given h (lowbit.distributed
        solves slices of them on different ranks)."""
        opts = {**DEFAULTS, **(self.layer_cfg.get("params") or {})}
        return torch.ops.lowbit.gptq_quantize(
            w, h, self.wspec.fmt, self.wspec.strategy, self.wspec.group_size, self.wspec.symmetric,
            float(opts["damp"]), bool(opts["act_order"]), bool(opts["static_groups"]), int(opts["block_size"]),
            self.layer_type == "Linear",  # the clipping search: Linear layers only (see gptq.cpp)
            self.wspec.scale_dtype, self.wspec.scale_rule)

    def finalize_algorithm(self):
        self.finish_hessian()
        qs, scales, offsets = [], [], []
        for rows, w, h in self.group_weights():
            q, s, o = self.solve(w, h)
            qs.append(q)
            scales.append(s)
            offsets.append(o)
        self.w_scale.copy_(torch.cat(scales).reshape(self.w_scale.shape))
        self.w_offset.copy_(torch.cat(offsets).reshape(self.w_offset.shape))
        self.weight_q_packed = self.wspec.weight_pack(torch.cat(qs), self.w_scale, self.w_offset)
        self.free_hessian()
        return False

    def weight_fake_quant(self):
        if self.weight_q_packed.numel() == 0 or self.two_level:
            return super().weight_fake_quant()
        # the solved weight is on the grid already: unpacking it is its fake quantization
        return self.weight_source().to(self.weight_dtype).reshape(self.weight_shape)

    def weight_source(self):
        if self.weight_q_packed.numel() == 0:
            return super().weight_source()
        k = 1
        for d in self.weight_shape[1:]:
            k *= d
        return self.wspec.weight_unpack(self.weight_q_packed, self.w_scale, self.w_offset, k, torch.float32)


CALIBRATION = GPTQ
