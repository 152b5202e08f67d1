// torch.ops.lowbit.save_safetensors / load_safetensors: at::Tensor <-> the torch-free
// safetensors reader and writer (serialization/safetensors.cpp); validate_saved_model:
// lowbit's metadata against the loaded tensors (serialization/saved_model.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>

#include "serialization/json.h"
#include "serialization/mapped_file.h"
#include "serialization/safetensors.h"
#include "serialization/saved_model.h"

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

std::string save_op(const std::string& path, const std::vector<std::string>& names, const std::vector<at::Tensor>& tensors,
             const std::vector<std::string>& meta_keys, const std::vector<std::string>& meta_values, bool checksum) {
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
    return write_safetensors(path, file, checksum);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, printable_text(e.what()));
  }
}

// The file is memory-mapped (copy on write): each tensor whose bytes are aligned for
// its dtype views the mapping (kept alive by the tensors), the rest are copied. The
// header and the data section's coverage are checked first, the checksum (when the file
// has one) before any tensor is made.
std::tuple<std::vector<std::string>, std::vector<at::Tensor>, std::vector<std::string>, std::vector<std::string>>
load_op(const std::string& path) {
  std::shared_ptr<MappedFile> mapped;
  SafetensorsIndex index;
  try {
    mapped = std::make_shared<MappedFile>(path);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, "safetensors: ", printable_text(e.what()));
  }
  try {
    index = parse_safetensors_index(mapped->data(), mapped->size());
    verify_checksum(index, mapped->data());
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, printable_text(e.what()));
  }
  std::vector<std::string> names, keys, values;
  std::vector<at::Tensor> tensors;
  for (auto& t : index.tensors) {
    const at::ScalarType type = dtype_of(t.dtype);
    const auto options = at::TensorOptions().dtype(type);
    uint8_t* p = mapped->data() + index.data_start + t.begin;
    const size_t n = size_t(t.end - t.begin);
    at::Tensor out;
    if (n && reinterpret_cast<uintptr_t>(p) % at::elementSize(type) == 0) {
      out = at::from_blob(p, t.shape, [keep = mapped](void*) {}, options);
    } else {
      out = at::empty(t.shape, options);
      if (n) std::memcpy(out.data_ptr(), p, n);
    }
    names.push_back(t.name);
    tensors.push_back(out);
  }
  for (const auto& kv : index.metadata) {
    keys.push_back(kv.first);
    values.push_back(kv.second);
  }
  return {names, tensors, keys, values};
}

void validate_op(const std::string& meta, const std::vector<std::string>& names, const std::vector<at::Tensor>& tensors,
                 const std::vector<std::string>& custom_names, const std::vector<std::string>& custom_types) {
  TORCH_CHECK_VALUE(names.size() == tensors.size(), "names: ", names.size(), " names for ", tensors.size(), " tensors");
  TORCH_CHECK_VALUE(custom_names.size() == custom_types.size(), "custom_types: one entry per custom algorithm");
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::map<std::string, TensorRef> refs;
  for (size_t i = 0; i < names.size(); ++i) {
    contiguous.push_back(tensors[i].detach().cpu().contiguous());
    const at::Tensor& t = contiguous.back();
    TensorRef r;
    r.dtype = dtype_name(t.scalar_type());
    r.shape.assign(t.sizes().begin(), t.sizes().end());
    r.data = static_cast<const uint8_t*>(t.data_ptr());
    r.bytes = size_t(t.numel()) * t.element_size();
    refs[names[i]] = r;
  }
  std::vector<CustomAlgorithm> custom;
  for (size_t i = 0; i < custom_names.size(); ++i) {
    CustomAlgorithm c{custom_names[i], {}};
    std::string types = custom_types[i];
    for (size_t start = 0; start <= types.size();) {
      size_t comma = types.find(',', start);
      if (comma == std::string::npos) comma = types.size();
      if (comma > start) c.layer_types.push_back(types.substr(start, comma - start));
      start = comma + 1;
    }
    custom.push_back(c);
  }
  try {
    validate_saved_model(meta, refs, custom);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, printable_text(e.what()));
  }
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("save_safetensors(str path, str[] names, Tensor[] tensors, str[] meta_keys, str[] meta_values, "
        "bool checksum=False) -> str");
  m.def("validate_saved_model(str meta, str[] names, Tensor[] tensors, str[] custom_names, str[] custom_types) -> ()");
  m.impl("validate_saved_model", TORCH_FN(lowbit::validate_op));
  m.def("load_safetensors(str path) -> (str[], Tensor[], str[], str[])");
  m.impl("save_safetensors", TORCH_FN(lowbit::save_op));
  m.impl("load_safetensors", TORCH_FN(lowbit::load_op));
}
