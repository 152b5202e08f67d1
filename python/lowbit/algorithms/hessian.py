"""H = X^T X of a layer's calibration rows (per convolution group), accumulated in C++.

The accumulation keeps only H's upper triangle (a BLAS rank-k update, half the work of
a full product); ``finish_hessian`` mirrors it once, when the layer is finalized.

A convolution unfolds into many rows per call (ResNet-20: 256K patches for 250 images);
at most MAX_ROWS rows per call enter H, which is plenty to estimate a K x K matrix with
K <= a few thousand, and keeps calibration time linear in the layers. They are the first
whole images' patches, or, with ``spread_rows`` (OFMR), patches spread over all images
(CalibConv2d.spread_patches: a 112x112 layer's 32768 rows would be 2.6 images otherwise).

A call is checked before it enters H (CalibLayer._observe has found the input finite,
with max |x| = amax): H must stay finite in float32, which a bound guarantees without
a look at the new entries: every diagonal entry grows by at most rows * amax^2 and the
off-diagonal ones are bounded by the diagonal (Cauchy-Schwarz), so
    max(diag H) + rows * amax^2 < FLOAT32_MAX / 2
(the half: headroom for rounding) keeps every partial sum finite. A batch outside it is
rejected with H untouched, and a later batch can still be taken.
"""
import torch


MAX_ROWS = 32768
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class HessianMixin:
    spread_rows = False  # convolutions: H from patches spread over all images, not the first images

    def init_hessian(self):
        # allocated at the first calibration call and freed once the layer is finalized:
        # with sequential calibration only one block's Hessians exist at a time
        self.register_buffer("hessian", torch.zeros(0))
        self.register_buffer("hessian_rows", torch.zeros((), dtype=torch.int64))

    def free_hessian(self):
        self.hessian = torch.zeros(0)

    def hessian_row_count(self, x):
        """How many rows of x enter H: what input_rows(x, MAX_ROWS) gives, without building them."""
        if self.layer_type == "Conv2d":
            h_out, w_out = self.output_hw(*x.shape[-2:])
            if self.spread_rows:
                return min(x.shape[0] * h_out * w_out, MAX_ROWS)
            return self.images_for_rows(x, MAX_ROWS) * h_out * w_out
        m = x.numel() // max(x.shape[-1], 1)
        if m <= MAX_ROWS:
            return m
        step = -(-m // MAX_ROWS)  # input_rows keeps rows[::step]
        return -(-m // step)

    def check_hessian(self, x, lo, hi):
        """Raises (before H changes) when adding x's rows could take H past float32."""
        amax = max(-float(lo), float(hi))
        held = float(self.hessian.diagonal(0, 1, 2).max()) if self.hessian.numel() else 0.0
        if held + self.hessian_row_count(x) * amax * amax >= FLOAT32_MAX / 2:
            raise self.nonfinite_input_error(x, lo, hi)

    def check_observation(self, x, lo, hi):
        super().check_observation(x, lo, hi)
        self.check_hessian(x, lo, hi)

    def observe_hessian(self, x):
        if self.hessian.numel() == 0:
            k = 1
            for d in self.weight_shape[1:]:
                k *= d
            self.hessian = torch.zeros(self.groups, k, k)
        for g, rows in enumerate(self.input_rows(x, MAX_ROWS, spread=self.spread_rows)):
            torch.ops.lowbit.hessian_accumulate(self.hessian[g], rows)
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
