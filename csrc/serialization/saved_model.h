// The metadata lowbit.save writes into model.safetensors (the "lowbit" entry), checked
// against the tensors before lowbit.load builds anything from it: the schema (keys,
// types), each layer's quantization settings (by the config validator itself:
// formats, strategies, group sizes, legal combinations), and the stored values that the
// kernels trust (finite positive scales, offsets within the format's range, no NaN
// weight codes, finite biases and factors). A file that passes cannot make the deploy
// kernels read out of bounds, overflow or compute with non-finite parameters.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "config/quant_config.h"

namespace lowbit {

// One stored tensor as the validator sees it (a view; nothing is copied).
struct TensorRef {
  std::string dtype;  // safetensors dtype name ("F32", "U8", ...)
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

// The metadata format version lowbit.save writes.
constexpr const char* kSavedModelFormat = "lowbit-1";

// Throws std::invalid_argument("<field path>: <what is wrong>"), e.g.
// "layers['fc1'].config.weights.group_size: ..." or "tensor 'fc1.w_scale': ...".
void validate_saved_model(const std::string& meta_json, const std::map<std::string, TensorRef>& tensors,
                          const std::vector<CustomAlgorithm>& custom = {});

}  // namespace lowbit
