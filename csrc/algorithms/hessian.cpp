// Input statistics shared by GPTQ, AWQ and OFMR: H += X^T X over calibration rows.
//
// H is symmetric, so the accumulation only maintains its upper triangle (row-major
// H[i][j], j >= i): with float32 it is a BLAS rank-k update (cblas_ssyrk of the BLAS that
// libtorch already loaded), half the products of a full X^T X. Consumers call
// hessian_symmetrize once, after the last batch, to mirror it into the lower triangle.
// Without that BLAS symbol (or for a float64 H) the full product is accumulated, which
// hessian_symmetrize leaves as it is up to the mirror of rounding differences.
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

namespace lowbit {
namespace {

// cblas_ssyrk(order, uplo, trans, n, k, alpha, A, lda, beta, C, ldc)
using SyrkFn = void (*)(int, int, int, int, int, float, const float*, int, float, float*, int);
constexpr int kRowMajor = 101, kUpper = 121, kTrans = 112;

SyrkFn find_ssyrk() {
  static const SyrkFn fn = [] {
    for (const char* lib : {"libblas.so.3", "libopenblas.so.0", "libcblas.so.3"}) {
      void* handle = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);  // only one the process already uses
      if (handle == nullptr) continue;
      if (void* sym = dlsym(handle, "cblas_ssyrk")) return reinterpret_cast<SyrkFn>(sym);
    }
    return reinterpret_cast<SyrkFn>(dlsym(RTLD_DEFAULT, "cblas_ssyrk"));
  }();
  return fn;
}

void hessian_accumulate(at::Tensor& H, const at::Tensor& x2d) {
  TORCH_CHECK_VALUE(x2d.dim() == 2 && H.dim() == 2 && H.size(0) == x2d.size(1) && H.size(1) == x2d.size(1),
                    "hessian_accumulate: H ", H.sizes(), " does not match rows ", x2d.sizes());
  if (x2d.size(0) == 0) return;
  const SyrkFn syrk = find_ssyrk();
  if (syrk != nullptr && H.scalar_type() == at::kFloat && H.is_contiguous() && x2d.size(0) < INT_MAX &&
      H.size(0) < INT_MAX) {
    const at::Tensor x = x2d.to(at::kFloat).contiguous();
    const int k = static_cast<int>(H.size(0)), m = static_cast<int>(x.size(0));
    syrk(kRowMajor, kUpper, kTrans, k, m, 1.0f, x.data_ptr<float>(), k, 1.0f, H.data_ptr<float>(), k);
    return;
  }
  at::Tensor x = x2d.to(H.scalar_type());
  H.addmm_(x.t(), x);
}

// Lower triangle := upper triangle, in 64 x 64 tiles (both sides stay in cache).
template <typename T>
void mirror_upper(T* h, int64_t n) {
  constexpr int64_t kTile = 64;
  const int64_t tiles = (n + kTile - 1) / kTile;
#pragma omp parallel for schedule(dynamic)
  for (int64_t bi = 0; bi < tiles; ++bi)
    for (int64_t bj = 0; bj <= bi; ++bj)
      for (int64_t i = bi * kTile; i < std::min(n, (bi + 1) * kTile); ++i)
        for (int64_t j = bj * kTile; j < std::min(i, (bj + 1) * kTile); ++j) h[i * n + j] = h[j * n + i];
}

void hessian_symmetrize(at::Tensor& H) {
  TORCH_CHECK_VALUE(H.dim() == 2 && H.size(0) == H.size(1) && H.is_contiguous(),
                    "hessian_symmetrize: expected a contiguous square matrix, got ", H.sizes());
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "hessian_symmetrize",
                             [&] { mirror_upper(H.data_ptr<scalar_t>(), H.size(0)); });
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("hessian_accumulate(Tensor(a!) H, Tensor x2d) -> ()");
  m.impl("hessian_accumulate", c10::DispatchKey::CPU, TORCH_FN(lowbit::hessian_accumulate));
  m.def("hessian_symmetrize(Tensor(a!) H) -> ()");
  m.impl("hessian_symmetrize", c10::DispatchKey::CPU, TORCH_FN(lowbit::hessian_symmetrize));
}
