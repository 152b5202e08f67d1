// The Python extension `lowbit._C`. Importing it loads liblowbit_ops.so (linked with
// $ORIGIN rpath), whose static initialisers register the torch.ops.lowbit.* operators.
// It also carries the config validator: Python dicts are converted to ConfigValue and
// checked by the C++ rules (config/quant_config.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>

#include "config/quant_config.h"

namespace py = pybind11;

namespace lowbit {
const char* ops_library_version();

namespace {

ConfigValue to_value(py::handle h) {
  ConfigValue v;
  v.type_name = py::str(py::type::of(h).attr("__name__"));
  if (h.is_none()) {
    v.kind = ConfigValue::Kind::kNone;
  } else if (py::isinstance<py::bool_>(h)) {
    v.kind = ConfigValue::Kind::kBool;
    v.b = h.cast<bool>();
  } else if (py::isinstance<py::int_>(h)) {
    v.kind = ConfigValue::Kind::kInt;
    v.i = h.cast<int64_t>();
  } else if (py::isinstance<py::float_>(h)) {
    v.kind = ConfigValue::Kind::kFloat;
    v.f = h.cast<double>();
  } else if (py::isinstance<py::str>(h)) {
    v.kind = ConfigValue::Kind::kString;
    v.s = h.cast<std::string>();
  } else if (py::isinstance<py::dict>(h)) {
    v.kind = ConfigValue::Kind::kDict;
    for (auto kv : h.cast<py::dict>()) {
      if (!py::isinstance<py::str>(kv.first))
        throw ConfigError{true, "config: every key must be a str, got " +
                                    std::string(py::str(py::type::of(kv.first).attr("__name__"))) + " " +
                                    std::string(py::repr(kv.first))};
      v.dict.emplace_back(kv.first.cast<std::string>(), to_value(kv.second));
    }
  } else if (py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h) || py::isinstance<py::set>(h) ||
             py::isinstance<py::frozenset>(h)) {
    v.kind = ConfigValue::Kind::kList;
    for (auto item : py::iter(h)) v.list.push_back(to_value(item));
    if (py::isinstance<py::set>(h) || py::isinstance<py::frozenset>(h))  // sets: deterministic order
      std::sort(v.list.begin(), v.list.end(), [](const ConfigValue& a, const ConfigValue& b) { return a.repr() < b.repr(); });
  } else {
    v.kind = ConfigValue::Kind::kOther;  // rejected by every rule, shown by its repr
    v.s = std::string(py::repr(h));
  }
  return v;
}

py::dict tensor_dict(const TensorQuantCfg& c) {
  py::dict d;
  d["type"] = format_info(c.type).name;
  d["symmetric"] = c.symmetric;
  d["strategy"] = granularity_name(c.strategy);
  d["group_size"] = c.group_size;
  return d;
}

py::object inputs_obj(const InputsCfg& in) { return in.present ? py::object(tensor_dict(in.q)) : py::object(py::none()); }

py::dict normalized(const QuantConfig& cfg) {
  py::dict d;
  d["batch_num"] = cfg.batch_num;
  d["weights"] = tensor_dict(cfg.weights);
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
    if (a.name == "awq") p["grids_num"] = a.grids_num;
    if (a.name == "smoothquant") p["smooth_strength"] = a.smooth_strength;
    algs[py::str(a.name)] = p;
  }
  d["algorithm"] = algs;
  d["skip_layers"] = cfg.skip_layers;
  return d;
}

std::vector<CustomAlgorithm> to_custom(const std::vector<std::pair<std::string, std::vector<std::string>>>& c) {
  std::vector<CustomAlgorithm> out;
  for (const auto& kv : c) out.push_back({kv.first, kv.second});
  return out;
}

template <class Fn>
auto raising_python_errors(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const ConfigError& e) {
    if (e.type_error) throw py::type_error(e.message);
    throw py::value_error(e.message);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace
}  // namespace lowbit

PYBIND11_MODULE(_C, m) {
  using namespace lowbit;
  m.doc() = "lowbit native extension: registers torch.ops.lowbit.* and validates configs";
  m.attr("__version__") = ops_library_version();
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
      [](const std::string& where, py::dict weights, py::object inputs, py::dict algorithm,
         std::vector<std::pair<std::string, std::vector<std::string>>> custom) {
        raising_python_errors([&] {
          // normalized entries carry group_size 0 outside 'group'; the parser wants it absent
          auto strip = [](py::dict d) {
            py::dict c;
            for (auto kv : d) c[kv.first] = kv.second;
            if (c.contains("strategy") && py::str(c["strategy"]).cast<std::string>() != "group" &&
                c.contains("group_size"))
              PyDict_DelItemString(c.ptr(), "group_size");
            return c;
          };
          py::dict cfg, qc;
          qc["weights"] = strip(weights);
          if (!inputs.is_none()) qc["inputs"] = strip(inputs.cast<py::dict>());
          cfg["quant_cfg"] = qc;
          cfg["algorithm"] = algorithm;
          auto cu = to_custom(custom);
          QuantConfig parsed = parse_quant_config(to_value(cfg), cu);
          check_combination(where, parsed.weights, parsed.inputs, parsed.algorithms, cu);
          return 0;
        });
      },
      py::arg("where"), py::arg("weights"), py::arg("inputs"), py::arg("algorithm"),
      py::arg("custom_algorithms") = std::vector<std::pair<std::string, std::vector<std::string>>>{},
      "Checks one layer's effective (normalized) settings.");
  m.def("did_you_mean", &did_you_mean);
  m.def(
      "algorithm_layer_types",
      [](const std::string& name, std::vector<std::pair<std::string, std::vector<std::string>>> custom) {
        return algorithm_layer_types(name, to_custom(custom));
      },
      py::arg("name"), py::arg("custom_algorithms") = std::vector<std::pair<std::string, std::vector<std::string>>>{},
      "Layer types ('Linear', 'Conv2d') an algorithm handles.");
}
