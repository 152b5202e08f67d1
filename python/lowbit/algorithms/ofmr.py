"""OFMR calibration modules for HiF8 and FP8 (losses and choice: csrc/algorithms/ofmr.cpp).

Candidate scales, for weights and activations alike, are placed relative to the tensor's
own MIN-MAX scale `base` (the weight's, per channel or per tensor; the activation's from
the first calibration call): 2^(j/8) x base over the format's octave range SPAN, and the
powers of two 2^k inside that range (preferred: a non-power-of-two is kept only when
strictly lower). The MIN-MAX scale itself (j = 0) is always a candidate (an activation
maximum that grows after the first call gives a MIN-MAX scale from all calls that the
fallback below compares instead). The former
absolute grid 2^-5..2^5 lay far from small layers' range (a depthwise FP8 layer got 900x
absmax/448, 81% of its weights subnormal); within SPAN the weight's maximum maps to at
least 224 (FP8) or 2 (HiF8), at least 13 octaves above the smallest normal value, so no
candidate pushes most weights below the normal range.

Activation loss: the output MSE of quantizing the activation alone, summed over the rows
(ofmr_act_losses_accumulate), each row weighted by mean / (e_r + mean) (act_row_weights:
the plain squared error for ordinary and near-zero rows, relative error for rows far
above the mean output energy), times the rows a sampled row stands for. (The former
per-row normalization let rows with near-zero output decide; see the C++ file.)

Rows: at most MAX_ACT_ROWS per call for the activation loss and hessian.MAX_ROWS for H,
taken from the whole batch (a convolution's patches spread over all images and
positions, CalibConv2d.spread_patches), not from the first images only.

Fallback (the invariant "never worse than MIN-MAX of the same format"): the two argmins
are taken independently (the spec), then the weight and activation scales are each
either OFMR's or MIN-MAX's (the activation's from all calls' min and max), whichever pair
gives the lowest output error with both quantized on the last calibration batch, OFMR's
on a tie. That is the error recon_error reports, so OFMR's can never exceed MIN-MAX's.
"""
import torch

from lowbit.algorithms.hessian import HessianMixin

# Octaves (lo, hi) around the MIN-MAX scale. FP8 E4M3 has a constant relative precision
# over its normal range, so a larger scale only pushes small values into the subnormals
# (one octave up is kept for rounding effects), and a smaller one clips the maximum (up to
# 8x, for outliers). HiF8's precision is tapered (4 significant bits in [2^-3, 2^4), fewer
# outside): scales well away from absmax/16 can move the bulk of the values into the
# 4-bit zone; 3 octaves either way.
SPAN = {"float8_e4m3fn": (-3, 1), "hifloat8": (-3, 3)}
STEPS = 8  # multiples 2^(j/8) of the MIN-MAX scale
MAX_ACT_ROWS = 1024  # activation losses: at most this many rows per call (a per-tensor scale needs few)


# per format: the multiples 2^(j/8) of the MIN-MAX scale (float64), and which candidates
# (the powers of two first, then the multiples) are preferred
MULTIPLIERS = {fmt: torch.exp2(torch.arange(STEPS * lo, STEPS * hi + 1, dtype=torch.float64) / STEPS)
               for fmt, (lo, hi) in SPAN.items()}
PREFERRED = {fmt: torch.arange(hi - lo + 1 + len(MULTIPLIERS[fmt])) < hi - lo + 1 for fmt, (lo, hi) in SPAN.items()}


def candidates(base, fmt):
    """[C, M] candidate scales for M MIN-MAX scales ``base`` [M]: first the powers of two in
    [base * 2^lo, base * 2^hi] (hi - lo + 1 rows, the i-th power of two from the bottom of
    each column's range; one that is past the top of a column's range holds that column's
    base instead, the MIN-MAX scale itself), then 2^(j/8) x base for j in [8 lo, 8 hi]."""
    lo, hi = SPAN[fmt]
    base = base.reshape(1, -1).double()
    first = torch.ceil(torch.log2(base) + lo)                        # lowest power of two in range
    pow2 = torch.exp2(first + torch.arange(hi - lo + 1, dtype=torch.float64).reshape(-1, 1))
    pow2 = torch.where(pow2 <= base * 2.0 ** hi, pow2, base)
    return torch.cat([pow2, MULTIPLIERS[fmt].reshape(-1, 1) * base]).float()


def preferred(fmt):
    return PREFERRED[fmt].clone()


def minmax_index(fmt):
    """Row of the MIN-MAX scale (j = 0) in candidates()."""
    lo, hi = SPAN[fmt]
    return (hi - lo + 1) - STEPS * lo


def act_row_weights(pairs, total_rows):
    """Row weights of the activation loss, one [R] float64 tensor per (weight, rows) pair
    (a convolution group) of one call: stands_for * mean / (e_r + mean), e_r the row's
    output energy ||x_r W^T||^2 in its group, mean that of all the call's rows and groups,
    stands_for = total_rows / R (the call's rows a sampled row stands for).

    A row with an ordinary or small output counts by its plain squared error (weight -> 1):
    a near-zero row weighs no more than in the plain output MSE, so flat patches under
    zero-sum kernels cannot take over as they did when each row was divided by its own
    energy. A row far above the mean counts by its error relative to its energy, so a few
    huge-activation tokens do not choose the scale for all the others either (what that
    per-row division was for). Measured against the plain MSE (weights 1): stories260K
    FP8 / HiF8 OFMR perplexity 4.197 / 4.205 against 4.224 / 4.203, ResNet-20/56 top-1
    within 0.1 point."""
    energy = torch.stack([(rows @ w.t()).double().pow(2).sum(1) for w, rows in pairs])  # [G, R]
    mean = float(energy.mean())
    stands_for = total_rows / energy.shape[1]
    if not mean > 0:  # every output zero: any scale is exact, plain weights
        return [torch.full_like(e, stands_for) for e in energy]
    return [stands_for * mean / (e + mean) for e in energy]


class OFMR(HessianMixin):
    uses_data = True
    spread_rows = True

    def init_algorithm(self):
        self.init_hessian()
        if self.aspec is not None:
            c = len(preferred(self.aspec.fmt))
            self.register_buffer("act_loss", torch.zeros(c, dtype=torch.float64))
            self.register_buffer("act_candidates", torch.zeros(c))
        self._last_batch = None

    def observe_algorithm(self, x):
        self.observe_hessian(x)
        if int(self.calib_calls) == self.batch_num - 1:
            self._last_batch = x  # for the fallback check in finalize_algorithm (this same call)
        if self.aspec is None:
            return
        if int(self.calib_calls) == 0:  # candidates fixed by the first call's MIN-MAX scale
            base, _ = self.aspec.static_scale(torch.zeros(()), x.abs().max().float())
            self.act_candidates.copy_(candidates(base, self.aspec.fmt).reshape(-1))
        groups = self.input_rows(x, MAX_ACT_ROWS, spread=True)
        pairs = [(w, rows) for (_, w, _), rows in zip(self.group_weights(), groups)]
        for (w, rows), row_weights in zip(pairs, act_row_weights(pairs, self.input_row_count(x))):
            torch.ops.lowbit.ofmr_act_losses_accumulate(self.act_loss, rows, w, self.aspec.fmt, self.act_candidates,
                                                        row_weights)

    def finalize_algorithm(self):
        self.finish_hessian()
        fmt = self.wspec.fmt
        w2d = self.weight.detach().reshape(self.weight_shape[0], -1).float()
        base, _ = self.wspec.weight_scales(w2d)  # [N, 1] or [1, 1]: the MIN-MAX scales
        cand = candidates(base.reshape(-1), fmt)  # [C, N] or [C, 1]
        losses = []
        for rows, w, h in self.group_weights():
            c = cand if cand.shape[1] == 1 else cand[:, rows]
            losses.append(torch.ops.lowbit.ofmr_weight_losses(w, h, fmt, c))
        losses = torch.cat(losses, dim=1)         # [C, N]
        if self.wspec.strategy == "tensor":
            losses = losses.sum(1, keepdim=True)
        pick = torch.ops.lowbit.ofmr_select(losses, preferred(fmt), self.layer_name)
        w_ofmr = cand.gather(0, pick.reshape(1, -1)).reshape(self.w_scale.shape)
        w_minmax = base.reshape(self.w_scale.shape)
        self.w_offset.zero_()
        self.free_hessian()
        w_choices, a_choices = [w_ofmr, w_minmax], [None]
        if self.aspec is not None:
            pa = torch.ops.lowbit.ofmr_select(self.act_loss.reshape(-1, 1), preferred(self.aspec.fmt), self.layer_name)
            a_minmax, _ = self.aspec.static_scale(self.act_min, self.act_max)  # from all calls
            a_choices = [self.act_candidates[pa].reshape(1, 1), a_minmax.reshape(1, 1)]
            self.act_offset.zero_()
        self._fall_back_to_minmax(w_choices, a_choices)
        return self.aspec is not None

    @torch.no_grad()
    def _fall_back_to_minmax(self, w_choices, a_choices):
        """Sets the (weight, activation) scale pair, OFMR's or MIN-MAX's each, with the lowest
        output error on the last calibration batch (OFMR's on a tie). Kept for inspection
        (not in the state_dict): self.ofmr_argmin, the two argmins (activation None when
        weight-only), and self.ofmr_fallback, which of them MIN-MAX replaced ('weight',
        'activation', both or none)."""
        self.ofmr_argmin = (w_choices[0].clone(), a_choices[0])
        x, self._last_batch = self._last_batch, None
        y = self.compute(x, self.weight, self.bias)
        best = None
        for i, ws in enumerate(w_choices):
            for j, a in enumerate(a_choices):
                if i and torch.equal(ws, w_choices[0]) or j and torch.equal(a, a_choices[0]):
                    continue  # the same scales as OFMR's
                self.w_scale.copy_(ws)
                if a is not None:
                    self.act_scale.copy_(a)
                err = self.output_error(x, y)
                if best is None or err < best[0]:
                    best = (err, i, j)
        _, i, j = best
        self.w_scale.copy_(w_choices[i])
        if a_choices[j] is not None:
            self.act_scale.copy_(a_choices[j])
        self.ofmr_fallback = tuple(name for name, k in (("weight", i), ("activation", j)) if k)


CALIBRATION = OFMR
