// Quantize-dequantize of one weight column w[N] whose rows have their own scale and
// offset, with the exact arithmetic of the kernels (x / s, + o, element codec, - o, * s),
// so that the result lies on the grid that pack() and unpack() reproduce.
#pragma once
#include <ATen/ATen.h>

#include "ops/tensor_views.h"

namespace lowbit {

inline at::Tensor column_qdq(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& offset, Format fmt,
                             bool symmetric) {
  at::Tensor v = w / scale;
  if (!symmetric) v = v + offset;
  // element codec with scale 1 (INT: rint and clamp to the signed range)
  at::Tensor q = qdq_with_scale(v.reshape({1, -1}), fmt == Format::kMxFp8E4M3FN ? Format::kFloat8E4M3FN
                                                    : fmt == Format::kMxFp4E2M1 ? Format::kFloat4E2M1
                                                                                : fmt, 1.0f)
                     .reshape(w.sizes());
  if (!symmetric) q = q - offset;
  return q * scale;
}

}  // namespace lowbit
