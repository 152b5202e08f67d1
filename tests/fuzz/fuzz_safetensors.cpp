// libFuzzer target for the safetensors reader and its JSON parser (run by scripts/fuzz.sh;
// torch-free: built from the serialization sources alone).
//
// Properties checked on every input:
//  - parse_json and parse_safetensors either return or throw std::invalid_argument;
//    anything else (a crash, a sanitizer report, another exception) is a finding;
//  - a file the reader accepts is accepted by the writer, and writing it and reading the
//    result again gives the same tensors and metadata; writing that again gives the same
//    bytes.
// To check one more function on an accepted file, add one line to check_accepted_file().
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "serialization/json.h"
#include "serialization/safetensors.h"
#include "serialization/saved_model.h"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "\nfuzz_safetensors: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// Runs f; std::invalid_argument is the documented answer to bad input. Returns whether f
// finished. Any other exception escapes to libFuzzer, which reports it as a crash.
template <class F>
bool accepted(F&& f) {
  try {
    f();
    return true;
  } catch (const std::invalid_argument&) {
    return false;
  }
}

// For a call that must not reject this input: std::invalid_argument is a finding.
template <class F>
void must_succeed(const char* what, F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    finding(std::string(what) + " threw: " + e.what());
  }
}

const lowbit::StoredTensor* find_tensor(const lowbit::SafetensorsFile& f, const std::string& name) {
  for (const auto& t : f.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

// Same tensors (by name: the writer sorts them) and the same metadata.
void expect_same(const lowbit::SafetensorsFile& a, const lowbit::SafetensorsFile& b) {
  if (a.tensors.size() != b.tensors.size())
    finding("round trip: " + std::to_string(a.tensors.size()) + " tensors became " + std::to_string(b.tensors.size()));
  for (const auto& t : a.tensors) {
    const lowbit::StoredTensor* u = find_tensor(b, t.name);
    if (!u) finding("round trip lost tensor '" + t.name + "'");
    if (u->dtype != t.dtype) finding("round trip changed the dtype of '" + t.name + "'");
    if (u->shape != t.shape) finding("round trip changed the shape of '" + t.name + "'");
    if (u->data != t.data) finding("round trip changed the data of '" + t.name + "'");
  }
  if (a.metadata != b.metadata) finding("round trip changed the metadata");
}

void check_round_trip(const lowbit::SafetensorsFile& file) {
  std::vector<uint8_t> bytes;
  must_succeed("serialize_safetensors of a file parse_safetensors accepted",
               [&] { bytes = lowbit::serialize_safetensors(file); });
  lowbit::SafetensorsFile again;
  must_succeed("parse_safetensors of serialize_safetensors' output",
               [&] { again = lowbit::parse_safetensors(bytes.data(), bytes.size()); });
  expect_same(file, again);
  std::vector<uint8_t> bytes2;
  must_succeed("serialize_safetensors of the round-tripped file",
               [&] { bytes2 = lowbit::serialize_safetensors(again); });
  if (bytes2 != bytes) finding("writing the round-tripped file gave different bytes");
  // With a (fresh) checksum: the reader verifies it.
  must_succeed("serialize_safetensors(with_checksum) of an accepted file",
               [&] { bytes = lowbit::serialize_safetensors(file, true); });
  must_succeed("parse_safetensors of a file written with a checksum",
               [&] { again = lowbit::parse_safetensors(bytes.data(), bytes.size()); });
  for (const auto& t : file.tensors) {
    const lowbit::StoredTensor* u = find_tensor(again, t.name);
    if (!u || u->data != t.data) finding("checksummed round trip changed '" + t.name + "'");
  }
}

// Everything run on a file parse_safetensors accepted. One line per check; a check that
// may reject the file with std::invalid_argument goes in accepted(), one that must accept
// it in must_succeed(), e.g.
//   accepted([&] { lowbit::validate_saved_model(metadata_json, tensor_refs(file)); });
// (its sources then go into SOURCES in scripts/fuzz.sh).
// lowbit's saved-model validator on the file's "lowbit" metadata and its tensors: any
// answer but std::invalid_argument (a crash, an overflow, another exception) is a finding.
void check_saved_model(const lowbit::SafetensorsFile& file) {
  auto meta = file.metadata.find("lowbit");
  if (meta == file.metadata.end()) return;
  std::map<std::string, lowbit::TensorRef> refs;
  for (const auto& t : file.tensors) refs[t.name] = lowbit::TensorRef{t.dtype, t.shape, t.data.data(), t.data.size()};
  accepted([&] { lowbit::validate_saved_model(meta->second, refs); });
}

void check_accepted_file(const lowbit::SafetensorsFile& file) {
  check_round_trip(file);
  check_saved_model(file);
}

}  // namespace

// parse_safetensors runs parse_safetensors_index (the memory-mapped loader's reader) and
// verify_checksum, so both are fuzzed here too.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  accepted([&] { lowbit::parse_json(std::string(reinterpret_cast<const char*>(data), size)); });
  lowbit::SafetensorsFile file;
  if (accepted([&] { file = lowbit::parse_safetensors(data, size); })) check_accepted_file(file);
  return 0;
}
