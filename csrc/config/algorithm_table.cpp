#include "config/algorithm_table.h"

namespace lowbit {

const std::vector<AlgorithmRow>& algorithm_table() {
  static const std::vector<AlgorithmRow> rows = {
      {"minmax", {"Linear", "Conv2d"}, {}, "scales from the weights' (and activations') ranges"},
      {"gptq", {"Linear", "Conv2d"}, {}, "weights rounded column by column, the error spread by the inverse Hessian",
       true},
      {"awq", {"Linear"}, {{"grids_num", ParamKind::kPositiveInt, 20, "candidate smoothing exponents searched"}},
       "activation-aware per-input scaling of the weights, searched on a grid", true},
      {"smoothquant",
       {"Linear"},
       {{"smooth_strength", ParamKind::kOpenUnitOrAuto, 0.5,
         "migration strength alpha in (0, 1), or 'auto' (searched per layer)"}},
       "activation outliers moved into the weights by per-input factors", true},
      {"ofmr", {"Linear", "Conv2d"}, {}, "FP8/HiF8 scales searched for the least output error", true},
      {"mxquant", {"Linear"}, {}, "no calibration: MX block conversion of the weights (activations at run time)"},
      {"cast", {"Linear"}, {}, "HiFloat8: weight scale absmax / 16, activations cast with no scale"},
      {"quantile", {"Linear"}, {}, "HiFloat8: activation scale from a moving average of the per-call maximum"},
  };
  return rows;
}

const AlgorithmRow* find_algorithm(const std::string& name) {
  for (const auto& r : algorithm_table())
    if (r.name == name) return &r;
  return nullptr;
}

std::vector<std::string> algorithm_names() {
  std::vector<std::string> v;
  for (const auto& r : algorithm_table()) v.push_back(r.name);
  return v;
}

}  // namespace lowbit
