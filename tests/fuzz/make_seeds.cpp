// Writes a few small hand-made safetensors files with lowbit's own writer
// (serialize_safetensors) into the folder given as argv[1]: the seed corpus that
// scripts/fuzz.sh starts the fuzzer from (next to real saved models, when given).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "serialization/safetensors.h"

using lowbit::SafetensorsFile;
using lowbit::StoredTensor;

namespace {

template <class T>
StoredTensor make(const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
                  const std::vector<T>& v) {
  StoredTensor t{name, dtype, std::move(shape), std::vector<uint8_t>(v.size() * sizeof(T))};
  if (!v.empty()) std::memcpy(t.data.data(), v.data(), t.data.size());
  return t;
}

void put(const std::string& dir, const std::string& name, const SafetensorsFile& f, bool with_checksum = false) {
  const std::vector<uint8_t> bytes = lowbit::serialize_safetensors(f, with_checksum);
  const std::string path = dir + "/" + name + ".safetensors";
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (!out || std::fwrite(bytes.data(), 1, bytes.size(), out) != bytes.size() || std::fclose(out) != 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  put(dir, "empty", SafetensorsFile{});

  SafetensorsFile small;  // the C++ tests' sample
  small.tensors = {make<uint8_t>("w.packed", "U8", {2, 3}, {1, 2, 3, 4, 5, 6}),
                   make<float>("w.scale", "F32", {2, 1}, {0.5f, 0.25f}), make<int32_t>("empty", "I32", {0}, {})};
  small.metadata["lowbit"] = "{\"k\": \"v \\\" quoted\"}";
  put(dir, "small", small);
  put(dir, "small_checksum", small, true);

  SafetensorsFile dtypes;  // every dtype, a 0-d tensor, escapes and non-ASCII in names
  dtypes.tensors = {make<double>("f64", "F64", {}, {1.5}),        make<int64_t>("i64", "I64", {2}, {-1, 1}),
                    make<uint64_t>("u64", "U64", {1}, {~0ull}),    make<float>("f32", "F32", {1, 2}, {1.f, -0.f}),
                    make<int32_t>("i32", "I32", {1}, {-7}),        make<uint32_t>("u32", "U32", {1}, {7}),
                    make<uint16_t>("f16", "F16", {2}, {0x3C00, 0x7E00}), make<uint16_t>("bf16", "BF16", {1}, {0x3F80}),
                    make<int16_t>("i16", "I16", {1}, {-2}),        make<uint16_t>("u16", "U16", {1}, {2}),
                    make<uint8_t>("u8", "U8", {3}, {0, 127, 255}), make<int8_t>("i8", "I8", {1}, {-128}),
                    make<uint8_t>("bool", "BOOL", {2}, {0, 1}),    make<uint8_t>("f8a", "F8_E4M3", {1}, {0x7E}),
                    make<uint8_t>("f8b", "F8_E5M2", {1}, {0x3C}),
                    make<uint8_t>("quote\"back\\slash\ttab \xC3\xA9", "U8", {1}, {9})};
  dtypes.metadata["\x01key"] = "value with \n newline and \xF0\x9F\x98\x80";
  put(dir, "dtypes", dtypes);

  SafetensorsFile huge_dims;  // no elements, but dimensions near the overflow limits
  huge_dims.tensors = {make<uint8_t>("a", "F64", {0, int64_t(1) << 62}, {}),
                       make<uint8_t>("b", "U8", {3037000499, 0}, {}),
                       make<uint8_t>("d", "F32", {int64_t(1) << 61, 0, 2}, {}),
                       make<uint8_t>("c", "I64", {1, 1, 1, 1, 1, 1, 1, 1}, std::vector<uint8_t>(8, 0xAB))};
  put(dir, "huge_dims", huge_dims);

  SafetensorsFile model;  // the shape of a file lowbit.save writes (see tests/cpp/test_saved_model.cpp)
  model.metadata["lowbit"] =
      R"({"format": "lowbit-1", "skipped": {"head": "skip_layers"}, "layers": {)"
      R"("fc": {"config": {"algorithm": "smoothquant", "batch_num": 2,)"
      R"("inputs": {"group_size": 0, "strategy": "tensor", "symmetric": false, "type": "int8"},)"
      R"("params": {"smooth_strength": 0.5},)"
      R"("weights": {"group_size": 0, "strategy": "channel", "symmetric": true, "type": "int8"}},)"
      R"("module": "DeployLinear", "weight_dtype": "torch.float32", "weight_shape": [4, 8]}}})";
  model.tensors = {make<uint8_t>("fc.weight_packed", "U8", {4, 8}, std::vector<uint8_t>(32, 7)),
                   make<float>("fc.w_scale", "F32", {4, 1}, {0.1f, 0.2f, 0.3f, 0.4f}),
                   make<int32_t>("fc.w_offset", "I32", {0}, {}),
                   make<float>("fc.bias", "F32", {4}, {1, 2, 3, 4}),
                   make<float>("fc.smooth", "F32", {8}, std::vector<float>(8, 1.5f)),
                   make<float>("fc.act_scale", "F32", {1, 1}, {0.02f}),
                   make<int32_t>("fc.act_offset", "I32", {1, 1}, {-5})};
  put(dir, "model", model, true);
  return 0;
}
