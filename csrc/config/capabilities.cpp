#include "config/capabilities.h"

#include <algorithm>

#include "deploy/dynamic_int8.h"

namespace lowbit {

namespace {

using G = Granularity;
const std::vector<std::string> kHalf = {"float16", "bfloat16"};
const std::vector<std::string> kAnyFloat = {"float32", "float16", "bfloat16"};

Capability weight_only(Format w, std::vector<std::string> algorithms, AscendRule ascend, std::string note = "") {
  Capability c;
  c.weight = w;
  c.algorithms = std::move(algorithms);
  c.ascend = std::move(ascend);
  c.note = std::move(note);
  return c;
}

Capability full(Format a, Format w, std::vector<std::string> algorithms, AscendRule ascend, std::string note = "") {
  Capability c;
  c.weight_only = false;
  c.act = a;
  c.weight = w;
  c.algorithms = std::move(algorithms);
  c.ascend = std::move(ascend);
  c.note = std::move(note);
  return c;
}

AscendRule ascend(std::vector<std::string> dtypes, int align = 1) {
  AscendRule r;
  r.dtypes = std::move(dtypes);
  r.k_align = r.n_align = align;
  return r;
}

AscendRule weight_only_ascend(std::vector<std::string> dtypes, int align = 1) {
  AscendRule r = ascend(std::move(dtypes), align);
  r.max_65535 = true;  // the weight-only kernels' limit (not the full-quantization ones')
  return r;
}

AscendRule not_on_ascend() {
  AscendRule r;
  r.supported = false;
  return r;
}

std::vector<Capability> build_table() {
  std::vector<Capability> t;
  t.push_back(weight_only(Format::kInt8, {"minmax", "gptq", "awq"}, weight_only_ascend(kHalf, 32)));
  t.push_back(weight_only(Format::kInt4, {"minmax", "gptq", "awq"}, weight_only_ascend(kAnyFloat, 64)));
  t.push_back(weight_only(Format::kInt3, {"minmax", "gptq", "awq"}, not_on_ascend()));
  t.push_back(weight_only(Format::kInt6, {"minmax", "gptq", "awq"}, not_on_ascend()));
  t.push_back(weight_only(Format::kHiFloat8, {"minmax", "gptq", "ofmr", "cast", "quantile"}, weight_only_ascend(kHalf)));
  t.push_back(weight_only(Format::kFloat8E4M3FN, {"minmax", "gptq", "ofmr"}, weight_only_ascend(kHalf)));
  t.push_back(weight_only(Format::kMxFp8E4M3FN, {"minmax", "gptq", "mxquant"}, not_on_ascend()));
  t.push_back(weight_only(Format::kMxFp4E2M1, {"minmax", "gptq", "awq", "mxquant"}, weight_only_ascend(kHalf, 64)));
  t.push_back(weight_only(Format::kFloat4E2M1, {"minmax", "gptq", "awq"}, weight_only_ascend(kHalf, 64)));
  t.push_back(weight_only(Format::kFloat4E1M2, {"minmax", "gptq", "awq"}, weight_only_ascend(kHalf)));

  Capability i8 = full(Format::kInt8, Format::kInt8, {"minmax", "smoothquant"}, ascend(kHalf),
                       "inputs per tensor (zero point allowed) or per token");
  i8.weight_strategies = {G::kTensor, G::kChannel};
  i8.weight_asym = false;
  i8.integer_kernel = true;
  i8.conv_act_asym = true;
  i8.ascend.token_k_align = 16;
  i8.ascend.token_n_align = 8;
  t.push_back(i8);

  Capability w4a8 = full(Format::kInt8, Format::kInt4, {"minmax", "smoothquant"}, ascend({"float16"}, 8));
  w4a8.weight_asym = false;
  w4a8.integer_kernel = true;
  w4a8.conv_act_asym = true;
  t.push_back(w4a8);

  for (Format f : {Format::kHiFloat8, Format::kFloat8E4M3FN}) {
    Capability c = full(f, f, f == Format::kHiFloat8
                                  ? std::vector<std::string>{"minmax", "ofmr", "cast", "quantile", "smoothquant"}
                                  : std::vector<std::string>{"minmax", "ofmr"},
                        ascend(kAnyFloat));
    c.ascend.conv_algorithms = {"ofmr"};
    t.push_back(c);
  }

  Capability mx8 = full(Format::kMxFp8E4M3FN, Format::kMxFp8E4M3FN, {"mxquant", "minmax"}, ascend({"bfloat16"}),
                        "blocks of 32 along K");
  mx8.conv = false;
  mx8.ascend.even_k_blocks = true;
  t.push_back(mx8);
  Capability mx4 = full(Format::kMxFp8E4M3FN, Format::kMxFp4E2M1, {"mxquant", "minmax"}, ascend({"bfloat16"}),
                        "blocks of 32 along K");
  mx4.conv = false;
  mx4.ascend.k_align = 64;
  t.push_back(mx4);

  Capability f8f4 = full(Format::kFloat8E4M3FN, Format::kFloat4E2M1, {"minmax", "smoothquant"}, ascend({"bfloat16"}));
  f8f4.act_strategies = {G::kTensor};
  f8f4.ascend.k_align = 64;
  f8f4.ascend.no_bias = true;
  t.push_back(f8f4);
  return t;
}

std::string name_of(Format f) { return format_info(f).name; }

template <class T>
bool contains(const std::vector<T>& v, const T& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

bool is_custom(const std::string& algorithm, const std::vector<CustomAlgorithm>& custom) {
  for (const auto& c : custom)
    if (c.name == algorithm) return true;
  return false;
}

std::string generic_reason(const Capability& row, const LayerFacts& layer, const InputsCfg& in) {
  if (!layer.conv || row.weight_only) return "";
  std::vector<std::string> conv_acts;
  for (const auto& r : capabilities())
    if (!r.weight_only && r.conv && !contains(conv_acts, name_of(r.act))) conv_acts.push_back(name_of(r.act));
  if (!row.conv || in.q.strategy != G::kTensor)
    return "nn.Conv2d full quantization supports " + join(conv_acts, "/") + " activations per tensor, not " +
           name_of(in.q.type) + " per " + granularity_name(in.q.strategy);
  if (!in.q.symmetric && !row.conv_act_asym)
    return "nn.Conv2d " + name_of(in.q.type) + " activations must be symmetric (a zero point is supported on nn.Linear)";
  return "";
}

// "K a multiple of 64 (K=96)" for the dimensions that miss their multiple, "" when none does.
std::string alignment_reason(const LayerFacts& layer, int k_align, int n_align) {
  std::vector<std::string> parts;
  if (layer.k % k_align) parts.push_back("K a multiple of " + std::to_string(k_align) + " (K=" + std::to_string(layer.k) + ")");
  if (layer.n % n_align) parts.push_back("N a multiple of " + std::to_string(n_align) + " (N=" + std::to_string(layer.n) + ")");
  return join(parts, " and ");
}

std::string ascend_reason(const Capability* row, const LayerFacts& layer, const TensorQuantCfg& w, const InputsCfg& in,
                          const std::string& algorithm) {
  const std::string combo = in.present ? name_of(in.q.type) + " x " + name_of(w.type) : name_of(w.type) + " weight-only";
  if (!row || !row->ascend.supported) return "ascend: no kernel for " + combo;
  const AscendRule& r = row->ascend;
  const std::string k = std::to_string(layer.k), n = std::to_string(layer.n);
  if (layer.conv) {
    if (r.conv_algorithms.empty()) return "ascend: nn.Conv2d is not supported for " + combo;
    if (!contains(r.conv_algorithms, algorithm))
      return "ascend: nn.Conv2d " + combo + " needs algorithm " + join(r.conv_algorithms) + " (got '" + algorithm + "')";
    if (layer.padding_mode != "zeros")
      return "ascend: nn.Conv2d needs padding_mode 'zeros' (layer has '" + layer.padding_mode + "')";
  }
  if (!contains(r.dtypes, layer.dtype))
    return "ascend: " + combo + " needs a " + join(r.dtypes, "/") + " layer (layer is " + layer.dtype + ")";
  if (r.max_65535 && (layer.k > 65535 || layer.n > 65535))
    return "ascend: " + combo + " needs K, N <= 65535 (K=" + k + ", N=" + n + ")";
  const std::string align = alignment_reason(layer, r.k_align, r.n_align);
  if (!align.empty()) return "ascend: " + combo + " needs " + align;
  const std::string token = alignment_reason(layer, r.token_k_align, r.token_n_align);
  if (!row->weight_only && in.q.strategy == G::kToken && !token.empty())
    return "ascend: " + combo + " with per-token activations needs " + token;
  if (r.no_bias && layer.bias) return "ascend: " + combo + " needs a layer without bias";
  if (r.even_k_blocks && ((layer.k + kMxBlock - 1) / kMxBlock) % 2)
    return "ascend: " + combo + " needs an even ceil(K/32) (K=" + k + ")";
  if (w.strategy == G::kGroup && layer.k <= w.group_size)
    return "ascend: group_size must be below K (group_size " + std::to_string(w.group_size) + ", K=" + k + ")";
  return "";
}

}  // namespace

const std::vector<Capability>& capabilities() {
  static const std::vector<Capability> table = build_table();
  return table;
}

const Capability* find_capability(const InputsCfg& in, Format weight) {
  for (const auto& row : capabilities())
    if (row.weight == weight && row.weight_only == !in.present && (row.weight_only || row.act == in.q.type))
      return &row;
  return nullptr;
}

std::string combination_name(const InputsCfg& in, Format weight) {
  if (!in.present) return name_of(weight) + " weight-only quantization";
  return name_of(in.q.type) + " x " + name_of(weight) + " (activation x weight)";
}

std::string legal_combinations() {
  std::vector<std::string> v;
  for (const auto& row : capabilities())
    if (!row.weight_only) v.push_back(name_of(row.act) + " x " + name_of(row.weight));
  return join(v);
}

std::string layer_skip_reason(const LayerFacts& layer, const TensorQuantCfg& w, const InputsCfg& in,
                              const std::string& algorithm, const std::string& target,
                              const std::vector<CustomAlgorithm>& custom) {
  const Capability* row = find_capability(in, w.type);
  if (row && !is_custom(algorithm, custom)) {
    const std::string reason = generic_reason(*row, layer, in);
    if (!reason.empty()) return reason;
  }
  if (target == "ascend") return ascend_reason(row, layer, w, in, algorithm);
  return "";
}

bool uses_integer_kernel(bool conv, const TensorQuantCfg& w, const InputsCfg& in) {
  const Capability* row = find_capability(in, w.type);
  if (!row || !row->integer_kernel || !w.symmetric) return false;
  if (w.strategy != G::kTensor && w.strategy != G::kChannel) return false;
  return in.q.strategy == G::kTensor || (in.q.strategy == G::kToken && !conv);
}

std::string compute_int8_skip_reason(bool conv, const TensorQuantCfg& w, const InputsCfg& in, int64_t cols,
                                     bool two_level) {
  if (conv) return "a Conv2d (the 8-bit compute mode is for Linear layers)";
  if (in.present) return "its activations are quantized already (" + combination_name(in, w.type) + ")";
  if (!format_info(w.type).is_int())
    return std::string(format_info(w.type).name) + " weights (the 8-bit compute mode takes " +
           format_names_where([](const FormatInfo& f) { return f.is_int(); }) + ")";
  if (!w.symmetric) return "asymmetric weights (the 8-bit compute mode takes symmetric ones)";
  if (two_level) return "a second weight scale per row";
  if (cols > kDynamicInt8MaxCols)
    return std::to_string(cols) + " input features (the 8-bit compute mode takes up to " +
           std::to_string(kDynamicInt8MaxCols) + ")";
  return "";  // (INT groups are multiples of 32 columns, as the kernel needs)
}

}  // namespace lowbit
