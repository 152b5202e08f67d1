#include "deploy/conv_layout.h"

#include <cstring>

#include "deploy/scratch.h"

namespace lowbit {
namespace {

// [n, c, plane] <-> [n, plane, c], element by element (es bytes each)
void transpose_planes(const char* src, char* dst, int64_t n, int64_t c, int64_t plane, int64_t es, bool to_nchw) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n * c; ++t) {
    const int64_t img = t / c, ch = t % c;
    for (int64_t p = 0; p < plane; ++p) {
      const int64_t nchw = (img * c + ch) * plane + p, nhwc = (img * plane + p) * c + ch;
      if (to_nchw) std::memcpy(dst + nchw * es, src + nhwc * es, size_t(es));
      else std::memcpy(dst + nhwc * es, src + nchw * es, size_t(es));
    }
  }
}

}  // namespace

void conv2d_through_nchw(const Conv2dArgs& a, const std::function<void(const Conv2dArgs&)>& run) {
  const int64_t es = dtype_bytes(a.dtype);
  thread_local GrowBuffer<char> xin, yout;
  Conv2dArgs b = a;
  b.channels_last = false;
  char* x = xin.get(a.n * a.c * a.h * a.w * es);
  char* y = yout.get(a.n * a.cout * a.ho * a.wo * es);
  transpose_planes(static_cast<const char*>(a.x), x, a.n, a.c, a.h * a.w, es, true);
  b.x = x;
  b.y = y;
  run(b);
  transpose_planes(y, static_cast<char*>(a.y), a.n, a.cout, a.ho * a.wo, es, false);
}

}  // namespace lowbit
