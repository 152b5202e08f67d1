"""One tensor's quantization settings (a normalized config entry) and the math on it,
all through the C++ ops."""
from dataclasses import dataclass

import torch

from lowbit import formats


@dataclass(frozen=True)
class QSpec:
    fmt: str
    symmetric: bool
    strategy: str      # tensor | channel | group | token
    group_size: int
    scale_dtype: str = "float32"  # "float16": int scales rounded to fp16 (GGUF's block scales); "q4_k": Q4_K's grid
    scale_rule: str = "absmax"    # "signed_max": symmetric int4 s = m / -8 (ggml's Q4_0 grid)

    @staticmethod
    def from_dict(d):
        return QSpec(d["type"], bool(d["symmetric"]), d["strategy"], int(d["group_size"]),
                     d.get("scale_dtype", "float32"), d.get("scale_rule", "absmax"))

    def to_dict(self):
        """The normalized config entry again (what lowbit._C's layer rules take);
        scale_dtype and scale_rule only when not the default, as the validator normalizes them."""
        d = {"type": self.fmt, "symmetric": self.symmetric, "strategy": self.strategy,
             "group_size": self.group_size}
        if self.scale_dtype != "float32":
            d["scale_dtype"] = self.scale_dtype
        if self.scale_rule != "absmax":
            d["scale_rule"] = self.scale_rule
        return d

    @property
    def is_mx(self):
        return formats.is_mx(self.fmt)

    @property
    def gs(self):
        return self.group_size if self.strategy == "group" else 0

    def label(self):
        s = self.fmt + "/" + self.strategy + (str(self.group_size) if self.strategy == "group" else "")
        return (s + ("" if self.symmetric else "/asym") + ("/fp16-scale" if self.scale_dtype == "float16" else "")
                + (f"/{self.scale_dtype.replace('_', '')}-scale" if self.scale_dtype not in ("float32", "float16") else "")
                + ("/signed-max" if self.scale_rule == "signed_max" else ""))

    # weights are viewed as [out_channels, -1]
    def weight_scales(self, w2d):
        return formats.compute_scales(w2d, self.fmt, self.strategy, self.gs, self.symmetric,
                                      scale_dtype=self.scale_dtype, scale_rule=self.scale_rule)

    def weight_qdq(self, w2d, scale, offset):
        return formats.fake_quant(w2d, self.fmt, self.strategy, self.gs, self.symmetric, scale=scale, offset=offset)

    def weight_pack(self, w2d, scale, offset):
        return formats.pack(w2d, self.fmt, scale, offset, self.strategy, self.gs, self.symmetric)

    def weight_unpack(self, packed, scale, offset, cols, dtype):
        return formats.unpack(packed, self.fmt, scale, cols, offset, self.strategy, self.gs, self.symmetric, dtype)

    # activations: static per-tensor scales come from calibration statistics
    def static_scale(self, act_min, act_max):
        """(scale, offset) of a per-tensor activation from its calibrated min and max, by
        the same C++ rule as any tensor (the stats of [min, max] are min and max)."""
        stats = torch.stack([act_min.float().reshape(()), act_max.float().reshape(())]).reshape(1, 2)
        return formats.compute_scales(stats, self.fmt, "tensor", 0, self.symmetric)

