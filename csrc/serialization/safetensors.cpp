#include "serialization/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "serialization/json.h"

namespace lowbit {

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("safetensors: " + msg); }

constexpr uint64_t kMaxHeader = 100u << 20;  // the format's own limit is 100 MB
}  // namespace

int64_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  bad("unknown dtype '" + d + "'");
}

std::vector<uint8_t> serialize_safetensors(const SafetensorsFile& file) {
  std::vector<const StoredTensor*> order;
  for (const auto& t : file.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const StoredTensor* a, const StoredTensor* b) { return a->name < b->name; });
  std::string header = "{";
  if (!file.metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& kv : file.metadata) {
      header += (first ? "" : ",") + json_quote(kv.first) + ":" + json_quote(kv.second);
      first = false;
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const StoredTensor& t = *order[i];
    if (t.name.empty() || t.name == "__metadata__") bad("invalid tensor name '" + t.name + "'");
    if (i && order[i - 1]->name == t.name) bad("duplicate tensor name '" + t.name + "'");
    int64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 0) bad("negative dimension in '" + t.name + "'");
      n *= d;
    }
    if (uint64_t(n * safetensors_dtype_size(t.dtype)) != t.data.size())
      bad("'" + t.name + "': " + std::to_string(t.data.size()) + " data bytes do not match its shape and dtype");
    std::string shape;
    for (size_t k = 0; k < t.shape.size(); ++k) shape += (k ? "," : "") + std::to_string(t.shape[k]);
    header += std::string(header.size() > 1 ? "," : "") + json_quote(t.name) + ":{\"dtype\":\"" + t.dtype +
              "\",\"shape\":[" + shape + "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.data.size()) + "]}";
    offset += t.data.size();
  }
  header += "}";
  while ((8 + header.size()) % 8) header += ' ';  // data starts 8-byte aligned
  std::vector<uint8_t> out(8 + header.size() + offset);
  const uint64_t n = header.size();
  for (int b = 0; b < 8; ++b) out[size_t(b)] = uint8_t(n >> (8 * b));
  std::memcpy(out.data() + 8, header.data(), header.size());
  size_t pos = 8 + header.size();
  for (const StoredTensor* t : order) {
    if (!t->data.empty()) std::memcpy(out.data() + pos, t->data.data(), t->data.size());
    pos += t->data.size();
  }
  return out;
}

SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size) {
  if (size < 8) bad("file of " + std::to_string(size) + " bytes is too short for the 8-byte header length");
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= uint64_t(bytes[b]) << (8 * b);
  if (n > kMaxHeader) bad("header length " + std::to_string(n) + " is larger than 100 MB (corrupt file?)");
  if (n > size - 8) bad("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                        " bytes): truncated file?");
  JsonValue root;
  try {
    root = parse_json(std::string(reinterpret_cast<const char*>(bytes + 8), size_t(n)));
  } catch (const std::invalid_argument& e) {
    bad(std::string("header is not valid JSON: ") + e.what());
  }
  if (root.kind != JsonValue::Kind::kObject) bad("header is not a JSON object");
  const uint64_t data_size = size - 8 - n;
  const uint8_t* data = bytes + 8 + n;
  SafetensorsFile file;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& kv : root.object) {
    if (kv.first == "__metadata__") {
      if (kv.second.kind != JsonValue::Kind::kObject) bad("__metadata__ is not an object");
      for (const auto& m : kv.second.object) {
        if (m.second.kind != JsonValue::Kind::kString) bad("__metadata__ value of '" + m.first + "' is not a string");
        file.metadata[m.first] = m.second.str;
      }
      continue;
    }
    const JsonValue& t = kv.second;
    const std::string where = "tensor '" + kv.first + "'";
    if (t.kind != JsonValue::Kind::kObject) bad(where + " is not an object");
    const JsonValue* dtype = t.find("dtype");
    const JsonValue* shape = t.find("shape");
    const JsonValue* offs = t.find("data_offsets");
    if (!dtype || dtype->kind != JsonValue::Kind::kString) bad(where + ": missing or non-string dtype");
    if (!shape || shape->kind != JsonValue::Kind::kArray) bad(where + ": missing or non-array shape");
    if (!offs || offs->kind != JsonValue::Kind::kArray || offs->array.size() != 2) bad(where + ": bad data_offsets");
    StoredTensor st;
    st.name = kv.first;
    st.dtype = dtype->str;
    const int64_t es = safetensors_dtype_size(st.dtype);
    uint64_t count = 1;
    for (const auto& d : shape->array) {
      if (d.kind != JsonValue::Kind::kInt || d.integer < 0) bad(where + ": shape entries must be non-negative ints");
      if (d.integer > 0 && count > (uint64_t(1) << 62) / uint64_t(d.integer)) bad(where + ": shape overflows");
      count *= uint64_t(d.integer);
      st.shape.push_back(d.integer);
    }
    for (const auto& o : offs->array)
      if (o.kind != JsonValue::Kind::kInt || o.integer < 0) bad(where + ": data_offsets must be non-negative ints");
    const uint64_t begin = uint64_t(offs->array[0].integer), end = uint64_t(offs->array[1].integer);
    if (end < begin || end > data_size)
      bad(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] outside the " +
          std::to_string(data_size) + "-byte data section (truncated file?)");
    if (end - begin != count * uint64_t(es))
      bad(where + ": " + std::to_string(end - begin) + " bytes do not match shape and dtype " + st.dtype);
    st.data.assign(data + begin, data + end);
    ranges.emplace_back(begin, end);
    file.tensors.push_back(std::move(st));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) bad("tensor data ranges overlap");
  return file;
}

void write_safetensors(const std::string& path, const SafetensorsFile& file) {
  std::vector<uint8_t> bytes = serialize_safetensors(file);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) bad("cannot open '" + path + "' for writing");
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  if (!f) bad("writing '" + path + "' failed");
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) bad("cannot open '" + path + "'");
  std::streamsize size = f.tellg();
  f.seekg(0);
  std::vector<uint8_t> bytes(size_t(size > 0 ? size : 0));
  if (size > 0 && !f.read(reinterpret_cast<char*>(bytes.data()), size)) bad("reading '" + path + "' failed");
  return parse_safetensors(bytes.data(), bytes.size());
}

}  // namespace lowbit
