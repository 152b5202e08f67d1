// validate_saved_model: lowbit's metadata and the values the kernels trust, on a
// hand-made two-layer model (an INT8 x INT8 Linear with a static activation scale, and
// an asymmetric int4 group Conv2d), then one damaged field at a time.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "serialization/saved_model.h"

using namespace lowbit;

namespace {

struct Stored {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <class T>
Stored make(const std::string& dtype, std::vector<int64_t> shape, const std::vector<T>& values) {
  Stored s{dtype, std::move(shape), std::vector<uint8_t>(values.size() * sizeof(T))};
  if (!values.empty()) std::memcpy(s.bytes.data(), values.data(), s.bytes.size());
  return s;
}

const char* kMeta = R"({"format": "lowbit-1", "skipped": {"head": "skip_layers"}, "layers": {
 "fc": {"config": {"algorithm": "smoothquant", "batch_num": 2,
   "inputs": {"group_size": 0, "strategy": "tensor", "symmetric": false, "type": "int8"},
   "params": {"smooth_strength": 0.5},
   "weights": {"group_size": 0, "strategy": "channel", "symmetric": true, "type": "int8"}},
  "module": "DeployLinear", "weight_dtype": "torch.float32", "weight_shape": [4, 8]},
 "conv": {"config": {"algorithm": "minmax", "batch_num": 1, "inputs": null, "params": {},
   "weights": {"group_size": 32, "strategy": "group", "symmetric": false, "type": "int4"}},
  "module": "DeployConv2d", "weight_dtype": "torch.bfloat16", "weight_shape": [2, 4, 3, 3]}}})";

std::map<std::string, Stored> good_tensors() {
  std::map<std::string, Stored> t;
  t["fc.weight_packed"] = make<uint8_t>("U8", {4, 8}, std::vector<uint8_t>(32, 7));
  t["fc.w_scale"] = make<float>("F32", {4, 1}, {0.1f, 0.2f, 0.3f, 0.4f});
  t["fc.w_offset"] = make<int32_t>("I32", {0}, {});
  t["fc.bias"] = make<float>("F32", {4}, {1, 2, 3, 4});
  t["fc.smooth"] = make<float>("F32", {8}, std::vector<float>(8, 1.5f));
  t["fc.act_scale"] = make<float>("F32", {1, 1}, {0.02f});
  t["fc.act_offset"] = make<int32_t>("I32", {1, 1}, {-5});
  t["fc.recon_error"] = make<double>("F64", {}, {0.01});
  // K = 36: two groups of 32 per row (ragged), 18 code bytes per row
  t["conv.weight_packed"] = make<uint8_t>("U8", {2, 18}, std::vector<uint8_t>(36, 0x21));
  t["conv.w_scale"] = make<float>("F32", {2, 2}, {0.5f, 0.5f, 0.25f, 0.25f});
  t["conv.w_offset"] = make<int32_t>("I32", {2, 2}, {-8, 7, 0, 1});
  t["conv.bias"] = make<uint16_t>("BF16", {2}, {0x3F80, 0x4000});
  return t;
}

void validate(const std::string& meta, const std::map<std::string, Stored>& stored) {
  std::map<std::string, TensorRef> refs;
  for (const auto& kv : stored) refs[kv.first] = TensorRef{kv.second.dtype, kv.second.shape, kv.second.bytes.data(), kv.second.bytes.size()};
  validate_saved_model(meta, refs);
}

void expect_error(const std::string& meta, const std::map<std::string, Stored>& stored, const std::string& fragment) {
  try {
    validate(meta, stored);
    FAIL() << "no error; expected one containing: " << fragment;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? s : s.replace(at, from.size(), to);
}

}  // namespace

TEST(SavedModel, AcceptsTheGoodModel) { EXPECT_NO_THROW(validate(kMeta, good_tensors())); }

TEST(SavedModel, SchemaErrorsNameTheField) {
  const auto t = good_tensors();
  expect_error("[1]", t, "metadata: expected a dict");
  expect_error("{", t, "metadata: not valid JSON");
  expect_error(replaced(kMeta, "lowbit-1", "lowbit-9"), t, "format: 'lowbit-9' is not supported");
  expect_error(replaced(kMeta, "\"skipped\"", "\"skiped\""), t, "unknown key 'skiped'");
  expect_error(replaced(kMeta, "\"batch_num\": 2", "\"batch_num\": -1"), t, "layers['fc'].config: batch_num");
  expect_error(replaced(kMeta, "\"group_size\": 32", "\"group_size\": \"32\""), t, "group_size: expected an int");
  expect_error(replaced(kMeta, "\"group_size\": 32", "\"group_size\": 1099511627776"), t, "larger than");
  expect_error(replaced(kMeta, "torch.bfloat16", "torch.int8"), t, "weight_dtype: 'torch.int8' is not allowed");
  expect_error(replaced(kMeta, "\"DeployConv2d\"", "\"DeployLinear\""), t, "a Linear weight has 2 dimensions");
  expect_error(replaced(kMeta, "[4, 8]", "[4, 0]"), t, "weight_shape: entries must be ints");
  expect_error(replaced(kMeta, "\"module\": \"DeployLinear\"", "\"module\": \"Evil\""), t, "'Evil' is not allowed");
  // swapping the activation format: hifloat8 activations with int8 weights are no legal combination
  expect_error(replaced(kMeta, "\"symmetric\": false, \"type\": \"int8\"", "\"symmetric\": true, \"type\": \"hifloat8\""),
               t, "not a legal combination");
  // smoothquant does not handle a convolution
  expect_error(replaced(kMeta, "\"algorithm\": \"minmax\"", "\"algorithm\": \"smoothquant\""), t, "smoothquant");
}

TEST(SavedModel, StoredValuesMustBeWhatTheKernelsTrust) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (float bad : {nan, inf, 0.0f, -1.0f}) {
    auto t = good_tensors();
    t["fc.w_scale"] = make<float>("F32", {4, 1}, {0.1f, bad, 0.3f, 0.4f});
    expect_error(kMeta, t, "tensor 'fc.w_scale': element 1");
    t = good_tensors();
    t["fc.act_scale"] = make<float>("F32", {1, 1}, {bad});
    expect_error(kMeta, t, "tensor 'fc.act_scale'");
  }
  auto t = good_tensors();
  t["fc.act_offset"] = make<int32_t>("I32", {1, 1}, {std::numeric_limits<int32_t>::max()});
  expect_error(kMeta, t, "outside [-128, 127]");
  t = good_tensors();
  t["conv.w_offset"] = make<int32_t>("I32", {2, 2}, {-9, 0, 0, 0});
  expect_error(kMeta, t, "outside [-8, 7]");
  t = good_tensors();
  t["fc.smooth"] = make<float>("F32", {8}, std::vector<float>(8, -1.0f));
  expect_error(kMeta, t, "tensor 'fc.smooth'");
  t = good_tensors();
  t["conv.bias"] = make<uint16_t>("BF16", {2}, {0x3F80, 0x7FC0});  // bf16 NaN
  expect_error(kMeta, t, "tensor 'conv.bias': element 1 is not finite");
  t = good_tensors();
  t["fc.w_scale"] = make<float>("F32", {3}, {0.1f, 0.2f, 0.3f});  // shape lowered
  expect_error(kMeta, t, "3 elements, expected 4");
  t = good_tensors();
  t["fc.w_scale"].shape = {4, 2};  // a view whose bytes do not match its shape
  expect_error(kMeta, t, "bytes do not match");
  t = good_tensors();
  t["fc.w_scale"] = make<double>("F64", {4, 1}, {0.1, 0.2, 0.3, 0.4});
  expect_error(kMeta, t, "dtype F64, expected F32");
  t = good_tensors();
  t.erase("fc.act_scale");
  expect_error(kMeta, t, "tensor 'fc.act_scale': missing");
  t = good_tensors();
  t["conv.act_scale"] = make<float>("F32", {1, 1}, {0.02f});
  expect_error(kMeta, t, "no static activation scale");
}

TEST(SavedModel, FloatWeightCodesHoldNoNaN) {
  // the int8 weights relabelled as hifloat8 / float8 (with matching activations): the codes
  // 0x80 / 0x7F are NaN there, which quantization never writes
  std::string hif8 = replaced(replaced(kMeta, "\"symmetric\": false, \"type\": \"int8\"", "\"symmetric\": true, \"type\": \"hifloat8\""),
                              "\"symmetric\": true, \"type\": \"int8\"", "\"symmetric\": true, \"type\": \"hifloat8\"");
  auto t = good_tensors();
  t["fc.act_offset"] = make<int32_t>("I32", {1, 1}, {0});
  EXPECT_NO_THROW(validate(hif8, t));
  t["fc.weight_packed"].bytes[5] = 0x80;
  expect_error(hif8, t, "code 5 is a NaN code of hifloat8");
  // a float format's zero point must be 0
  t = good_tensors();
  expect_error(hif8, t, "outside [0, 0]");
}
