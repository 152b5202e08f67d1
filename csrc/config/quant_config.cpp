#include "config/quant_config.h"

#include "config/capabilities.h"

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

// the weight and activation types: the format table's rows that allow them
const std::vector<std::string> kWeightTypes = format_name_list([](const FormatInfo& f) { return f.as_weight; });
const std::vector<std::string> kInputTypes = format_name_list([](const FormatInfo& f) { return f.as_input; });

bool is_mx(Format f) { return format_info(f).is_mx(); }

std::string allowed_granularities(unsigned mask) {
  std::string s;
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kGroup, Granularity::kToken})
    if (mask & granularity_bit(g)) s += std::string(s.empty() ? "" : ", ") + granularity_name(g);
  return s;
}
std::string name_of(Format f) { return format_info(f).name; }

// weights: {type, symmetric, strategy, group_size}
TensorQuantCfg parse_weights(const std::string& path, const ConfigValue& v) {
  require_dict(path, v);
  reject_unknown_keys(path, v, {"type", "symmetric", "strategy", "group_size", "scale_dtype", "scale_rule"});
  const ConfigValue* t = v.find("type");
  if (!t) value_error(path + ".type: missing; allowed: " + join(kWeightTypes));
  TensorQuantCfg c;
  c.type = parse_format(get_string(path + ".type", *t, kWeightTypes));
  const FormatInfo& info = format_info(c.type);
  c.symmetric = v.find("symmetric") ? get_bool(path + ".symmetric", *v.find("symmetric")) : true;
  c.strategy = v.find("strategy")
                   ? parse_granularity(get_string(path + ".strategy", *v.find("strategy"), {"tensor", "channel", "group"}))
                   : info.default_granularity;
  if (const ConfigValue* g = v.find("group_size")) {
    if (c.strategy != Granularity::kGroup)
      value_error(path + ".group_size: only allowed with strategy 'group' (strategy is '" +
                  granularity_name(c.strategy) + "')");
    c.group_size = get_positive_int(path + ".group_size", *g);
  } else if (c.strategy == Granularity::kGroup) {
    c.group_size = info.default_group;
  }
  if (c.strategy == Granularity::kGroup && c.group_size % 32 != 0)
    value_error(path + ".group_size: " + std::to_string(c.group_size) + " is not a multiple of 32");
  if (c.strategy == Granularity::kGroup && c.group_size > kMaxGroupSize)
    value_error(path + ".group_size: " + std::to_string(c.group_size) + " is larger than " +
                std::to_string(kMaxGroupSize) + "; allowed: multiples of 32 up to " + std::to_string(kMaxGroupSize));
  if (info.is_mx() && (c.strategy != Granularity::kGroup || c.group_size != info.block))
    value_error(path + ": " + name_of(c.type) + " weights use blocks of " + std::to_string(info.block) +
                ": strategy must be 'group' with group_size " + std::to_string(info.block));
  if (!(info.weight_granularities & granularity_bit(c.strategy)))
    value_error(path + ".strategy: '" + granularity_name(c.strategy) + "' is not allowed for " + name_of(c.type) +
                "; allowed: " + allowed_granularities(info.weight_granularities));
  if (!c.symmetric && !info.allows_asym)
    value_error(path + ".symmetric: False is only allowed for " +
                format_names_where([](const FormatInfo& f) { return f.allows_asym; }) + " (" + name_of(c.type) +
                " is symmetric)");
  if (const ConfigValue* sd = v.find("scale_dtype")) {
    const std::string dt = get_string(path + ".scale_dtype", *sd, scale_dtype_names());
    c.fp16_scale = dt == "float16";
    c.superblock_scales = dt != "float32" && dt != "float16";
    const bool own_grid = info.superblock_scale && dt == info.superblock_scale;
    if (c.superblock_scales && (!own_grid || !c.symmetric || c.strategy != Granularity::kGroup || c.group_size != 32))
      value_error(path + ".scale_dtype: '" + dt + "' is only allowed for symmetric " + superblock_format_names(dt) +
                  " weights with strategy 'group' and group_size 32 (got " + (c.symmetric ? "" : "asymmetric ") +
                  name_of(c.type) + ", strategy '" + granularity_name(c.strategy) + "'" +
                  (c.strategy == Granularity::kGroup ? ", group_size " + std::to_string(c.group_size) : "") +
                  "); allowed for it: float32" + (info.allows_fp16_scale ? ", float16" : "") +
                  (info.superblock_scale ? ", " + std::string(info.superblock_scale) : ""));
    if (c.fp16_scale && !info.allows_fp16_scale)
      value_error(path + ".scale_dtype: 'float16' is only allowed for " +
                  format_names_where([](const FormatInfo& f) { return f.allows_fp16_scale; }) + " weights (" +
                  name_of(c.type) + " scales are not integer-grid scales); allowed for " + name_of(c.type) +
                  ": float32");
  }
  if (const ConfigValue* sr = v.find("scale_rule")) {
    c.signed_max = get_string(path + ".scale_rule", *sr, {"absmax", "signed_max"}) == "signed_max";
    if (c.signed_max && (!info.allows_signed_max || !c.symmetric))
      value_error(path + ".scale_rule: 'signed_max' is only allowed for symmetric " +
                  format_names_where([](const FormatInfo& f) { return f.allows_signed_max; }) + " weights (got " +
                  (c.symmetric ? "" : std::string("asymmetric ")) + name_of(c.type) + "); allowed for " +
                  (c.symmetric ? "" : std::string("asymmetric ")) + name_of(c.type) + ": absmax");
  }
  return c;
}

// inputs: {type, symmetric, strategy, dynamic} or {enable_quant: False} (weight-only; globally the
// same as no 'inputs', AMCT's spelling)
InputsCfg parse_inputs(const std::string& path, const ConfigValue& v) {
  require_dict(path, v);
  if (const ConfigValue* e = v.find("enable_quant")) {
    if (v.dict.size() != 1) value_error(path + ": 'enable_quant' cannot be combined with other keys");
    if (get_bool(path + ".enable_quant", *e)) value_error(path + ".enable_quant: only False is meaningful here");
    return InputsCfg{};
  }
  reject_unknown_keys(path, v, {"type", "symmetric", "strategy", "group_size", "dynamic"});
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
    if (!mx)
      value_error(path + ".group_size: only allowed for " +
                  format_names_where([](const FormatInfo& f) { return f.as_input && f.is_mx(); }) + " inputs");
    if (get_positive_int(path + ".group_size", *g) != 32)
      value_error(path + ".group_size: " + g->repr() + " is not allowed; MX blocks are 32");
  }
  c.group_size = mx ? 32 : 0;
  if (const ConfigValue* d = v.find("dynamic")) {  // AMCT's key: True = per-token ranges at run time
    const bool dynamic = get_bool(path + ".dynamic", *d);
    if (mx) value_error(path + ".dynamic: not allowed for " + name_of(c.type) + " inputs (MX scales are always per block)");
    if (dynamic && v.find("strategy") && c.strategy != Granularity::kToken)
      value_error(path + ".dynamic: True needs strategy 'token' (got '" + granularity_name(c.strategy) +
                  "'); dynamic activations are quantized per token");
    if (!dynamic && c.strategy == Granularity::kToken)
      value_error(path + ".dynamic: False contradicts strategy 'token' (per-token activations are dynamic)");
    if (dynamic) c.strategy = Granularity::kToken;
  }
  if (!c.symmetric && !format_info(c.type).allows_asym)
    value_error(path + ".symmetric: False is only allowed for " +
                format_names_where([](const FormatInfo& f) { return f.as_input && f.allows_asym; }) + " inputs");
  if (!c.symmetric && c.strategy == Granularity::kToken)
    value_error(path + ".symmetric: False is not allowed with strategy 'token' (dynamic per-token is symmetric)");
  return in;
}

const CustomAlgorithm* find_custom(const std::string& name, const std::vector<CustomAlgorithm>& custom) {
  for (const auto& c : custom)
    if (c.name == name) return &c;
  return nullptr;
}

// One declared parameter's value (config/algorithm_table.h).
ParamValue parse_param(const std::string& path, const AlgorithmParam& decl, const ConfigValue& v) {
  ParamValue out{decl.name, decl.kind, decl.default_value, false};
  switch (decl.kind) {
    case ParamKind::kPositiveInt:
      out.value = double(get_positive_int(path, v));
      break;
    case ParamKind::kOpenUnitOrAuto:
      if (v.kind == ConfigValue::Kind::kString) {
        if (v.s != "auto") value_error(path + ": " + v.repr() + " is not allowed; allowed: a float in (0, 1) or 'auto'");
        out.automatic = true;
        break;
      }
      if (v.kind != ConfigValue::Kind::kFloat && v.kind != ConfigValue::Kind::kInt)
        type_error(path + ": expected a float or 'auto', got " + v.type_name + " " + v.repr());
      out.value = v.kind == ConfigValue::Kind::kFloat ? v.f : double(v.i);
      if (!(out.value > 0.0 && out.value < 1.0)) value_error(path + ": " + v.repr() + " is not in the open interval (0, 1)");
      break;
  }
  return out;
}

// A built-in algorithm's parameters: its row's defaults, then the config's values.
std::vector<ParamValue> parse_params(const std::string& path, const AlgorithmRow& row, const ConfigValue* given) {
  std::vector<ParamValue> out;
  for (const auto& decl : row.params) out.push_back(ParamValue{decl.name, decl.kind, decl.default_value, false});
  if (!given || given->kind == ConfigValue::Kind::kNone) return out;
  require_dict(path, *given);
  if (row.params.empty()) {
    if (!given->dict.empty()) value_error(path + ": takes no parameters, got " + given->repr());
    return out;
  }
  std::vector<std::string> names;
  for (const auto& decl : row.params) names.push_back(decl.name);
  reject_unknown_keys(path, *given, names);
  for (size_t i = 0; i < row.params.size(); ++i)
    if (const ConfigValue* v = given->find(row.params[i].name))
      out[i] = parse_param(path + "." + row.params[i].name, row.params[i], *v);
  return out;
}

std::vector<AlgorithmCfg> parse_algorithms(const ConfigValue* v, const std::vector<CustomAlgorithm>& custom) {
  std::vector<AlgorithmCfg> out;
  if (!v) return {AlgorithmCfg{"minmax", {}}};
  std::vector<std::string> names = algorithm_names();
  for (const auto& c : custom) names.push_back(c.name);
  auto add = [&](const std::string& path, const ConfigValue& name, const ConfigValue* params) {
    AlgorithmCfg a;
    a.name = get_string(path, name, names);
    if (find_custom(a.name, custom)) {
      if (params && params->kind != ConfigValue::Kind::kNone) require_dict("algorithm." + a.name, *params);
    } else {
      a.params = parse_params("algorithm." + a.name, *find_algorithm(a.name), params);
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

TensorQuantCfg parse_weights_entry(const std::string& path, const ConfigValue& v) { return parse_weights(path, v); }
InputsCfg parse_inputs_entry(const std::string& path, const ConfigValue& v) { return parse_inputs(path, v); }
std::vector<AlgorithmCfg> parse_algorithm_entry(const ConfigValue* v, const std::vector<CustomAlgorithm>& custom) {
  return parse_algorithms(v, custom);
}

std::vector<std::string> algorithm_layer_types(const std::string& name, const std::vector<CustomAlgorithm>& custom) {
  if (const CustomAlgorithm* c = find_custom(name, custom)) return c->layer_types;
  if (const AlgorithmRow* row = find_algorithm(name)) return row->layer_types;
  return {"Linear", "Conv2d"};
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
  // custom algorithms decide for themselves which formats they take
  if (std::all_of(algorithms.begin(), algorithms.end(),
                  [&](const AlgorithmCfg& a) { return find_custom(a.name, custom) != nullptr; }))
    return;
  const std::string combo = combination_name(in, w.type);
  const Capability* row = find_capability(in, w.type);
  if (!row)
    value_error(where.substr(0, where.empty() ? 0 : where.size() - 1) + (where.empty() ? "quant_cfg" : "") + ": " +
                combo + " is not a legal combination; allowed (activation x weight): " + legal_combinations());
  auto names = [](const std::vector<Granularity>& v) {
    std::vector<std::string> s;
    for (Granularity g : v) s.push_back(granularity_name(g));
    return join(s);
  };
  if (!row->weight_strategies.empty() &&
      std::find(row->weight_strategies.begin(), row->weight_strategies.end(), w.strategy) == row->weight_strategies.end())
    value_error(where + "weights.strategy: '" + granularity_name(w.strategy) + "' is not allowed for " + combo +
                "; allowed: " + names(row->weight_strategies));
  if (!w.symmetric && !row->weight_asym) value_error(where + "weights.symmetric: False is not allowed for " + combo);
  if (in.present && !row->act_strategies.empty() &&
      std::find(row->act_strategies.begin(), row->act_strategies.end(), in.q.strategy) == row->act_strategies.end())
    value_error(where + "inputs.strategy: '" + granularity_name(in.q.strategy) + "' is not allowed for " + combo +
                "; allowed: " + names(row->act_strategies));
  for (const auto& alg : algorithms) {
    if (find_custom(alg.name, custom)) continue;  // the user's modules decide
    if (std::find(row->algorithms.begin(), row->algorithms.end(), alg.name) == row->algorithms.end())
      value_error("algorithm: '" + alg.name + "' is not available for " + combo + "; allowed: " + join(row->algorithms));
  }
}

QuantConfig parse_quant_config(const ConfigValue& root, const std::vector<CustomAlgorithm>& custom) {
  if (root.kind != ConfigValue::Kind::kDict) type_error("config: expected a dict, got " + root.type_name);
  reject_unknown_keys("", root, {"batch_num", "quant_cfg", "algorithm", "skip_layers", "bias_correction"});
  QuantConfig cfg;
  if (const ConfigValue* b = root.find("batch_num")) cfg.batch_num = get_positive_int("batch_num", *b);
  if (const ConfigValue* b = root.find("bias_correction")) cfg.bias_correction = get_bool("bias_correction", *b);
  const ConfigValue* qc = root.find("quant_cfg");
  if (!qc) value_error("quant_cfg: missing; it must hold 'weights' or '<glob>.weights' entries");
  require_dict("quant_cfg", *qc);
  const ConfigValue* w = qc->find("weights");
  cfg.has_weights = w != nullptr;
  if (w) cfg.weights = parse_weights("quant_cfg.weights", *w);
  if (const ConfigValue* in = qc->find("inputs")) cfg.inputs = parse_inputs("quant_cfg.inputs", *in);
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
      ov->inputs = parse_inputs(path, kv.second);
    }
  }
  // Without a global 'weights', only the layers that a '<glob>.weights' entry matches are
  // quantized (AMCT quantizes just those).
  if (!cfg.has_weights && std::none_of(cfg.overrides.begin(), cfg.overrides.end(),
                                       [](const LayerOverride& o) { return o.has_weights; }))
    value_error("quant_cfg.weights: missing; give 'weights' or at least one '<glob>.weights' entry");
  if (cfg.has_weights) check_combination("quant_cfg.", cfg.weights, cfg.inputs, cfg.algorithms, custom);
  for (const auto& o : cfg.overrides)
    if (o.has_weights || cfg.has_weights)
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
