// What is legal, in one table: a row per (activation format, weight format) pair that
// lowbit quantizes. The config validator (quant_config.cpp), the layer planner
// (lowbit.quantize), target="ascend", the deploy kernel choice and the README's
// combination table (scripts/capability_table.py) all read these rows; nothing else
// states a combination rule.
#pragma once
#include <string>
#include <vector>

#include "config/quant_config.h"
#include "formats/format.h"

namespace lowbit {

// Ascend's kernels: what they take beyond the generic rules (from the AMCT reference
// page, shared/seed/, and shared/spec/api.md).
struct AscendRule {
  bool supported = true;                  // false: Ascend has no kernel for the row
  std::vector<std::string> dtypes;        // original layer dtypes it takes
  int k_align = 1, n_align = 1;           // K (inputs per output) and N (outputs) multiples
  int token_k_align = 1, token_n_align = 1;  // extra, with per-token activations
  bool max_65535 = false;                 // K and N at most 65535
  bool no_bias = false;
  bool even_k_blocks = false;             // ceil(K / 32) even
  std::vector<std::string> conv_algorithms;  // Conv2d through these only (empty: no Conv2d)
};

struct Capability {
  bool weight_only = true;
  Format act = Format::kInt8;             // ignored when weight_only
  Format weight = Format::kInt8;
  std::vector<Granularity> weight_strategies;  // empty: whatever the weight format allows
  bool weight_asym = true;                // asymmetric weights (where the format has them)
  std::vector<Granularity> act_strategies;     // empty: whatever the activation format allows
  std::vector<std::string> algorithms;    // built-in algorithms that quantize the row
  bool conv = true;                       // Conv2d takes the row (activations per tensor)
  bool conv_act_asym = false;             // Conv2d takes asymmetric activations
  bool integer_kernel = false;            // deploy: integer product (int8 activations)
  AscendRule ascend;
  std::string note;                       // README text
};

// Every row, in README order.
const std::vector<Capability>& capabilities();
// The row of a combination, or nullptr.
const Capability* find_capability(const InputsCfg& in, Format weight);
// "int8 x int4 (activation x weight)" or "int4 weight-only quantization".
std::string combination_name(const InputsCfg& in, Format weight);
// Every full-quantization row as "act x weight", for messages.
std::string legal_combinations();

// One layer as the planner sees it.
struct LayerFacts {
  bool conv = false;
  std::string dtype;          // "float32", "float16", "bfloat16", ...
  int64_t k = 0, n = 0;       // inputs per output (Conv2d: C_in/groups * kh * kw), outputs
  bool bias = false;
  std::string padding_mode = "zeros";
};

// Why a layer that the config matches is left in float ("" when it is quantized):
// the generic rules of its row, then, for target "ascend", Ascend's. `algorithm` is the
// one that handles the layer; a custom algorithm is held to Ascend's rules only.
std::string layer_skip_reason(const LayerFacts& layer, const TensorQuantCfg& w, const InputsCfg& in,
                              const std::string& algorithm, const std::string& target,
                              const std::vector<CustomAlgorithm>& custom = {});

// Whether the deploy module multiplies in integers (int8 activations x int8/int4 weights
// with one weight scale per output and activation rows that are the kernel's rows).
bool uses_integer_kernel(bool conv, const TensorQuantCfg& w, const InputsCfg& in);

// Why the opt-in 8-bit compute mode (convert's compute="int8": activations quantized per
// token inside the op, integer products; deploy/dynamic_int8.h) leaves a deploy layer in
// its exact product ("" when it takes the layer): weight-only Linear layers with
// symmetric INT8/INT4 weights, no second weight scale, and at most kDynamicInt8MaxCols
// input features.
std::string compute_int8_skip_reason(bool conv, const TensorQuantCfg& w, const InputsCfg& in, int64_t cols,
                                     bool two_level);

}  // namespace lowbit
