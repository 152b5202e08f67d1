"""SmoothQuant calibration module (factors: csrc/algorithms/smoothquant.cpp). The layer
computes QDQ(x / s) @ QDQ(W * s)^T."""
import torch

from lowbit.modules.calibration import CalibLinear


class SmoothQuantLinear(CalibLinear):
    uses_data = True

    def init_algorithm(self):
        k = self.weight_shape[1]
        self.register_buffer("chan_amax", torch.zeros(k))
        self.register_buffer("chan_min", torch.full((k,), float("inf")))
        self.register_buffer("chan_max", torch.full((k,), float("-inf")))
        self.register_buffer("smooth", torch.ones(k))

    def observe_algorithm(self, x):
        torch.ops.lowbit.channel_stats_update(self.chan_amax, self.chan_min, self.chan_max, self.input_rows(x)[0])

    def finalize_algorithm(self):
        alpha = float((self.layer_cfg.get("params") or {}).get("smooth_strength", 0.5))
        s = torch.ops.lowbit.smoothquant_factors(self.chan_amax, self.weight.detach(), alpha)
        self.smooth.copy_(s)
        self.recompute_weight_scales()
        if not self.static_act:
            return False
        # statistics of x / s follow from the per-channel ones (s > 0)
        lo, hi = (self.chan_min / s).min(), (self.chan_max / s).max()
        scale, offset = self.aspec.static_scale(lo, hi)
        self.act_scale.copy_(scale)
        self.act_offset.copy_(offset)
        return True

    def weight_source(self):
        w = self.weight.detach().reshape(self.weight_shape[0], -1)
        if not self.calibrated:
            return w
        return w.float() * self.smooth
