#include "config/config_value.h"

#include <cstdio>

namespace lowbit {

const ConfigValue* ConfigValue::find(const std::string& key) const {
  for (const auto& kv : dict)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

std::string ConfigValue::repr() const {
  switch (kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return b ? "True" : "False";
    case Kind::kInt: return std::to_string(i);
    case Kind::kFloat: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.6g", f);
      return buf;
    }
    case Kind::kString: return "'" + s + "'";
    case Kind::kOther: return s;
    case Kind::kList: {
      std::string r = "[";
      for (size_t k = 0; k < list.size(); ++k) r += (k ? ", " : "") + list[k].repr();
      return r + "]";
    }
    case Kind::kDict: {
      std::string r = "{";
      for (size_t k = 0; k < dict.size(); ++k) r += (k ? ", '" : "'") + dict[k].first + "': " + dict[k].second.repr();
      return r + "}";
    }
  }
  return "?";
}

}  // namespace lowbit
