"""H = X^T X of a layer's calibration rows (per convolution group), accumulated in C++.

The accumulation keeps only H's upper triangle (a BLAS rank-k update, half the work of
a full product); ``finish_hessian`` mirrors it once, when the layer is finalized.

A convolution unfolds into many rows per call (ResNet-20: 256K patches for 250 images);
at most MAX_ROWS evenly spaced rows per call enter H, which is plenty to estimate a
K x K matrix with K <= a few thousand, and keeps calibration time linear in the layers.

When every row of a call enters H (Linear layers up to MAX_ROWS rows), H's diagonal
(sums of squares) doubles as the NaN/Inf check of the activations: an O(K) test after
the update replaces a pass over the whole input.
"""
import torch

from lowbit.modules.calibration import CalibLinear

MAX_ROWS = 32768


class HessianMixin:
    def init_hessian(self):
        # allocated at the first calibration call and freed once the layer is finalized:
        # with sequential calibration only one block's Hessians exist at a time
        self.register_buffer("hessian", torch.zeros(0))
        self.register_buffer("hessian_rows", torch.zeros((), dtype=torch.int64))

    def free_hessian(self):
        self.hessian = torch.zeros(0)

    def checks_finite_itself(self, x):
        """True when observe_hessian sees every row of x (then it checks them)."""
        return isinstance(self, CalibLinear) and x.numel() // max(x.shape[-1], 1) <= MAX_ROWS

    def observe_hessian(self, x):
        if self.hessian.numel() == 0:
            k = 1
            for d in self.weight_shape[1:]:
                k *= d
            self.hessian = torch.zeros(self.groups, k, k)
        for g, rows in enumerate(self.input_rows(x, MAX_ROWS)):
            torch.ops.lowbit.hessian_accumulate(self.hessian[g], rows)
        if self.checks_finite_itself(x) and not bool(torch.isfinite(self.hessian.diagonal(0, 1, 2)).all()):
            raise self.nonfinite_input_error(x)
        self.hessian_rows += rows.shape[0]

    def finish_hessian(self):
        """Mirrors the accumulated upper triangle: H is complete from here on."""
        for g in range(self.hessian.shape[0]):
            torch.ops.lowbit.hessian_symmetrize(self.hessian[g])

    def group_weights(self, w2d=None):
        """(rows slice, weight block, H block) per convolution group."""
        w2d = self.weight.detach().reshape(self.weight_shape[0], -1).float() if w2d is None else w2d
        rows = w2d.shape[0] // self.groups
        return [(slice(g * rows, (g + 1) * rows), w2d[g * rows:(g + 1) * rows], self.hessian[g])
                for g in range(self.groups)]
