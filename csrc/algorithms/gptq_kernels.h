// GPTQ's two inner loops, compiled once per instruction set (gptq_kernels_scalar.cpp,
// _avx2.cpp, _avx512.cpp from gptq_kernels_impl.h; the compiler vectorises them) and
// picked per call through the ISA registry like every other kernel family.
#pragma once
#include <cstdint>

namespace lowbit {

struct GptqKernels {
  const char* name;
  // w[j][n] -= sum_t u[t * ldu + j] * e[t * N + n] for j < rows, t < k, n < N (rows of w
  // N floats apart).
  void (*rank_k_update)(float* w, int64_t N, int64_t rows, const float* u, int64_t ldu, const float* e, int64_t k);
  // sum_k h_k (q_k s - w_k)^2 of c values on the symmetric integer grid [qmin, qmax] * s.
  float (*grid_error)(const float* w, const float* h, int64_t c, float s, float qmin, float qmax);
};

GptqKernels gptq_kernels_scalar();
GptqKernels gptq_kernels_avx2();
GptqKernels gptq_kernels_avx512();
// The selected instruction set's entry.
GptqKernels gptq_kernels();

}  // namespace lowbit
