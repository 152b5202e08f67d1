// safetensors files (https://github.com/huggingface/safetensors format): an 8-byte
// little-endian header length, a JSON header mapping names to {dtype, shape,
// data_offsets} plus an optional "__metadata__" map of strings, then the raw data.
// The reader checks every field and bound and reports problems as std::invalid_argument;
// a corrupt or truncated file never crashes.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lowbit {

struct StoredTensor {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", "I32", "I64", "U8", "I8", "BOOL", "F64"
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // little-endian bytes, exactly prod(shape) * dtype size
};

struct SafetensorsFile {
  std::vector<StoredTensor> tensors;  // in file order of their data
  std::map<std::string, std::string> metadata;
};

// Bytes per element of a safetensors dtype name; throws for unknown names.
int64_t safetensors_dtype_size(const std::string& dtype);

// Writes the tensors (data section 8-byte aligned, names sorted as the format's
// reference writer does). Throws std::invalid_argument on bad input or I/O failure.
void write_safetensors(const std::string& path, const SafetensorsFile& file);
SafetensorsFile read_safetensors(const std::string& path);
// The same from/to memory (used by the file functions and by tests).
std::vector<uint8_t> serialize_safetensors(const SafetensorsFile& file);
SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size);

}  // namespace lowbit
