// A JSON-like value: what a Python config dict is converted to before validation, so
// the validator is plain C++ (no Python or torch headers).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

struct ConfigValue {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kList, kDict, kOther };
  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0.0;
  std::string s;  // kString: the text; kOther: the Python repr of an unsupported object
  std::vector<ConfigValue> list;                            // kList (also Python set/tuple)
  std::vector<std::pair<std::string, ConfigValue>> dict;    // kDict, insertion order kept
  std::string type_name;                                    // the Python type name, for messages

  const ConfigValue* find(const std::string& key) const;
  // Python-like repr, for error messages: 'text', 12, 0.5, True, None, [...], {...}
  std::string repr() const;
};

// Raised by the validator; `type_error` selects TypeError over ValueError in Python.
struct ConfigError {
  bool type_error;
  std::string message;
};

}  // namespace lowbit
