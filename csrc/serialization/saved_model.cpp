#include "serialization/saved_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "formats/half.h"
#include "scales/granule_scale.h"
#include "serialization/json.h"

namespace lowbit {

namespace {

[[noreturn]] void bad(const std::string& field, const std::string& msg) {
  throw std::invalid_argument(field + ": " + msg);
}

const char* kind_name(JsonValue::Kind k) {
  switch (k) {
    case JsonValue::Kind::kNull: return "null";
    case JsonValue::Kind::kBool: return "bool";
    case JsonValue::Kind::kInt: return "int";
    case JsonValue::Kind::kNumber: return "float";
    case JsonValue::Kind::kString: return "str";
    case JsonValue::Kind::kArray: return "list";
    case JsonValue::Kind::kObject: return "dict";
  }
  return "?";
}

const JsonValue& need(const std::string& field, const JsonValue* v, JsonValue::Kind kind) {
  if (!v) bad(field, "missing");
  if (v->kind != kind) bad(field, std::string("expected a ") + kind_name(kind) + ", got a " + kind_name(v->kind));
  return *v;
}

void only_keys(const std::string& field, const JsonValue& obj, std::initializer_list<const char*> allowed) {
  for (const auto& kv : obj.object) {
    bool ok = false;
    for (const char* a : allowed) ok = ok || kv.first == a;
    if (!ok) bad(field, "unknown key '" + kv.first + "'");
  }
}

// JSON -> the config validator's value type (what a Python dict would convert to)
ConfigValue to_config(const JsonValue& j) {
  ConfigValue v;
  v.type_name = kind_name(j.kind);
  switch (j.kind) {
    case JsonValue::Kind::kNull: v.kind = ConfigValue::Kind::kNone; v.type_name = "NoneType"; break;
    case JsonValue::Kind::kBool: v.kind = ConfigValue::Kind::kBool; v.b = j.boolean; break;
    case JsonValue::Kind::kInt: v.kind = ConfigValue::Kind::kInt; v.i = j.integer; break;
    case JsonValue::Kind::kNumber: v.kind = ConfigValue::Kind::kFloat; v.f = j.number; break;
    case JsonValue::Kind::kString: v.kind = ConfigValue::Kind::kString; v.s = j.str; break;
    case JsonValue::Kind::kArray:
      v.kind = ConfigValue::Kind::kList;
      for (const auto& x : j.array) v.list.push_back(to_config(x));
      break;
    case JsonValue::Kind::kObject:
      v.kind = ConfigValue::Kind::kDict;
      for (const auto& kv : j.object) v.dict.emplace_back(kv.first, to_config(kv.second));
      break;
  }
  return v;
}

// A normalized tensor entry as a config entry: group_size only where the strategy is 'group'.
ConfigValue config_entry(const std::string& field, const JsonValue& j) {
  need(field, &j, JsonValue::Kind::kObject);
  ConfigValue v = to_config(j);
  const JsonValue* strategy = j.find("strategy");
  const bool group = strategy && strategy->kind == JsonValue::Kind::kString && strategy->str == "group";
  if (!group) {
    const JsonValue* gs = j.find("group_size");
    if (gs && !(gs->kind == JsonValue::Kind::kInt && gs->integer == 0))
      bad(field + ".group_size", "must be 0 outside strategy 'group'");
    v.dict.erase(std::remove_if(v.dict.begin(), v.dict.end(), [](const auto& kv) { return kv.first == "group_size"; }),
                 v.dict.end());
  }
  return v;
}

ConfigValue dict_value(std::vector<std::pair<std::string, ConfigValue>> items) {
  ConfigValue v;
  v.kind = ConfigValue::Kind::kDict;
  v.type_name = "dict";
  v.dict = std::move(items);
  return v;
}

// ---- stored values ----
struct LayerTensors {
  const std::map<std::string, TensorRef>& all;
  std::string prefix;  // "name." or "" for the root module
  const TensorRef* get(const std::string& key) const {
    auto it = all.find(prefix + key);
    return it == all.end() ? nullptr : &it->second;
  }
  std::string field(const std::string& key) const { return "tensor '" + prefix + key + "'"; }
};

int64_t numel(const TensorRef& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;  // the reader bounded the product already
  return n;
}

size_t dtype_bytes(const std::string& d) {
  if (d == "F64" || d == "I64") return 8;
  if (d == "F32" || d == "I32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16") return 2;
  return 1;
}

// Every tensor the validator reads: its bytes must be exactly its shape's.
void need_consistent(const std::string& field, const TensorRef& t) {
  if (size_t(numel(t)) * dtype_bytes(t.dtype) != t.bytes) bad(field, "bytes do not match its shape and dtype");
}

void need_tensor(const std::string& field, const TensorRef& t, const char* dtype, int64_t count) {
  need_consistent(field, t);
  if (t.dtype != dtype) bad(field, "dtype " + t.dtype + ", expected " + dtype);
  if (numel(t) != count)
    bad(field, std::to_string(numel(t)) + " elements, expected " + std::to_string(count) + " for the layer's settings");
}

float element(const TensorRef& t, int64_t i) {
  if (t.dtype == "F32") {
    float f;
    std::memcpy(&f, t.data + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, t.data + 2 * i, 2);
  return t.dtype == "BF16" ? bf16_to_float(h) : fp16_to_float(h);
}

void need_float_values(const std::string& field, const TensorRef& t, bool positive) {
  need_consistent(field, t);
  if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16") bad(field, "dtype " + t.dtype + " is not a float type");
  const int64_t n = numel(t);
  for (int64_t i = 0; i < n; ++i) {
    const float v = element(t, i);
    if (!std::isfinite(v)) bad(field, "element " + std::to_string(i) + " is not finite");
    if (positive && !(v > 0.0f)) bad(field, "element " + std::to_string(i) + " is " + std::to_string(v) + ", not positive");
  }
}

void need_int_range(const std::string& field, const TensorRef& t, int32_t lo, int32_t hi) {
  need_consistent(field, t);
  if (t.dtype != "I32") bad(field, "dtype " + t.dtype + ", expected I32");
  const int64_t n = numel(t);
  for (int64_t i = 0; i < n; ++i) {
    int32_t v;
    std::memcpy(&v, t.data + 4 * i, 4);
    if (v < lo || v > hi)
      bad(field, "element " + std::to_string(i) + " is " + std::to_string(v) + ", outside [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "]");
  }
}

// Scale count of an [n, k] weight under the entry's strategy.
int64_t scale_count(const TensorQuantCfg& c, int64_t n, int64_t k) {
  switch (c.strategy) {
    case Granularity::kTensor: return 1;
    case Granularity::kGroup: return n * ((k + c.group_size - 1) / c.group_size);
    default: return n;
  }
}

void check_layer_tensors(const LayerTensors& lt, const QuantConfig& cfg, bool conv, const std::vector<int64_t>& shape,
                         bool folded_bn) {
  const int64_t n = shape[0];
  int64_t k = 1;
  for (size_t i = 1; i < shape.size(); ++i) k *= shape[i];
  const TensorQuantCfg& w = cfg.weights;
  const FormatInfo& wf = format_info(w.type);
  const bool two_level = cfg.inputs.present && cfg.inputs.q.type == Format::kFloat8E4M3FN && w.type == Format::kFloat4E2M1;

  const TensorRef* packed = lt.get("weight_packed");
  if (!packed) bad(lt.field("weight_packed"), "missing");
  need_tensor(lt.field("weight_packed"), *packed, "U8", n * packed_row_bytes(w.type, k));
  if (wf.nan_code >= 0) {  // codes with a NaN code (8-bit floats): quantization never writes it
    const uint8_t mask = uint8_t(wf.nan_mask), nan = uint8_t(wf.nan_code);
    for (size_t i = 0; i < packed->bytes; ++i)
      if ((packed->data[i] & mask) == nan)
        bad(lt.field("weight_packed"), "code " + std::to_string(i) + " is a NaN code of " + wf.name +
                                           ", which quantization never writes");
  }
  if (wf.is_int() && wf.int_bits < wf.bits) {  // a narrower integer in wider storage (int3 in nibbles)
    const int lo = -(1 << (wf.int_bits - 1)), hi = (1 << (wf.int_bits - 1)) - 1, per_byte = 8 / wf.bits;
    for (size_t i = 0; i < packed->bytes; ++i)
      for (int j = 0; j < per_byte; ++j) {
        const int c = (packed->data[i] >> (j * wf.bits)) & ((1 << wf.bits) - 1);
        const int v = c >= (1 << (wf.bits - 1)) ? c - (1 << wf.bits) : c;
        if (v < lo || v > hi)
          bad(lt.field("weight_packed"), "byte " + std::to_string(i) + " holds code " + std::to_string(v) +
                                             ", outside " + wf.name + "'s " + std::to_string(lo) + ".." +
                                             std::to_string(hi));
      }
  }
  const TensorRef* scale = lt.get("w_scale");
  if (!scale) bad(lt.field("w_scale"), "missing");
  const int64_t scales = scale_count(w, n, k);
  if (wf.is_mx()) {  // E8M0 exponents; 0xFF is NaN
    need_tensor(lt.field("w_scale"), *scale, "U8", scales);
    for (size_t i = 0; i < scale->bytes; ++i)
      if (scale->data[i] == 0xFF) bad(lt.field("w_scale"), "element " + std::to_string(i) + " is the E8M0 NaN code");
  } else {
    need_tensor(lt.field("w_scale"), *scale, "F32", scales);
    // signed_max (symmetric int4): finite, non-zero, either sign; every other rule: positive
    need_float_values(lt.field("w_scale"), *scale, !w.signed_max);
    if (w.signed_max)
      for (int64_t i = 0; i < scales; ++i)
        if (element(*scale, i) == 0.0f)
          bad(lt.field("w_scale"), "element " + std::to_string(i) + " is 0 (the layer's scale_rule is signed_max: "
                                   "scales are non-zero, of either sign)");
    if (w.fp16_scale)  // scale_dtype float16: every scale is an fp16 value
      for (int64_t i = 0; i < scales; ++i) {
        const float v = element(*scale, i);
        if (fp16_to_float(float_to_fp16(v)) != v)
          bad(lt.field("w_scale"), "element " + std::to_string(i) + " is " + std::to_string(v) +
                                       ", not a float16 value (the layer's scale_dtype is float16)");
      }
    if (w.superblock_scales) {  // scale_dtype q4_k / q6_k: each row's runs of 8 group scales are d x [1, sc_max]
      const int64_t groups = scales / n;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t b = 0; b < groups; b += kSuperBlockGroups) {
          const int64_t len = std::min(kSuperBlockGroups, groups - b);
          float s[kSuperBlockGroups], d;
          uint8_t sc[kSuperBlockGroups];
          for (int64_t j = 0; j < len; ++j) s[j] = element(*scale, r * groups + b + j);
          if (!split_superblock_scales(s, len, wf.superblock_sc_max, &d, sc))
            bad(lt.field("w_scale"), "row " + std::to_string(r) + ", groups " + std::to_string(b) + ".." +
                                         std::to_string(b + len - 1) + " are not an fp16 d times integers 1.." +
                                         std::to_string(wf.superblock_sc_max) + " (the layer's scale_dtype is " +
                                         wf.superblock_scale + ")");
        }
    }
  }
  const TensorRef* offset = lt.get("w_offset");
  if (!offset) bad(lt.field("w_offset"), "missing");
  if (w.symmetric) {
    need_tensor(lt.field("w_offset"), *offset, "I32", 0);
  } else {
    need_tensor(lt.field("w_offset"), *offset, "I32", scales);
    const int32_t half = int32_t(1) << (wf.bits - 1);
    need_int_range(lt.field("w_offset"), *offset, -half, half - 1);
  }
  if (const TensorRef* s1 = lt.get("w_scale1")) {
    if (!two_level && !folded_bn) bad(lt.field("w_scale1"), "present, but the layer has no per-row multiplier");
    need_tensor(lt.field("w_scale1"), *s1, "F32", n);
    need_float_values(lt.field("w_scale1"), *s1, two_level && !folded_bn);
  } else if (two_level || folded_bn) {
    bad(lt.field("w_scale1"), "missing");
  }
  if (const TensorRef* bias = lt.get("bias")) {
    if (numel(*bias) != n) bad(lt.field("bias"), std::to_string(numel(*bias)) + " elements for " + std::to_string(n) + " outputs");
    need_float_values(lt.field("bias"), *bias, false);
  }
  if (const TensorRef* smooth = lt.get("smooth")) {
    if (conv) bad(lt.field("smooth"), "a convolution has no smoothing factors");
    need_tensor(lt.field("smooth"), *smooth, "F32", k);
    need_float_values(lt.field("smooth"), *smooth, true);
  }
  const bool static_act = cfg.inputs.present && cfg.inputs.q.strategy == Granularity::kTensor &&
                          cfg.algorithms[0].name != "cast";
  const TensorRef* act_scale = lt.get("act_scale");
  const TensorRef* act_offset = lt.get("act_offset");
  if (static_act) {
    if (!act_scale) bad(lt.field("act_scale"), "missing (static activation scale)");
    if (!act_offset) bad(lt.field("act_offset"), "missing (static activation scale)");
    need_tensor(lt.field("act_scale"), *act_scale, "F32", 1);
    need_float_values(lt.field("act_scale"), *act_scale, true);
    need_tensor(lt.field("act_offset"), *act_offset, "I32", 1);
    const bool asym = cfg.inputs.q.type == Format::kInt8 && !cfg.inputs.q.symmetric;
    need_int_range(lt.field("act_offset"), *act_offset, asym ? -128 : 0, asym ? 127 : 0);
  } else if (act_scale || act_offset) {
    bad(lt.field(act_scale ? "act_scale" : "act_offset"), "present, but the layer has no static activation scale");
  }
}

}  // namespace

void validate_saved_model(const std::string& meta_json, const std::map<std::string, TensorRef>& tensors,
                          const std::vector<CustomAlgorithm>& custom) {
  JsonValue root;
  try {
    root = parse_json(meta_json);
  } catch (const std::invalid_argument& e) {
    bad("metadata", std::string("not valid JSON: ") + e.what());
  }
  need("metadata", &root, JsonValue::Kind::kObject);
  only_keys("metadata", root, {"format", "layers", "skipped"});
  const JsonValue& format = need("format", root.find("format"), JsonValue::Kind::kString);
  if (format.str != kSavedModelFormat)
    bad("format", "'" + format.str + "' is not supported; this lowbit reads '" + kSavedModelFormat + "'");
  if (const JsonValue* skipped = root.find("skipped")) {
    need("skipped", skipped, JsonValue::Kind::kObject);
    for (const auto& kv : skipped->object) need("skipped['" + kv.first + "']", &kv.second, JsonValue::Kind::kString);
  }
  const JsonValue& layers = need("layers", root.find("layers"), JsonValue::Kind::kObject);
  if (layers.object.empty()) bad("layers", "empty: a saved model holds at least one quantized layer");
  for (const auto& kv : layers.object) {
    const std::string& name = kv.first;
    const std::string f = "layers['" + name + "']";
    const JsonValue& info = need(f, &kv.second, JsonValue::Kind::kObject);
    only_keys(f, info, {"config", "module", "weight_shape", "weight_dtype", "folded_batchnorm"});
    const JsonValue& cfg = need(f + ".config", info.find("config"), JsonValue::Kind::kObject);
    only_keys(f + ".config", cfg, {"algorithm", "batch_num", "inputs", "params", "weights"});
    const JsonValue& alg = need(f + ".config.algorithm", cfg.find("algorithm"), JsonValue::Kind::kString);
    const JsonValue* params = cfg.find("params");
    if (params && params->kind != JsonValue::Kind::kNull) need(f + ".config.params", params, JsonValue::Kind::kObject);
    const JsonValue* inputs = cfg.find("inputs");
    if (!inputs) bad(f + ".config.inputs", "missing (null for weight-only layers)");
    std::vector<std::pair<std::string, ConfigValue>> qc = {
        {"weights", config_entry(f + ".config.weights", need(f + ".config.weights", cfg.find("weights"),
                                                                 JsonValue::Kind::kObject))}};
    if (inputs->kind != JsonValue::Kind::kNull) qc.emplace_back("inputs", config_entry(f + ".config.inputs", *inputs));
    ConfigValue algorithm = dict_value({{alg.str, params ? to_config(*params) : ConfigValue{}}});
    std::vector<std::pair<std::string, ConfigValue>> top = {{"quant_cfg", dict_value(std::move(qc))},
                                                            {"algorithm", std::move(algorithm)}};
    if (const JsonValue* b = cfg.find("batch_num")) top.emplace_back("batch_num", to_config(*b));
    else bad(f + ".config.batch_num", "missing");
    QuantConfig parsed;
    try {
      parsed = parse_quant_config(dict_value(std::move(top)), custom);
    } catch (const ConfigError& e) {
      bad(f + ".config", e.message);
    }
    const bool is_custom = std::any_of(custom.begin(), custom.end(), [&](const CustomAlgorithm& c) { return c.name == alg.str; });
    const JsonValue& module = need(f + ".module", info.find("module"), JsonValue::Kind::kString);
    const JsonValue& shape_v = need(f + ".weight_shape", info.find("weight_shape"), JsonValue::Kind::kArray);
    std::vector<int64_t> shape;
    int64_t count = 1;
    for (const auto& d : shape_v.array) {
      if (d.kind != JsonValue::Kind::kInt || d.integer < 1 || d.integer > (int64_t(1) << 31))
        bad(f + ".weight_shape", "entries must be ints in [1, 2^31]");
      shape.push_back(d.integer);
      count *= d.integer;
      if (count > (int64_t(1) << 40)) bad(f + ".weight_shape", "more than 2^40 weights");
    }
    bool conv = false;
    if (module.str == "DeployLinear") {
      if (shape.size() != 2) bad(f + ".weight_shape", "a Linear weight has 2 dimensions, got " + std::to_string(shape.size()));
    } else if (module.str == "DeployConv2d") {
      conv = true;
      if (shape.size() != 4) bad(f + ".weight_shape", "a Conv2d weight has 4 dimensions, got " + std::to_string(shape.size()));
    } else if (!is_custom) {
      bad(f + ".module", "'" + module.str + "' is not allowed; allowed: DeployLinear, DeployConv2d");
    } else if (shape.size() != 2 && shape.size() != 4) {
      bad(f + ".weight_shape", "2 or 4 dimensions expected");
    }
    if (!is_custom) {
      const auto types = algorithm_layer_types(alg.str, custom);
      if (std::find(types.begin(), types.end(), conv ? "Conv2d" : "Linear") == types.end())
        bad(f + ".config.algorithm", "'" + alg.str + "' does not handle nn." + (conv ? "Conv2d" : "Linear"));
    }
    const JsonValue& wd = need(f + ".weight_dtype", info.find("weight_dtype"), JsonValue::Kind::kString);
    if (wd.str != "torch.float32" && wd.str != "torch.float16" && wd.str != "torch.bfloat16")
      bad(f + ".weight_dtype", "'" + wd.str + "' is not allowed; allowed: torch.float32, torch.float16, torch.bfloat16");
    const JsonValue* bn = info.find("folded_batchnorm");
    if (bn) {
      need(f + ".folded_batchnorm", bn, JsonValue::Kind::kString);
      if (!conv) bad(f + ".folded_batchnorm", "only a Conv2d layer can hold a folded BatchNorm");
      if (bn->str.empty()) bad(f + ".folded_batchnorm", "empty name");
    }
    if (is_custom) continue;  // a registered algorithm's modules decide what they store
        if (conv && parsed.inputs.present) {  // the convolution kernels' activation rule (as quantize's planner)
      const TensorQuantCfg& a = parsed.inputs.q;
      if (a.strategy != Granularity::kTensor ||
          (a.type != Format::kInt8 && a.type != Format::kHiFloat8 && a.type != Format::kFloat8E4M3FN) ||
          (a.type == Format::kInt8 && !a.symmetric))
        bad(f + ".config.inputs", "a Conv2d layer takes symmetric int8, hifloat8 or float8_e4m3fn activations per tensor");
    }
    check_layer_tensors(LayerTensors{tensors, name.empty() ? "" : name + "."}, parsed, conv, shape, bn != nullptr);
  }
}

}  // namespace lowbit
