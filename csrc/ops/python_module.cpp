// The Python extension `lowbit._C`. Importing it loads liblowbit_ops.so (linked with
// $ORIGIN rpath), whose static initialisers register the torch.ops.lowbit.* operators.
// It also carries the config validator: Python dicts are converted to ConfigValue and
// checked by the C++ rules (config/quant_config.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdio>

#include "config/capabilities.h"
#include "config/quant_config.h"
#include "serialization/atomic_file.h"
#include "serialization/json.h"

namespace py = pybind11;

namespace lowbit {
const char* ops_library_version();

namespace {

// Python value -> ConfigValue. Never crashes on any input: nesting is bounded (a dict
// that contains itself is named as such), ints must fit in int64, strings must be
// encodable as UTF-8; every problem is a ConfigError naming the key path.
constexpr int kMaxConfigDepth = 32;

std::string type_name_of(py::handle h) { return py::str(py::type::of(h).attr("__name__")); }

std::string utf8_of(py::handle h, const std::string& path) {
  Py_ssize_t n = 0;
  const char* p = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
  if (!p) {
    PyErr_Clear();
    throw ConfigError{false, path + ": the str cannot be encoded as UTF-8 (lone surrogate?)"};
  }
  return std::string(p, size_t(n));
}

ConfigValue to_value(py::handle h, const std::string& path, std::vector<PyObject*>& stack) {
  if (stack.size() >= size_t(kMaxConfigDepth))
    throw ConfigError{false, path + ": nested more than " + std::to_string(kMaxConfigDepth) + " levels deep"};
  ConfigValue v;
  v.type_name = type_name_of(h);
  if (h.is_none()) {
    v.kind = ConfigValue::Kind::kNone;
  } else if (py::isinstance<py::bool_>(h)) {
    v.kind = ConfigValue::Kind::kBool;
    v.b = h.ptr() == Py_True;
  } else if (py::isinstance<py::int_>(h)) {
    int overflow = 0;
    const long long x = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
      PyErr_Clear();
      throw ConfigError{false, path + ": the int " + std::string(py::str(h)).substr(0, 40) +
                                   " is out of range (at most 2**63 - 1 in magnitude)"};
    }
    v.kind = ConfigValue::Kind::kInt;
    v.i = x;
  } else if (py::isinstance<py::float_>(h)) {
    v.kind = ConfigValue::Kind::kFloat;
    v.f = PyFloat_AsDouble(h.ptr());
  } else if (py::isinstance<py::str>(h)) {
    v.kind = ConfigValue::Kind::kString;
    v.s = utf8_of(h, path);
  } else if (py::isinstance<py::dict>(h) || py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h) ||
             py::isinstance<py::set>(h) || py::isinstance<py::frozenset>(h)) {
    if (std::find(stack.begin(), stack.end(), h.ptr()) != stack.end())
      throw ConfigError{false, path + ": the " + v.type_name + " contains itself"};
    stack.push_back(h.ptr());
    if (py::isinstance<py::dict>(h)) {
      v.kind = ConfigValue::Kind::kDict;
      for (auto kv : h.cast<py::dict>()) {
        if (!py::isinstance<py::str>(kv.first))
          throw ConfigError{true, path + ": every key must be a str, got " +
                                      type_name_of(kv.first) + " " + std::string(py::repr(kv.first))};
        std::string key = utf8_of(kv.first, path + " key " + std::string(py::repr(kv.first)));
        const std::string child = path == "config" ? key : path + "." + key;
        v.dict.emplace_back(key, to_value(kv.second, child, stack));
      }
    } else {
      v.kind = ConfigValue::Kind::kList;
      size_t i = 0;
      for (auto item : py::iter(h)) v.list.push_back(to_value(item, path + "[" + std::to_string(i++) + "]", stack));
      if (py::isinstance<py::set>(h) || py::isinstance<py::frozenset>(h))  // sets: deterministic order
        std::sort(v.list.begin(), v.list.end(), [](const ConfigValue& a, const ConfigValue& b) { return a.repr() < b.repr(); });
    }
    stack.pop_back();
  } else {
    v.kind = ConfigValue::Kind::kOther;  // rejected by every rule, shown by its repr
    v.s = std::string(py::repr(h)).substr(0, 200);
  }
  return v;
}

ConfigValue to_value(py::handle h) {
  std::vector<PyObject*> stack;
  return to_value(h, "config", stack);
}

py::dict tensor_dict(const TensorQuantCfg& c) {
  py::dict d;
  d["type"] = format_info(c.type).name;
  d["symmetric"] = c.symmetric;
  d["strategy"] = granularity_name(c.strategy);
  d["group_size"] = c.group_size;
  if (c.fp16_scale) d["scale_dtype"] = "float16";  // absent: float32 (files saved before it existed match)
  if (c.superblock_scales) d["scale_dtype"] = format_info(c.type).superblock_scale;
  if (c.signed_max) d["scale_rule"] = "signed_max";  // absent: absmax (likewise)
  return d;
}

py::object inputs_obj(const InputsCfg& in) { return in.present ? py::object(tensor_dict(in.q)) : py::object(py::none()); }

py::object param_obj(const ParamValue& v) {
  if (v.automatic) return py::str("auto");
  if (v.kind == ParamKind::kPositiveInt) return py::int_(static_cast<int64_t>(v.value));
  return py::float_(v.value);
}

py::dict normalized(const QuantConfig& cfg) {
  py::dict d;
  d["batch_num"] = cfg.batch_num;
  d["weights"] = cfg.has_weights ? py::object(tensor_dict(cfg.weights)) : py::object(py::none());
  d["inputs"] = inputs_obj(cfg.inputs);
  py::list ovs;
  for (const auto& o : cfg.overrides) {
    py::dict od;
    od["glob"] = o.glob;
    od["weights"] = o.has_weights ? py::object(tensor_dict(o.weights)) : py::object(py::none());
    od["has_inputs"] = o.has_inputs;
    od["inputs"] = o.has_inputs ? inputs_obj(o.inputs) : py::object(py::none());
    ovs.append(od);
  }
  d["overrides"] = ovs;
  py::dict algs;
  for (const auto& a : cfg.algorithms) {
    py::dict p;
    for (const auto& v : a.params) p[py::str(v.name)] = param_obj(v);
    algs[py::str(a.name)] = p;
  }
  d["algorithm"] = algs;
  d["skip_layers"] = cfg.skip_layers;
  d["bias_correction"] = cfg.bias_correction;
  return d;
}

std::vector<CustomAlgorithm> to_custom(const std::vector<std::pair<std::string, std::vector<std::string>>>& c) {
  std::vector<CustomAlgorithm> out;
  for (const auto& kv : c) out.push_back({kv.first, kv.second});
  return out;
}

// Control characters (a NUL would end the message early) and invalid UTF-8 shown as \xNN.
std::string printable(const std::string& s) { return printable_text(s); }

// lowbit.ConfigError (a ValueError) and lowbit.ConfigTypeError (a ConfigError and a
// TypeError): a ported AMCT script that catches ValueError sees every config error.
PyObject* g_config_error = nullptr;
PyObject* g_config_type_error = nullptr;

[[noreturn]] void raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, printable(message).c_str());
  throw py::error_already_set();
}

template <class Fn>
auto raising_python_errors(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const ConfigError& e) {
    raise(e.type_error ? g_config_type_error : g_config_error, e.message);
  } catch (const std::invalid_argument& e) {
    raise(g_config_error, e.what());
  }
}

using CustomList = std::vector<std::pair<std::string, std::vector<std::string>>>;

// One layer's effective settings (normalized dicts, as parse_config returns them) in C++ form.
std::pair<TensorQuantCfg, InputsCfg> layer_settings(py::dict weights, py::object inputs) {
  // normalized entries carry group_size 0 outside 'group'; the parser wants it absent
  auto strip = [](py::dict d) {
    py::dict c;
    for (auto kv : d) c[kv.first] = kv.second;
    if (c.contains("strategy") && py::str(c["strategy"]).cast<std::string>() != "group" && c.contains("group_size"))
      PyDict_DelItemString(c.ptr(), "group_size");
    return c;
  };
  InputsCfg in;
  if (!inputs.is_none()) in = parse_inputs_entry("inputs", to_value(strip(inputs.cast<py::dict>())));
  return {parse_weights_entry("weights", to_value(strip(weights))), in};
}

std::vector<std::string> strategy_names(const std::vector<Granularity>& v) {
  std::vector<std::string> s;
  for (Granularity g : v) s.push_back(granularity_name(g));
  return s;
}

py::list capability_rows() {
  py::list rows;
  for (const auto& c : capabilities()) {
    py::dict r, a;
    r["inputs"] = c.weight_only ? py::object(py::none()) : py::object(py::str(format_info(c.act).name));
    r["weights"] = format_info(c.weight).name;
    r["weight_strategies"] = strategy_names(c.weight_strategies);
    r["weight_asym"] = c.weight_asym && format_info(c.weight).allows_asym;
    r["input_strategies"] = strategy_names(c.act_strategies);
    r["algorithms"] = c.algorithms;
    r["conv"] = c.conv;
    r["conv_asym_inputs"] = c.conv_act_asym;
    r["integer_kernel"] = c.integer_kernel;
    r["note"] = c.note;
    a["supported"] = c.ascend.supported;
    a["dtypes"] = c.ascend.dtypes;
    a["k_align"] = c.ascend.k_align;
    a["n_align"] = c.ascend.n_align;
    a["token_k_align"] = c.ascend.token_k_align;
    a["token_n_align"] = c.ascend.token_n_align;
    a["max_65535"] = c.ascend.max_65535;
    a["no_bias"] = c.ascend.no_bias;
    a["even_k_blocks"] = c.ascend.even_k_blocks;
    a["conv_algorithms"] = c.ascend.conv_algorithms;
    r["ascend"] = a;
    rows.append(r);
  }
  return rows;
}

}  // namespace
}  // namespace lowbit

PYBIND11_MODULE(_C, m) {
  using namespace lowbit;
  m.doc() = "lowbit native extension: registers torch.ops.lowbit.* and validates configs";
  m.attr("__version__") = ops_library_version();
  g_config_error = PyErr_NewExceptionWithDoc(
      "lowbit.ConfigError", "An invalid quantize() config: the message names the key, the value and what is allowed.",
      PyExc_ValueError, nullptr);
  py::tuple bases = py::make_tuple(py::handle(g_config_error), py::handle(PyExc_TypeError));
  g_config_type_error = PyErr_NewExceptionWithDoc(
      "lowbit.ConfigTypeError", "A config value of the wrong type (both a ConfigError/ValueError and a TypeError).",
      bases.ptr(), nullptr);
  m.add_object("ConfigError", py::handle(g_config_error));
  m.add_object("ConfigTypeError", py::handle(g_config_type_error));
  m.def(
      "parse_config",
      [](py::object cfg, std::vector<std::pair<std::string, std::vector<std::string>>> custom) {
        return raising_python_errors([&] { return normalized(parse_quant_config(to_value(cfg), to_custom(custom))); });
      },
      py::arg("config"), py::arg("custom_algorithms") = std::vector<std::pair<std::string, std::vector<std::string>>>{},
      "Validates a quantize() config dict; returns its normalized form or raises ValueError/TypeError. "
      "custom_algorithms: (name, layer types) of algorithms registered with lowbit.algorithm_register.");
  m.def(
      "check_layer",
      [](const std::string& where, py::dict weights, py::object inputs, py::dict algorithm, CustomList custom) {
        raising_python_errors([&] {
          auto settings = layer_settings(weights, inputs);
          auto cu = to_custom(custom);
          const ConfigValue algorithms = to_value(algorithm);
          check_combination(where, settings.first, settings.second, parse_algorithm_entry(&algorithms, cu), cu);
          return 0;
        });
      },
      py::arg("where"), py::arg("weights"), py::arg("inputs"), py::arg("algorithm"),
      py::arg("custom_algorithms") = CustomList{}, "Checks one layer's effective (normalized) settings.");
  m.def(
      "layer_skip_reason",
      [](bool conv, const std::string& dtype, int64_t k, int64_t n, bool bias, const std::string& padding_mode,
         py::dict weights, py::object inputs, const std::string& algorithm, const std::string& target,
         CustomList custom) {
        return raising_python_errors([&] {
          auto settings = layer_settings(weights, inputs);
          LayerFacts layer{conv, dtype, k, n, bias, padding_mode};
          return layer_skip_reason(layer, settings.first, settings.second, algorithm, target, to_custom(custom));
        });
      },
      py::arg("conv"), py::arg("dtype"), py::arg("k"), py::arg("n"), py::arg("bias"), py::arg("padding_mode"),
      py::arg("weights"), py::arg("inputs"), py::arg("algorithm"), py::arg("target"),
      py::arg("custom_algorithms") = CustomList{},
      "Why quantize() leaves this layer in float ('' when it quantizes it), from the capability table "
      "(config/capabilities.cpp); target 'ascend' adds Ascend's rules.");
  m.def(
      "uses_integer_kernel",
      [](bool conv, py::dict weights, py::object inputs) {
        return raising_python_errors([&] {
          auto settings = layer_settings(weights, inputs);
          return uses_integer_kernel(conv, settings.first, settings.second);
        });
      },
      py::arg("conv"), py::arg("weights"), py::arg("inputs"),
      "Whether the deploy module of these settings multiplies in integers (linear_int8/conv2d_int8).");
  m.def(
      "compute_int8_skip_reason",
      [](bool conv, py::dict weights, py::object inputs, int64_t cols, bool two_level) {
        return raising_python_errors([&] {
          auto settings = layer_settings(weights, inputs);
          return compute_int8_skip_reason(conv, settings.first, settings.second, cols, two_level);
        });
      },
      py::arg("conv"), py::arg("weights"), py::arg("inputs"), py::arg("cols"), py::arg("two_level"),
      "Why convert's compute='int8' leaves this deploy layer exact ('' when it takes it).");
  m.def(
      "format_table",
      [] {
        py::list rows;
        for (const FormatInfo& info : format_table()) {
          py::dict r;
          r["name"] = info.name;
          r["bits"] = info.bits;
          r["block"] = info.block;
          r["is_mx"] = info.is_mx();
          r["is_int"] = info.is_int();
          r["code"] = code_name(info.code);
          r["int_bits"] = info.int_bits;
          r["nan_code"] = info.nan_code;
          r["scale_rule"] = scale_rule_name(info.scale);
          r["divisor"] = info.divisor;
          r["token_divisor"] = info.token_divisor;
          r["mx_emax"] = info.mx_emax;
          r["mx_bump"] = info.mx_bump;
          r["element"] = format_info(info.element).name;
          r["as_weight"] = info.as_weight;
          r["as_input"] = info.as_input;
          py::list grans;
          for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kGroup})
            if (info.weight_granularities & granularity_bit(g)) grans.append(granularity_name(g));
          r["weight_granularities"] = grans;
          r["default_granularity"] = granularity_name(info.default_granularity);
          r["default_group"] = info.default_group;
          r["allows_asym"] = info.allows_asym;
          r["allows_fp16_scale"] = info.allows_fp16_scale;
          r["allows_signed_max"] = info.allows_signed_max;
          r["allows_superblock_scale"] = info.superblock_scale != nullptr;
          r["superblock_scale"] = info.superblock_scale ? py::object(py::str(info.superblock_scale)) : py::none();
          r["superblock_sc_max"] = info.superblock_sc_max;
          rows.append(r);
        }
        return rows;
      },
      "The format table (formats/format.cpp), one dict per format: storage (bits per code, MX block), element "
      "code (kind, integer range, NaN code), scale rule (divisors, E8M0 exponent rule), and what a config may ask "
      "for (weight/input type, granularities and defaults, zero point, fp16 scales, signed_max).");
  m.def("packed_row_bytes", [](const std::string& fmt, int64_t cols) {
    return raising_python_errors([&] { return packed_row_bytes(parse_format(fmt), cols); });
  }, py::arg("fmt"), py::arg("cols"), "Bytes one packed row of `cols` elements takes.");
  m.def("granularities", [] {
    std::vector<std::string> v;
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kGroup, Granularity::kToken})
      v.push_back(granularity_name(g));
    return v;
  });
  m.def(
      "algorithm_table",
      [] {
        py::list rows;
        for (const auto& a : algorithm_table()) {
          py::dict r;
          r["name"] = a.name;
          r["layer_types"] = a.layer_types;
          r["summary"] = a.summary;
          r["python_module"] = a.python_module;
          py::list params;
          for (const auto& decl : a.params) {
            py::dict d;
            d["name"] = decl.name;
            d["kind"] = decl.kind == ParamKind::kPositiveInt ? "positive int" : "float in (0, 1) or 'auto'";
            d["default"] = param_obj(ParamValue{decl.name, decl.kind, decl.default_value, false});
            d["doc"] = decl.doc;
            params.append(d);
          }
          r["params"] = params;
          rows.append(r);
        }
        return rows;
      },
      "The algorithm table (config/algorithm_table.cpp): name, layer types, parameters (name, kind, default, "
      "doc) and a one-line summary of each built-in algorithm.");
  m.def("capabilities", &capability_rows,
        "The capability table: one dict per legal (inputs, weights) combination, with its algorithms, Conv2d "
        "support, deploy kernel and Ascend rules.");
  m.def("did_you_mean", &did_you_mean);
  m.def(
      "write_file_atomic",
      [](const std::string& path, py::bytes data) {
        const std::string bytes = data;
        raising_python_errors([&] {
          write_file_atomic(path, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
          return 0;
        });
      },
      py::arg("path"), py::arg("data"),
      "Writes data to path through a temporary file in the same folder, fsync and rename: a crash or a full "
      "disk leaves the old file. Raises ValueError (naming the path and the system's reason).");
  m.def(
      "algorithm_layer_types",
      [](const std::string& name, std::vector<std::pair<std::string, std::vector<std::string>>> custom) {
        return algorithm_layer_types(name, to_custom(custom));
      },
      py::arg("name"), py::arg("custom_algorithms") = std::vector<std::pair<std::string, std::vector<std::string>>>{},
      "Layer types ('Linear', 'Conv2d') an algorithm handles.");
}
