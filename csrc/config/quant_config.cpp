#include "config/quant_config.h"

#include <algorithm>
#include <set>

namespace lowbit {

namespace {

[[noreturn]] void value_error(const std::string& msg) { throw ConfigError{false, msg}; }
[[noreturn]] void type_error(const std::string& msg) { throw ConfigError{true, msg}; }

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

void reject_unknown_keys(const std::string& path, const ConfigValue& d, const std::vector<std::string>& allowed) {
  for (const auto& kv : d.dict) {
    if (std::find(allowed.begin(), allowed.end(), kv.first) != allowed.end()) continue;
    std::string hint = did_you_mean(kv.first, allowed);
    value_error(path + (path.empty() ? "" : ".") + kv.first + ": unknown key" +
                (hint.empty() ? "" : " (did you mean '" + hint + "'?)") + "; allowed keys: " + join(allowed));
  }
}

const ConfigValue& require_dict(const std::string& path, const ConfigValue& v) {
  if (v.kind != ConfigValue::Kind::kDict)
    type_error(path + ": expected a dict, got " + v.type_name + " " + v.repr());
  return v;
}

bool get_bool(const std::string& path, const ConfigValue& v) {
  if (v.kind != ConfigValue::Kind::kBool) type_error(path + ": expected True or False, got " + v.type_name + " " + v.repr());
  return v.b;
}

std::string get_string(const std::string& path, const ConfigValue& v, const std::vector<std::string>& allowed) {
  if (v.kind != ConfigValue::Kind::kString)
    type_error(path + ": expected a str, got " + v.type_name + " " + v.repr() + "; allowed: " + join(allowed));
  if (std::find(allowed.begin(), allowed.end(), v.s) == allowed.end()) {
    std::string hint = did_you_mean(v.s, allowed);
    value_error(path + ": " + v.repr() + " is not allowed" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                "; allowed: " + join(allowed));
  }
  return v.s;
}

int64_t get_positive_int(const std::string& path, const ConfigValue& v) {
  if (v.kind != ConfigValue::Kind::kInt)
    type_error(path + ": expected an int, got " + v.type_name + " " + v.repr());
  if (v.i <= 0) value_error(path + ": " + v.repr() + " must be a positive int");
  return v.i;
}

const std::vector<std::string> kWeightTypes = {"int8", "int4", "hifloat8", "float8_e4m3fn", "mxfp8_e4m3fn",
                                               "mxfp4_e2m1", "float4_e2m1", "float4_e1m2"};
const std::vector<std::string> kInputTypes = {"int8", "hifloat8", "float8_e4m3fn", "mxfp8_e4m3fn"};
const std::vector<std::string> kAlgorithms = {"minmax", "gptq", "awq", "smoothquant", "ofmr", "mxquant", "cast",
                                              "quantile"};

bool is_float4(Format f) { return f == Format::kFloat4E2M1 || f == Format::kFloat4E1M2; }
bool is_mx(Format f) { return format_info(f).is_mx; }
std::string name_of(Format f) { return format_info(f).name; }

// weights: {type, symmetric, strategy, group_size}
TensorQuantCfg parse_weights(const std::string& path, const ConfigValue& v) {
  require_dict(path, v);
  reject_unknown_keys(path, v, {"type", "symmetric", "strategy", "group_size"});
  const ConfigValue* t = v.find("type");
  if (!t) value_error(path + ".type: missing; allowed: " + join(kWeightTypes));
  TensorQuantCfg c;
  c.type = parse_format(get_string(path + ".type", *t, kWeightTypes));
  const bool group_default = is_mx(c.type) || is_float4(c.type);
  c.symmetric = v.find("symmetric") ? get_bool(path + ".symmetric", *v.find("symmetric")) : true;
  c.strategy = v.find("strategy")
                   ? parse_granularity(get_string(path + ".strategy", *v.find("strategy"), {"tensor", "channel", "group"}))
                   : (group_default ? Granularity::kGroup : Granularity::kChannel);
  if (const ConfigValue* g = v.find("group_size")) {
    if (c.strategy != Granularity::kGroup)
      value_error(path + ".group_size: only allowed with strategy 'group' (strategy is '" +
                  granularity_name(c.strategy) + "')");
    c.group_size = get_positive_int(path + ".group_size", *g);
  } else if (c.strategy == Granularity::kGroup) {
    c.group_size = group_default ? 32 : 128;
  }
  if (c.strategy == Granularity::kGroup && c.group_size % 32 != 0)
    value_error(path + ".group_size: " + std::to_string(c.group_size) + " is not a multiple of 32");
  if (c.strategy == Granularity::kGroup && c.group_size > kMaxGroupSize)
    value_error(path + ".group_size: " + std::to_string(c.group_size) + " is larger than " +
                std::to_string(kMaxGroupSize) + "; allowed: multiples of 32 up to " + std::to_string(kMaxGroupSize));
  if (is_mx(c.type) && (c.strategy != Granularity::kGroup || c.group_size != 32))
    value_error(path + ": " + name_of(c.type) + " weights use blocks of 32: strategy must be 'group' with group_size 32");
  if (is_float4(c.type) && c.strategy != Granularity::kGroup)
    value_error(path + ".strategy: '" + granularity_name(c.strategy) + "' is not allowed for " + name_of(c.type) +
                "; allowed: group");
  if ((c.type == Format::kHiFloat8 || c.type == Format::kFloat8E4M3FN) && c.strategy == Granularity::kGroup)
    value_error(path + ".strategy: 'group' is not allowed for " + name_of(c.type) + "; allowed: tensor, channel");
  if (!c.symmetric && !format_info(c.type).allows_asym)
    value_error(path + ".symmetric: False is only allowed for int8 and int4 (" + name_of(c.type) + " is symmetric)");
  return c;
}

// inputs: {type, symmetric, strategy} or, in an override, {enable_quant: False}
InputsCfg parse_inputs(const std::string& path, const ConfigValue& v, bool allow_disable) {
  require_dict(path, v);
  if (const ConfigValue* e = v.find("enable_quant")) {
    if (!allow_disable) value_error(path + ".enable_quant: only allowed in per-layer overrides ('<glob>.inputs')");
    if (v.dict.size() != 1) value_error(path + ": 'enable_quant' cannot be combined with other keys");
    if (get_bool(path + ".enable_quant", *e)) value_error(path + ".enable_quant: only False is meaningful here");
    return InputsCfg{};
  }
  reject_unknown_keys(path, v, {"type", "symmetric", "strategy", "group_size"});
  const ConfigValue* t = v.find("type");
  if (!t) value_error(path + ".type: missing; allowed: " + join(kInputTypes));
  InputsCfg in;
  in.present = true;
  TensorQuantCfg& c = in.q;
  c.type = parse_format(get_string(path + ".type", *t, kInputTypes));
  c.symmetric = v.find("symmetric") ? get_bool(path + ".symmetric", *v.find("symmetric")) : true;
  const bool mx = is_mx(c.type);
  c.strategy = v.find("strategy") ? parse_granularity(get_string(path + ".strategy", *v.find("strategy"),
                                                                  mx ? std::vector<std::string>{"group"}
                                                                     : std::vector<std::string>{"tensor", "token"}))
                                  : (mx ? Granularity::kGroup : Granularity::kTensor);
  if (const ConfigValue* g = v.find("group_size")) {
    if (!mx) value_error(path + ".group_size: only allowed for mxfp8_e4m3fn inputs");
    if (get_positive_int(path + ".group_size", *g) != 32)
      value_error(path + ".group_size: " + g->repr() + " is not allowed; MX blocks are 32");
  }
  c.group_size = mx ? 32 : 0;
  if (!c.symmetric && c.type != Format::kInt8)
    value_error(path + ".symmetric: False is only allowed for int8 inputs");
  if (!c.symmetric && c.strategy == Granularity::kToken)
    value_error(path + ".symmetric: False is not allowed with strategy 'token' (dynamic per-token is symmetric)");
  return in;
}

const CustomAlgorithm* find_custom(const std::string& name, const std::vector<CustomAlgorithm>& custom) {
  for (const auto& c : custom)
    if (c.name == name) return &c;
  return nullptr;
}

std::vector<AlgorithmCfg> parse_algorithms(const ConfigValue* v, const std::vector<CustomAlgorithm>& custom) {
  std::vector<AlgorithmCfg> out;
  if (!v) return {AlgorithmCfg{"minmax"}};
  std::vector<std::string> names = kAlgorithms;
  for (const auto& c : custom) names.push_back(c.name);
  auto add = [&](const std::string& path, const ConfigValue& name, const ConfigValue* params) {
    AlgorithmCfg a;
    a.name = get_string(path, name, names);
    if (find_custom(a.name, custom)) {
      if (params && params->kind != ConfigValue::Kind::kNone) require_dict("algorithm." + a.name, *params);
    } else if (params && params->kind != ConfigValue::Kind::kNone) {
      const std::string p = "algorithm." + a.name;
      require_dict(p, *params);
      if (a.name == "awq") {
        reject_unknown_keys(p, *params, {"grids_num"});
        if (const ConfigValue* g = params->find("grids_num")) a.grids_num = get_positive_int(p + ".grids_num", *g);
      } else if (a.name == "smoothquant") {
        reject_unknown_keys(p, *params, {"smooth_strength"});
        if (const ConfigValue* s = params->find("smooth_strength")) {
          if (s->kind != ConfigValue::Kind::kFloat && s->kind != ConfigValue::Kind::kInt)
            type_error(p + ".smooth_strength: expected a float, got " + s->type_name + " " + s->repr());
          a.smooth_strength = s->kind == ConfigValue::Kind::kFloat ? s->f : double(s->i);
          if (!(a.smooth_strength > 0.0 && a.smooth_strength < 1.0))
            value_error(p + ".smooth_strength: " + s->repr() + " is not in the open interval (0, 1)");
        }
      } else if (!params->dict.empty()) {
        value_error(p + ": takes no parameters, got " + params->repr());
      }
    }
    for (const auto& prev : out)
      if (prev.name == a.name) value_error("algorithm: '" + a.name + "' is given twice");
    out.push_back(a);
  };
  switch (v->kind) {
    case ConfigValue::Kind::kString: add("algorithm", *v, nullptr); break;
    case ConfigValue::Kind::kList:
      for (const auto& item : v->list) add("algorithm", item, nullptr);
      break;
    case ConfigValue::Kind::kDict:
      for (const auto& kv : v->dict) {
        ConfigValue name;
        name.kind = ConfigValue::Kind::kString;
        name.s = kv.first;
        name.type_name = "str";
        add("algorithm", name, &kv.second);
      }
      break;
    default:
      type_error("algorithm: expected a str, set or dict, got " + v->type_name + " " + v->repr() +
                 "; allowed names: " + join(names));
  }
  if (out.empty()) value_error("algorithm: empty; allowed names: " + join(names));
  // Two algorithms may not claim the same layer type.
  for (size_t i = 0; i < out.size(); ++i)
    for (size_t j = i + 1; j < out.size(); ++j)
      for (const auto& t : algorithm_layer_types(out[i].name, custom)) {
        auto tj = algorithm_layer_types(out[j].name, custom);
        if (std::find(tj.begin(), tj.end(), t) != tj.end())
          value_error("algorithm: '" + out[i].name + "' and '" + out[j].name + "' both claim nn." + t +
                      "; give one algorithm per layer type");
      }
  return out;
}

}  // namespace

std::vector<std::string> algorithm_layer_types(const std::string& name, const std::vector<CustomAlgorithm>& custom) {
  if (const CustomAlgorithm* c = find_custom(name, custom)) return c->layer_types;
  if (name == "awq" || name == "smoothquant" || name == "mxquant" || name == "quantile" || name == "cast")
    return {"Linear"};
  return {"Linear", "Conv2d"};  // minmax, gptq, ofmr
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = 3;  // accept at most 2 edits (or a prefix match)
  for (const auto& c : candidates) {
    std::vector<size_t> prev(c.size() + 1), cur(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= c.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word[i - 1] == c[j - 1] ? 0 : 1)});
      std::swap(prev, cur);
    }
    size_t d = prev[c.size()];
    if (d < best_d || (best.empty() && word.size() >= 3 && c.rfind(word, 0) == 0)) {
      best = c;
      best_d = std::min(d, best_d);
    }
  }
  return best;
}

void check_combination(const std::string& where, const TensorQuantCfg& w, const InputsCfg& in,
                       const std::vector<AlgorithmCfg>& algorithms, const std::vector<CustomAlgorithm>& custom) {
  std::vector<std::string> allowed_algos;
  std::string combo;
  if (!in.present) {
    combo = name_of(w.type) + " weight-only quantization";
    switch (w.type) {
      case Format::kInt8:
      case Format::kInt4:
      case Format::kFloat4E2M1:
      case Format::kFloat4E1M2: allowed_algos = {"minmax", "gptq", "awq"}; break;
      case Format::kHiFloat8: allowed_algos = {"minmax", "gptq", "ofmr", "cast", "quantile"}; break;
      case Format::kFloat8E4M3FN: allowed_algos = {"minmax", "gptq", "ofmr"}; break;
      case Format::kMxFp4E2M1: allowed_algos = {"minmax", "gptq", "awq", "mxquant"}; break;
      case Format::kMxFp8E4M3FN: allowed_algos = {"minmax", "gptq", "mxquant"}; break;
    }
  } else {
    const Format a = in.q.type;
    combo = name_of(a) + " x " + name_of(w.type) + " (activation x weight)";
    const std::string allowed =
        "allowed (activation x weight): int8 x int8, hifloat8 x hifloat8, float8_e4m3fn x float8_e4m3fn, "
        "mxfp8_e4m3fn x mxfp8_e4m3fn, mxfp8_e4m3fn x mxfp4_e2m1, float8_e4m3fn x float4_e2m1, "
        "int8 x int4 (smoothquant)";
    auto need_weight_strategy = [&](std::initializer_list<Granularity> ok, const char* names) {
      if (std::find(ok.begin(), ok.end(), w.strategy) == ok.end())
        value_error(where + "weights.strategy: '" + granularity_name(w.strategy) + "' is not allowed for " + combo +
                    "; allowed: " + names);
    };
    if (a == Format::kInt8 && w.type == Format::kInt8) {
      need_weight_strategy({Granularity::kTensor, Granularity::kChannel}, "tensor, channel");
      if (!w.symmetric) value_error(where + "weights.symmetric: False is not allowed for " + combo);
      allowed_algos = {"minmax", "smoothquant"};
    } else if (a == Format::kInt8 && w.type == Format::kInt4) {
      // W4A8: the outliers SmoothQuant moves into the weights make this usable
      if (!w.symmetric) value_error(where + "weights.symmetric: False is not allowed for " + combo);
      allowed_algos = {"smoothquant"};
    } else if (a == Format::kHiFloat8 && w.type == Format::kHiFloat8) {
      allowed_algos = {"minmax", "ofmr", "cast", "quantile", "smoothquant"};
    } else if (a == Format::kFloat8E4M3FN && w.type == Format::kFloat8E4M3FN) {
      allowed_algos = {"minmax", "ofmr"};
    } else if (a == Format::kMxFp8E4M3FN && (w.type == Format::kMxFp8E4M3FN || w.type == Format::kMxFp4E2M1)) {
      allowed_algos = {"mxquant", "minmax"};
    } else if (a == Format::kFloat8E4M3FN && w.type == Format::kFloat4E2M1) {
      if (in.q.strategy != Granularity::kTensor)
        value_error(where + "inputs.strategy: '" + granularity_name(in.q.strategy) + "' is not allowed for " + combo +
                    "; allowed: tensor");
      allowed_algos = {"minmax", "smoothquant"};
    } else {
      value_error(where.substr(0, where.empty() ? 0 : where.size() - 1) + (where.empty() ? "quant_cfg" : "") +
                  ": " + combo + " is not a legal combination; " + allowed);
    }
  }
  for (const auto& alg : algorithms) {
    if (find_custom(alg.name, custom)) continue;  // the user's modules decide
    if (std::find(allowed_algos.begin(), allowed_algos.end(), alg.name) == allowed_algos.end())
      value_error("algorithm: '" + alg.name + "' is not available for " + combo + "; allowed: " + join(allowed_algos));
  }
}

QuantConfig parse_quant_config(const ConfigValue& root, const std::vector<CustomAlgorithm>& custom) {
  if (root.kind != ConfigValue::Kind::kDict) type_error("config: expected a dict, got " + root.type_name);
  reject_unknown_keys("", root, {"batch_num", "quant_cfg", "algorithm", "skip_layers"});
  QuantConfig cfg;
  if (const ConfigValue* b = root.find("batch_num")) cfg.batch_num = get_positive_int("batch_num", *b);
  const ConfigValue* qc = root.find("quant_cfg");
  if (!qc) value_error("quant_cfg: missing; it must hold at least 'weights'");
  require_dict("quant_cfg", *qc);
  const ConfigValue* w = qc->find("weights");
  if (!w) value_error("quant_cfg.weights: missing");
  cfg.weights = parse_weights("quant_cfg.weights", *w);
  if (const ConfigValue* in = qc->find("inputs")) cfg.inputs = parse_inputs("quant_cfg.inputs", *in, false);
  cfg.algorithms = parse_algorithms(root.find("algorithm"), custom);
  for (const auto& kv : qc->dict) {
    const std::string& key = kv.first;
    if (key == "weights" || key == "inputs") continue;
    const std::string path = "quant_cfg." + key;
    auto ends_with = [&](const std::string& suffix) {
      return key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    LayerOverride* ov = nullptr;
    std::string glob;
    if (ends_with(".weights")) glob = key.substr(0, key.size() - 8);
    else if (ends_with(".inputs")) glob = key.substr(0, key.size() - 7);
    else {
      std::string hint = did_you_mean(key, {"weights", "inputs"});
      value_error(path + ": unknown key" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                  "; allowed: weights, inputs, '<glob>.weights', '<glob>.inputs'");
    }
    for (auto& o : cfg.overrides)
      if (o.glob == glob) ov = &o;
    if (!ov) {
      cfg.overrides.push_back(LayerOverride{});
      ov = &cfg.overrides.back();
      ov->glob = glob;
    }
    if (ends_with(".weights")) {
      ov->has_weights = true;
      ov->weights = parse_weights(path, kv.second);
    } else {
      ov->has_inputs = true;
      ov->inputs = parse_inputs(path, kv.second, true);
    }
  }
  check_combination("quant_cfg.", cfg.weights, cfg.inputs, cfg.algorithms, custom);
  for (const auto& o : cfg.overrides)
    check_combination("quant_cfg['" + o.glob + "'].", o.has_weights ? o.weights : cfg.weights,
                      o.has_inputs ? o.inputs : cfg.inputs, cfg.algorithms, custom);
  if (const ConfigValue* s = root.find("skip_layers")) {
    if (s->kind == ConfigValue::Kind::kString)
      type_error("skip_layers: expected an iterable of str (a set or list), got the str " + s->repr());
    if (s->kind != ConfigValue::Kind::kList)
      type_error("skip_layers: expected an iterable of str, got " + s->type_name + " " + s->repr());
    for (const auto& item : s->list) {
      if (item.kind != ConfigValue::Kind::kString)
        type_error("skip_layers: every entry must be a str, got " + item.type_name + " " + item.repr());
      cfg.skip_layers.push_back(item.s);
    }
  }
  return cfg;
}

}  // namespace lowbit
