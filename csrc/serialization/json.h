// A small strict JSON reader (objects, arrays, strings, integers, numbers, true, false,
// null) and string quoting, for safetensors headers.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {

struct JsonValue {
  enum class Kind { kNull, kBool, kInt, kNumber, kString, kArray, kObject } kind = Kind::kNull;
  bool boolean = false;
  int64_t integer = 0;
  double number = 0.0;
  std::string str;
  std::vector<JsonValue> array;
  std::vector<std::pair<std::string, JsonValue>> object;
  const JsonValue* find(const std::string& key) const;
};

// Throws std::invalid_argument with the byte offset of the problem.
JsonValue parse_json(const std::string& text);
std::string json_quote(const std::string& s);

}  // namespace lowbit
