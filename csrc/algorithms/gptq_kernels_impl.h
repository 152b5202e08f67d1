// The loops of gptq_kernels.h, written once; each instruction-set unit includes this file
// with its own compiler flags (internal linkage, as in kernels/quant_driver_impl.h).
#pragma once
#include "algorithms/gptq_kernels.h"

namespace lowbit {
namespace {

// Each row of w stays in L1 while the k error rows are applied.
void rank_k_update_loop(float* w, int64_t N, int64_t rows, const float* u, int64_t ldu, const float* e, int64_t k) {
  for (int64_t j = 0; j < rows; ++j) {
    float* __restrict wj = w + j * N;
    for (int64_t t = 0; t < k; ++t) {
      const float* __restrict et = e + t * N;
      const float ut = u[t * ldu + j];
      for (int64_t n = 0; n < N; ++n) wj[n] -= et[n] * ut;
    }
  }
}

// Round half to even by the 1.5 * 2^23 trick (|w / s| stays far below 2^22 here); 16
// running sums make the loop vectorisable without reassociating floats.
float grid_error_loop(const float* w, const float* h, int64_t c, float s, float qmin, float qmax) {
  const float inv = 1.0f / s, magic = 12582912.0f;
  float part[16] = {};
  int64_t k = 0;
  for (; k + 16 <= c; k += 16)
    for (int j = 0; j < 16; ++j) {
      float q = (w[k + j] * inv + magic) - magic;
      q = q < qmin ? qmin : (q > qmax ? qmax : q);
      const float d = q * s - w[k + j];
      part[j] += h[k + j] * d * d;
    }
  float err = 0.0f;
  for (; k < c; ++k) {
    float q = (w[k] * inv + magic) - magic;
    q = q < qmin ? qmin : (q > qmax ? qmax : q);
    const float d = q * s - w[k];
    err += h[k] * d * d;
  }
  for (int j = 0; j < 16; ++j) err += part[j];
  return err;
}

}  // namespace
}  // namespace lowbit
