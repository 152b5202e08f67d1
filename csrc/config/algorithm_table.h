// The built-in algorithms, one row each: the layer types it handles and the parameters a
// config may give it (kind, default, range). The config validator, the normalized config
// and Python (lowbit.ALGORITHM_TABLE, the module registry) read this table; an algorithm's
// numerical work lives in csrc/algorithms/ and its calibration rule in
// python/lowbit/algorithms/<name>.py (one class, for every layer type of its row).
#pragma once
#include <string>
#include <vector>

namespace lowbit {

enum class ParamKind {
  kPositiveInt,     // an int > 0
  kOpenUnitOrAuto,  // a float in the open interval (0, 1), or the string 'auto'
};

struct AlgorithmParam {
  std::string name;
  ParamKind kind;
  double default_value;  // (an int for kPositiveInt)
  std::string doc;
};

struct AlgorithmRow {
  std::string name;
  std::vector<std::string> layer_types;  // "Linear", "Conv2d"
  std::vector<AlgorithmParam> params;
  std::string summary;
  // Whether python/lowbit/algorithms/<name>.py holds its calibration rule (statistics,
  // solve) as one layer-type-neutral class; otherwise the base calibration modules run it.
  bool python_module = false;
};

// A parameter's value in a parsed config: `automatic` for 'auto'.
struct ParamValue {
  std::string name;
  ParamKind kind;
  double value = 0.0;
  bool automatic = false;
};

const std::vector<AlgorithmRow>& algorithm_table();
const AlgorithmRow* find_algorithm(const std::string& name);  // nullptr: not built in
std::vector<std::string> algorithm_names();

}  // namespace lowbit
