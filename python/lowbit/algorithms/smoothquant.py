"""SmoothQuant calibration module (factors: csrc/algorithms/smoothquant.cpp). The layer
computes QDQ(x / s) @ QDQ(W * s)^T."""
import torch


AUTO_STRENGTHS = (0.5, 0.3, 0.4, 0.6, 0.7, 0.75, 0.8, 0.9)  # smooth_strength "auto": 0.5 first (ties)
AUTO_SCORE_ROWS = 4096  # rows (sampled evenly from every calibration call) the strengths are scored on


class SmoothQuant:
    uses_data = True

    def init_algorithm(self):
        k = self.weight_shape[1]
        self.register_buffer("chan_amax", torch.zeros(k))
        self.register_buffer("chan_min", torch.full((k,), float("inf")))
        self.register_buffer("chan_max", torch.full((k,), float("-inf")))
        self.register_buffer("smooth", torch.ones(k))
        self._score_rows = []  # "auto": rows sampled from each calibration call

    def observe_algorithm(self, x):
        torch.ops.lowbit.channel_stats_update(self.chan_amax, self.chan_min, self.chan_max, self.input_rows(x)[0])
        if self.auto_strength:  # evenly spaced rows of every call, to score the strengths on
            keep = max(1, AUTO_SCORE_ROWS // self.batch_num)
            self._score_rows.append(self.input_rows(x, keep)[0].to(x.dtype))

    @property
    def auto_strength(self):
        return self.layer_cfg["params"]["smooth_strength"] == "auto"  # the validator fills in the default

    def finalize_algorithm(self):
        if not self.auto_strength:
            return self.apply_strength(float(self.layer_cfg["params"]["smooth_strength"]))
        # "auto": the strength whose quantized layer has the lowest output error on rows
        # sampled from all calibration calls (0.5, the default, wins ties)
        x = torch.cat(self._score_rows)
        self._score_rows = []
        y = self.compute(x, self.weight, self.bias)  # the float output: the same for every strength
        best = None
        for alpha in AUTO_STRENGTHS:
            self.apply_strength(alpha)
            err = self.output_error(x, y)
            if best is None or err < best[0]:
                best = (err, alpha)
        self.chosen_strength = best[1]
        return self.apply_strength(best[1])

    def apply_strength(self, alpha):
        """Smoothing factors, weight scales and (static) activation scale for strength alpha;
        returns whether the activation scale was set."""
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


CALIBRATION = SmoothQuant
