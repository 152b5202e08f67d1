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

// Throws std::invalid_argument with the byte offset of the problem. The text must be
// valid UTF-8 (no overlong forms or surrogates); so is every string parsed from it.
JsonValue parse_json(const std::string& text);
// Byte offset of the first invalid UTF-8 sequence, or std::string::npos.
size_t invalid_utf8_at(const std::string& text);
// s for an error message: valid UTF-8 kept, control characters and the bytes of invalid
// sequences shown as \xNN (a message must survive conversion to a Python str).
std::string printable_text(const std::string& s);
std::string json_quote(const std::string& s);

}  // namespace lowbit
