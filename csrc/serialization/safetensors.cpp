#include "serialization/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>

#include "serialization/atomic_file.h"
#include "serialization/checksum.h"
#include "serialization/json.h"

namespace lowbit {

namespace {
[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("safetensors: " + msg); }

constexpr uint64_t kMaxHeader = 100u << 20;  // the format's own limit is 100 MB

// count * size, or false when it does not fit in `limit`
bool checked_bytes(uint64_t count, uint64_t size, uint64_t limit, uint64_t* out) {
  if (size && count > limit / size) return false;
  *out = count * size;
  return true;
}

// Element count of a shape; throws when it overflows 2^62 or a dimension is negative.
uint64_t element_count(const std::string& where, const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) bad(where + ": negative dimension " + std::to_string(d));
    if (d && n > (uint64_t(1) << 62) / uint64_t(d)) bad(where + ": element count of the shape overflows");
    n *= uint64_t(d);
  }
  return n;
}

void extend_str(uint32_t& crc, const std::string& s) { crc = crc32c_extend(crc, s.data(), s.size() + 1); }  // with NUL
}  // namespace

namespace {
// What the checksum covers of one tensor, wherever its bytes live.
struct ChecksumItem {
  const std::string* name;
  const std::string* dtype;
  const std::vector<int64_t>* shape;
  const uint8_t* data;
  uint64_t size;
};

uint32_t checksum_of(std::vector<ChecksumItem> items, const std::map<std::string, std::string>& metadata) {
  std::sort(items.begin(), items.end(), [](const ChecksumItem& a, const ChecksumItem& b) { return *a.name < *b.name; });
  uint32_t crc = 0;
  for (const ChecksumItem& t : items) {
    extend_str(crc, *t.name);
    extend_str(crc, *t.dtype);
    std::string shape;
    for (int64_t d : *t.shape) shape += std::to_string(d) + ",";
    extend_str(crc, shape);
    crc = crc32c_extend(crc, &t.size, sizeof t.size);
    if (t.size) crc = crc32c_extend(crc, t.data, size_t(t.size));
  }
  for (const auto& kv : metadata) {
    if (kv.first == kChecksumKey) continue;
    extend_str(crc, kv.first);
    extend_str(crc, kv.second);
  }
  return crc;
}
}  // namespace

uint32_t content_checksum(const SafetensorsFile& file) {
  std::vector<ChecksumItem> items;
  for (const auto& t : file.tensors) items.push_back({&t.name, &t.dtype, &t.shape, t.data.data(), t.data.size()});
  return checksum_of(std::move(items), file.metadata);
}

void verify_checksum(const SafetensorsIndex& index, const uint8_t* bytes) {
  auto sum = index.metadata.find(kChecksumKey);
  if (sum == index.metadata.end()) return;
  std::vector<ChecksumItem> items;
  for (const auto& t : index.tensors)
    items.push_back({&t.name, &t.dtype, &t.shape, bytes + index.data_start + t.begin, t.end - t.begin});
  const std::string actual = crc32c_label(checksum_of(std::move(items), index.metadata));
  if (sum->second != actual)
    bad("checksum mismatch: the metadata says " + sum->second + ", the content gives " + actual +
        " (the file was damaged or modified after it was written)");
}

int64_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  bad("unknown dtype '" + d + "'");
}

namespace {
std::vector<uint8_t> serialize_with_metadata(const SafetensorsFile& file,
                                             const std::map<std::string, std::string>& metadata) {
  std::vector<const StoredTensor*> order;
  for (const auto& t : file.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const StoredTensor* a, const StoredTensor* b) { return a->name < b->name; });
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& kv : metadata) {
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
    const uint64_t n = element_count("'" + t.name + "'", t.shape);
    uint64_t bytes = 0;
    if (!checked_bytes(n, uint64_t(safetensors_dtype_size(t.dtype)), UINT64_MAX, &bytes) || bytes != t.data.size())
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
}  // namespace

std::vector<uint8_t> serialize_safetensors(const SafetensorsFile& file, bool with_checksum) {
  if (!with_checksum) return serialize_with_metadata(file, file.metadata);
  std::map<std::string, std::string> metadata = file.metadata;
  metadata[kChecksumKey] = crc32c_label(content_checksum(file));
  return serialize_with_metadata(file, metadata);
}

SafetensorsIndex parse_safetensors_index(const uint8_t* bytes, size_t size) {
  if (size < 8) bad("file of " + std::to_string(size) + " bytes is too short for the 8-byte header length");
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= uint64_t(bytes[b]) << (8 * b);
  if (n > kMaxHeader) bad("header length " + std::to_string(n) + " is larger than 100 MB (corrupt file?)");
  if (n > size - 8) bad("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                        " bytes): truncated file?");
  if (n == 0 || bytes[8] != '{') bad("header does not start with '{'");
  JsonValue root;
  try {
    root = parse_json(std::string(reinterpret_cast<const char*>(bytes + 8), size_t(n)));
  } catch (const std::invalid_argument& e) {
    bad(std::string("header is not valid JSON: ") + e.what());
  }
  if (root.kind != JsonValue::Kind::kObject) bad("header is not a JSON object");
  const uint64_t data_size = size - 8 - n;
  SafetensorsIndex file;
  file.data_start = 8 + n;
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, std::string>> ranges;
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
    if (kv.first.empty()) bad("a tensor has an empty name");
    if (t.kind != JsonValue::Kind::kObject) bad(where + " is not an object");
    for (const auto& field : t.object)
      if (field.first != "dtype" && field.first != "shape" && field.first != "data_offsets")
        bad(where + ": unknown field '" + field.first + "'");
    const JsonValue* dtype = t.find("dtype");
    const JsonValue* shape = t.find("shape");
    const JsonValue* offs = t.find("data_offsets");
    if (!dtype || dtype->kind != JsonValue::Kind::kString) bad(where + ": missing or non-string dtype");
    if (!shape || shape->kind != JsonValue::Kind::kArray) bad(where + ": missing or non-array shape");
    if (!offs || offs->kind != JsonValue::Kind::kArray || offs->array.size() != 2) bad(where + ": bad data_offsets");
    TensorSpan st;
    st.name = kv.first;
    st.dtype = dtype->str;
    const int64_t es = safetensors_dtype_size(st.dtype);
    for (const auto& d : shape->array) {
      if (d.kind != JsonValue::Kind::kInt || d.integer < 0) bad(where + ": shape entries must be non-negative ints");
      st.shape.push_back(d.integer);
    }
    const uint64_t count = element_count(where, st.shape);
    for (const auto& o : offs->array)
      if (o.kind != JsonValue::Kind::kInt || o.integer < 0) bad(where + ": data_offsets must be non-negative ints");
    const uint64_t begin = uint64_t(offs->array[0].integer), end = uint64_t(offs->array[1].integer);
    if (end < begin || end > data_size)
      bad(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] outside the " +
          std::to_string(data_size) + "-byte data section (truncated file?)");
    uint64_t expected = 0;
    if (!checked_bytes(count, uint64_t(es), data_size, &expected) || end - begin != expected)
      bad(where + ": " + std::to_string(end - begin) + " bytes do not match shape and dtype " + st.dtype);
    ranges.push_back({{begin, end}, kv.first});
    st.begin = begin;
    st.end = end;
    file.tensors.push_back(std::move(st));
  }
  // The tensors must tile the data section exactly, as the format's reference reader requires.
  std::sort(ranges.begin(), ranges.end());
  uint64_t covered = 0;
  for (const auto& r : ranges) {
    if (r.first.first < covered) bad("tensor '" + r.second + "': data overlaps the previous tensor's");
    if (r.first.first > covered)
      bad("tensor '" + r.second + "': " + std::to_string(r.first.first - covered) +
          " unused bytes before its data (gap in the data section)");
    covered = r.first.second;
  }
  if (covered != data_size)
    bad(std::to_string(data_size - covered) + " bytes after the last tensor's data (the header length or the "
        "offsets are wrong)");
  return file;
}

SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size) {
  SafetensorsIndex index = parse_safetensors_index(bytes, size);
  verify_checksum(index, bytes);
  SafetensorsFile file;
  file.metadata = std::move(index.metadata);
  for (auto& t : index.tensors) {
    const uint8_t* p = bytes + index.data_start;
    file.tensors.push_back(StoredTensor{std::move(t.name), std::move(t.dtype), std::move(t.shape),
                                        std::vector<uint8_t>(p + t.begin, p + t.end)});
  }
  return file;
}

std::string write_safetensors(const std::string& path, const SafetensorsFile& file, bool with_checksum) {
  const std::string label = with_checksum ? crc32c_label(content_checksum(file)) : std::string();
  std::vector<uint8_t> bytes;
  if (with_checksum) {
    std::map<std::string, std::string> meta = file.metadata;
    meta[kChecksumKey] = label;
    bytes = serialize_with_metadata(file, meta);
  } else {
    bytes = serialize_with_metadata(file, file.metadata);
  }
  try {
    write_file_atomic(path, bytes.data(), bytes.size());
  } catch (const std::invalid_argument& e) {
    bad(e.what());
  }
  return label;
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
