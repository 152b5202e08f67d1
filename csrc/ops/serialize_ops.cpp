// torch.ops.lowbit.save_safetensors / load_safetensors: at::Tensor <-> the torch-free
// safetensors reader and writer (serialization/safetensors.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <stdexcept>

#include "serialization/safetensors.h"

namespace lowbit {
namespace {

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
const DtypeName kDtypes[] = {{at::kFloat, "F32"}, {at::kHalf, "F16"},  {at::kBFloat16, "BF16"}, {at::kInt, "I32"},
                             {at::kLong, "I64"},  {at::kByte, "U8"},   {at::kChar, "I8"},       {at::kBool, "BOOL"},
                             {at::kDouble, "F64"}, {at::kShort, "I16"}};

const char* dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  TORCH_CHECK_TYPE(false, "tensors: dtype ", t, " cannot be stored in safetensors by lowbit");
}

at::ScalarType dtype_of(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  TORCH_CHECK_VALUE(false, "safetensors: dtype '", name, "' is not supported by lowbit");
}

void save_op(const std::string& path, const std::vector<std::string>& names, const std::vector<at::Tensor>& tensors,
             const std::vector<std::string>& meta_keys, const std::vector<std::string>& meta_values) {
  TORCH_CHECK_VALUE(names.size() == tensors.size(), "names: ", names.size(), " names for ", tensors.size(), " tensors");
  TORCH_CHECK_VALUE(meta_keys.size() == meta_values.size(), "metadata: keys and values differ in length");
  SafetensorsFile file;
  for (size_t i = 0; i < names.size(); ++i) {
    at::Tensor t = tensors[i].detach().cpu().contiguous();
    StoredTensor st;
    st.name = names[i];
    st.dtype = dtype_name(t.scalar_type());
    st.shape.assign(t.sizes().begin(), t.sizes().end());
    const size_t n = size_t(t.numel()) * t.element_size();
    st.data.resize(n);
    if (n) std::memcpy(st.data.data(), t.data_ptr(), n);
    file.tensors.push_back(std::move(st));
  }
  for (size_t i = 0; i < meta_keys.size(); ++i) file.metadata[meta_keys[i]] = meta_values[i];
  try {
    write_safetensors(path, file);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

std::tuple<std::vector<std::string>, std::vector<at::Tensor>, std::vector<std::string>, std::vector<std::string>>
load_op(const std::string& path) {
  SafetensorsFile file;
  try {
    file = read_safetensors(path);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
  std::vector<std::string> names, keys, values;
  std::vector<at::Tensor> tensors;
  for (auto& st : file.tensors) {
    at::Tensor t = at::empty(st.shape, at::TensorOptions().dtype(dtype_of(st.dtype)));
    if (!st.data.empty()) std::memcpy(t.data_ptr(), st.data.data(), st.data.size());
    names.push_back(st.name);
    tensors.push_back(t);
  }
  for (const auto& kv : file.metadata) {
    keys.push_back(kv.first);
    values.push_back(kv.second);
  }
  return {names, tensors, keys, values};
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("save_safetensors(str path, str[] names, Tensor[] tensors, str[] meta_keys, str[] meta_values) -> ()");
  m.def("load_safetensors(str path) -> (str[], Tensor[], str[], str[])");
  m.impl("save_safetensors", TORCH_FN(lowbit::save_op));
  m.impl("load_safetensors", TORCH_FN(lowbit::load_op));
}
