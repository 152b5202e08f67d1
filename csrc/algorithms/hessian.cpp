// Input statistics shared by GPTQ and OFMR: H += X^T X over calibration rows.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace lowbit {
namespace {

void hessian_accumulate(at::Tensor& H, const at::Tensor& x2d) {
  TORCH_CHECK_VALUE(x2d.dim() == 2 && H.dim() == 2 && H.size(0) == x2d.size(1) && H.size(1) == x2d.size(1),
                    "hessian_accumulate: H ", H.sizes(), " does not match rows ", x2d.sizes());
  at::Tensor x = x2d.to(H.scalar_type());
  H.addmm_(x.t(), x);
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("hessian_accumulate(Tensor(a!) H, Tensor x2d) -> ()");
  m.impl("hessian_accumulate", c10::DispatchKey::CPU, TORCH_FN(lowbit::hessian_accumulate));
}
