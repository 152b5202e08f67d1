// The quantize() configuration: schema, defaults and every legality rule of
// shared/spec/api.md, checked before any model is touched. Errors name the key path,
// the bad value and what is allowed.
#pragma once
#include <string>
#include <vector>

#include "config/algorithm_table.h"
#include "config/config_value.h"
#include "formats/format.h"

namespace lowbit {

struct TensorQuantCfg {
  Format type = Format::kInt8;
  bool symmetric = true;
  Granularity strategy = Granularity::kChannel;
  int64_t group_size = 0;  // only with kGroup
  // weights key "scale_dtype": "float16" rounds int8/int4 scales to fp16 (the grid of
  // GGUF's Q8_0/Q4_0 blocks); "float32" (default) keeps them as computed
  bool fp16_scale = false;
  // weights key "scale_rule": "signed_max" (symmetric int4 only) takes ggml's Q4_0 rule
  // s = m / -8 with m the granule's value of largest magnitude, sign included (negative
  // scales where m > 0); "absmax" (default): absmax / 7, or / 8 when the minimum dominates
  bool signed_max = false;
  // weights key "scale_dtype": "q4_k" (symmetric int4/int3) or "q6_k" (int6), groups of 32:
  // llama.cpp's K-quant grid, each group's scale d x sc with one fp16 d per 256 columns and
  // sc in [1, 63] (q4_k) or [1, 127] (q6_k)
  bool superblock_scales = false;
};

struct InputsCfg {
  bool present = false;  // false: weight-only
  TensorQuantCfg q;
};

struct LayerOverride {
  std::string glob;
  bool has_weights = false, has_inputs = false;
  TensorQuantCfg weights;
  InputsCfg inputs;  // inputs.present == false with has_inputs: {"enable_quant": False}
};

struct AlgorithmCfg {
  std::string name;
  std::vector<ParamValue> params;  // every parameter of its row (config/algorithm_table.h), defaults filled in
};

struct QuantConfig {
  int64_t batch_num = 1;
  bool has_weights = true;  // false: only layers matched by a '<glob>.weights' entry are quantized
  TensorQuantCfg weights;
  InputsCfg inputs;
  std::vector<LayerOverride> overrides;   // in config order: first match wins
  std::vector<AlgorithmCfg> algorithms;
  std::vector<std::string> skip_layers;
  // lowbit's own key (AMCT has none): shift each layer's bias by the mean output change
  // that quantization causes on the last calibration batch (every algorithm and format)
  bool bias_correction = false;
};

// An algorithm registered by the user (lowbit.algorithm_register): any parameters, any
// format combination (its modules decide), and the layer types it claims.
struct CustomAlgorithm {
  std::string name;
  std::vector<std::string> layer_types;
};

// Throws ConfigError.
QuantConfig parse_quant_config(const ConfigValue& root, const std::vector<CustomAlgorithm>& custom = {});
// One entry of the config on its own (a 'weights' or 'inputs' dict, the 'algorithm'
// value; nullptr: absent), with the same checks as in a whole config. Throw ConfigError.
TensorQuantCfg parse_weights_entry(const std::string& path, const ConfigValue& v);
InputsCfg parse_inputs_entry(const std::string& path, const ConfigValue& v);
std::vector<AlgorithmCfg> parse_algorithm_entry(const ConfigValue* v, const std::vector<CustomAlgorithm>& custom);
// Checks one layer's effective settings (`where` prefixes the messages). Throws ConfigError.
void check_combination(const std::string& where, const TensorQuantCfg& w, const InputsCfg& in,
                       const std::vector<AlgorithmCfg>& algorithms, const std::vector<CustomAlgorithm>& custom = {});
// Layer types an algorithm can handle ("Linear", "Conv2d").
std::vector<std::string> algorithm_layer_types(const std::string& name, const std::vector<CustomAlgorithm>& custom = {});
// Closest candidate within a small edit distance, or "" when none is close.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace lowbit
