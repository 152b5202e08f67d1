// C++ deployment example: runs a lowbit model saved with torch.jit (trace or script)
// on an input stored next to it, with libtorch and the lowbit op library only (no
// Python), and compares the result with the output Python computed.
//
//   lowbit_run_model MODEL.pt IO.pt
//
// IO.pt is a scripted module holding two tensors, `x` (the input) and `y` (the output
// Python got); lowbit.export_torchscript writes both files.
#include <torch/script.h>

#include <cstdio>
#include <iostream>

namespace lowbit {
const char* ops_library_version();  // liblowbit_ops.so: linking it registers torch.ops.lowbit
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt IO.pt\n";
    return 2;
  }
  try {
    torch::jit::script::Module model = torch::jit::load(argv[1]);
    torch::jit::script::Module io = torch::jit::load(argv[2]);
    model.eval();
    const at::Tensor x = io.attr("x").toTensor(), want = io.attr("y").toTensor();
    torch::NoGradGuard no_grad;
    const at::Tensor got = model.forward({x}).toTensor();
    if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type()) {
      std::cerr << "shape/dtype mismatch: " << got.sizes() << " " << got.scalar_type() << " vs " << want.sizes()
                << " " << want.scalar_type() << "\n";
      return 1;
    }
    const double diff = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
    const double scale = want.to(at::kDouble).abs().max().item<double>();
    std::printf("lowbit ops %s: output %s, max |C++ - Python| = %.3g (max |y| = %.3g)\n",
                lowbit::ops_library_version(), c10::str(got.sizes()).c_str(), diff, scale);
    return diff <= 1e-6 * (scale > 0 ? scale : 1.0) ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
