// safetensors files (https://github.com/huggingface/safetensors format): an 8-byte
// little-endian header length, a JSON header mapping names to {dtype, shape,
// data_offsets} plus an optional "__metadata__" map of strings, then the raw data.
// The reader checks every field and bound and reports problems as std::invalid_argument;
// a corrupt or truncated file never crashes. It is as strict as the format's reference
// reader: UTF-8 header, known dtypes, overflow-checked shapes, and tensor data that
// covers the data section exactly (no gaps, overlaps or trailing bytes). A file whose
// metadata holds a checksum (kChecksumKey, written by lowbit) is verified against it.
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
  std::vector<StoredTensor> tensors;  // in header order
  std::map<std::string, std::string> metadata;
};

// A file's header, checked, without its data: where each tensor's bytes are.
struct TensorSpan {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to data_start
};
struct SafetensorsIndex {
  std::vector<TensorSpan> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + header length
};

// Bytes per element of a safetensors dtype name; throws for unknown names.
int64_t safetensors_dtype_size(const std::string& dtype);

// The metadata entry holding "crc32c:xxxxxxxx" of content_checksum().
constexpr const char* kChecksumKey = "lowbit.checksum";
// CRC-32C over everything a reader takes from the file: each tensor in name order (its
// name, dtype, shape and data), then each metadata entry except the checksum itself.
// Independent of the header's layout and whitespace.
uint32_t content_checksum(const SafetensorsFile& file);

// Writes the tensors (data section 8-byte aligned, names sorted as the format's
// reference writer does) with write_file_atomic: a crash or a full disk leaves the old
// file. `with_checksum` adds kChecksumKey to the metadata and returns its value ("" without).
// Throws std::invalid_argument on bad input or I/O failure.
std::string write_safetensors(const std::string& path, const SafetensorsFile& file, bool with_checksum = false);
SafetensorsFile read_safetensors(const std::string& path);
// The same from/to memory (used by the file functions and by tests).
std::vector<uint8_t> serialize_safetensors(const SafetensorsFile& file, bool with_checksum = false);
SafetensorsFile parse_safetensors(const uint8_t* bytes, size_t size);
// Every check of parse_safetensors except the checksum, without copying any data (for
// memory-mapped files); verify_checksum then reads the data when the file has one.
SafetensorsIndex parse_safetensors_index(const uint8_t* bytes, size_t size);
void verify_checksum(const SafetensorsIndex& index, const uint8_t* bytes);

}  // namespace lowbit
