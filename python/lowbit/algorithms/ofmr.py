"""OFMR calibration modules for HiF8 and FP8 (losses and choice: csrc/algorithms/ofmr.cpp).

Candidate scales: 2^k for k = -5..5 (the reference set, preferred), quarter-step
refinements 2^(k + j/4), and 2^(j/8) x the MIN-MAX scale (j = -8..8). The weight scale
uses the MIN-MAX scale of the weight; the activation one that of the first calibration
call. A candidate other than a power of two is kept only when it lowers the measured
output error.
"""
import torch

from lowbit.algorithms.hessian import HessianMixin
from lowbit.modules.calibration import CalibConv2d, CalibLinear

POW2 = torch.exp2(torch.arange(-20, 21, dtype=torch.float64) / 4.0)  # 2^(k/4), k in [-20, 20]
PREFERRED_POW2 = (torch.arange(-20, 21) % 4) == 0                     # the integer powers
MULTIPLIERS = torch.exp2(torch.arange(-8, 9, dtype=torch.float64) / 8.0)
MAX_ACT_ROWS = 1024  # activation losses: at most this many rows per call (a per-tensor scale needs few)


def candidates(base):
    """[C, M] candidate scales: the power-of-two grid, then multiples of ``base`` [M]."""
    base = base.reshape(1, -1).double()
    grid = POW2.reshape(-1, 1).expand(-1, base.shape[1])
    return torch.cat([grid, MULTIPLIERS.reshape(-1, 1) * base]).float()


def preferred():
    return torch.cat([PREFERRED_POW2, torch.zeros(len(MULTIPLIERS), dtype=torch.bool)])


class OFMRMixin(HessianMixin):
    uses_data = True

    def init_algorithm(self):
        self.init_hessian()
        if self.aspec is not None:
            c = len(POW2) + len(MULTIPLIERS)
            self.register_buffer("act_loss", torch.zeros(c, dtype=torch.float64))
            self.register_buffer("act_candidates", torch.zeros(c))

    def observe_algorithm(self, x):
        self.observe_hessian(x)
        if self.aspec is None:
            return
        if int(self.calib_calls) == 0:  # candidates fixed by the first call's MIN-MAX scale
            base, _ = self.aspec.static_scale(torch.zeros(()), x.abs().max().float())
            self.act_candidates.copy_(candidates(base).reshape(-1))
        for (_, w, _), rows in zip(self.group_weights(), self.input_rows(x, MAX_ACT_ROWS)):
            torch.ops.lowbit.ofmr_act_losses_accumulate(self.act_loss, rows, w, self.aspec.fmt, self.act_candidates)

    def finalize_algorithm(self):
        self.finish_hessian()
        w2d = self.weight.detach().reshape(self.weight_shape[0], -1).float()
        base, _ = self.wspec.weight_scales(w2d)  # [N, 1] or [1, 1]
        cand = candidates(base.reshape(-1))      # [C, N] or [C, 1]
        losses = []
        for rows, w, h in self.group_weights():
            c = cand if cand.shape[1] == 1 else cand[:, rows]
            losses.append(torch.ops.lowbit.ofmr_weight_losses(w, h, self.wspec.fmt, c))
        losses = torch.cat(losses, dim=1)         # [C, N]
        if self.wspec.strategy == "tensor":
            losses = losses.sum(1, keepdim=True)
        pick = torch.ops.lowbit.ofmr_select(losses, preferred(), self.layer_name)
        scale = cand.gather(0, pick.reshape(1, -1)).reshape(-1)
        self.w_scale.copy_(scale.reshape(self.w_scale.shape))
        self.w_offset.zero_()
        self.free_hessian()
        if self.aspec is None:
            return False
        pa = torch.ops.lowbit.ofmr_select(self.act_loss.reshape(-1, 1), preferred(), self.layer_name)
        self.act_scale.copy_(self.act_candidates[pa].reshape(1, 1))
        self.act_offset.zero_()
        return True


class OFMRLinear(OFMRMixin, CalibLinear):
    pass


class OFMRConv2d(OFMRMixin, CalibConv2d):
    pass
