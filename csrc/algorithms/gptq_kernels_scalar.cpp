// GPTQ's inner loops for scalar (compiler flags: CMakeLists.txt).
#include "algorithms/gptq_kernels_impl.h"

namespace lowbit {
GptqKernels gptq_kernels_scalar() { return {"scalar", &rank_k_update_loop, &grid_error_loop}; }
}  // namespace lowbit

#include "isa/isa_registry.h"

namespace lowbit {
namespace {
const IsaImpl<GptqKernels> kGptqImpls[] = {
    {"avx512", &gptq_kernels_avx512}, {"avx2", &gptq_kernels_avx2}, {"scalar", &gptq_kernels_scalar}};
}  // namespace
GptqKernels gptq_kernels() { return isa_pick(kGptqImpls); }
}  // namespace lowbit
