// Small pieces every deploy translation unit uses: a grow-only scratch buffer owned by one
// thread (reused from call to call, so large buffers are not faulted in again), and
// reading/writing one element of a float matrix whose dtype is known only at run time.
// Internal linkage and no std:: templates: this header is compiled into units with
// different instruction-set flags.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "formats/half.h"
#include "kernels/quant_kernels.h"

namespace lowbit {
namespace {

// (T: plain numbers. 64-byte aligned, so whole-vector loads never straddle cache lines.)
template <class T>
struct GrowBuffer {
  T* p = nullptr;
  int64_t n = 0;
  GrowBuffer() = default;
  GrowBuffer(const GrowBuffer&) = delete;
  GrowBuffer& operator=(const GrowBuffer&) = delete;
  ~GrowBuffer() { std::free(p); }
  T* get(int64_t need) {  // contents are not kept when it grows
    if (need > n) {
      std::free(p);
      p = static_cast<T*>(std::aligned_alloc(64, (size_t(need) * sizeof(T) + 63) / 64 * 64));
      if (!p) throw std::bad_alloc();
      n = need;
    }
    return p;
  }
};

inline int64_t dtype_bytes(DType d) { return d == DType::kF32 ? 4 : 2; }

inline float load_element(const void* base, DType d, int64_t i) {
  if (d == DType::kF32) return static_cast<const float*>(base)[i];
  const uint16_t h = static_cast<const uint16_t*>(base)[i];
  return d == DType::kF16 ? fp16_to_float(h) : bf16_to_float(h);
}

inline void store_element(void* base, DType d, int64_t i, float v) {
  if (d == DType::kF32) static_cast<float*>(base)[i] = v;
  else if (d == DType::kF16) static_cast<uint16_t*>(base)[i] = float_to_fp16(v);
  else static_cast<uint16_t*>(base)[i] = float_to_bf16(v);
}

// y[m, n] = v, rounded to y's dtype
inline void store_at(const MutMatrix& y, int64_t m, int64_t n, float v) {
  store_element(static_cast<char*>(y.data) + m * y.ld * dtype_bytes(y.dtype), y.dtype, n, v);
}

}  // namespace
}  // namespace lowbit
