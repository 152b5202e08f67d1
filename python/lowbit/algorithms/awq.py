"""AWQ calibration module (search: csrc/algorithms/awq.cpp). The layer computes
(x / s) @ QDQ(W * s)^T; 1/s is applied to the input at run time."""
import torch

from lowbit.algorithms.hessian import HessianMixin


class AWQ(HessianMixin):
    uses_data = True

    def init_algorithm(self):
        self.init_hessian()
        n, k = self.weight_shape
        self.register_buffer("act_abs_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("smooth", torch.ones(k))
        self.register_buffer("weight_src", torch.zeros(n, k))

    def observe_algorithm(self, x):
        self.observe_hessian(x)
        rows = self.input_rows(x)[0]
        self.act_abs_sum += rows.abs().sum(0).double()

    def finalize_algorithm(self):
        self.finish_hessian()
        mu = (self.act_abs_sum / max(int(self.hessian_rows), 1)).float()
        grids = int(self.layer_cfg["params"]["grids_num"])  # the validator fills in the default
        s, src, _, _ = torch.ops.lowbit.awq_search(self.weight.detach().float(), self.hessian[0], mu, self.wspec.fmt,
                                                   self.wspec.strategy, self.wspec.group_size, self.wspec.symmetric,
                                                   grids, True, self.wspec.scale_dtype, self.wspec.scale_rule)
        self.smooth.copy_(s)
        self.weight_src.copy_(src)
        self.recompute_weight_scales()
        self.free_hessian()
        return False

    def weight_source(self):
        if not self.calibrated:
            return super().weight_source()
        return self.weight_src


CALIBRATION = AWQ
