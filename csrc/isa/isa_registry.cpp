#include "isa/isa_registry.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>

namespace lowbit {

namespace {
bool cpu_scalar() { return true; }
bool cpu_avx2() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool f16c = c & (1u << 29), fma = c & (1u << 12);
  return f16c && fma && __builtin_cpu_supports("avx2");
}
bool cpu_avx512() {
  return cpu_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool cpu_avx512_vnni() {
  unsigned a, b, c, d;
  if (!cpu_avx512() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (c & (1u << 11)) != 0;  // AVX512_VNNI
}

// CPUID is asked once per row: in a virtual machine each CPUID exits to the hypervisor,
// and the families pick their code on every call.
std::vector<bool> runs_on_this_cpu() {
  std::vector<bool> v;
  for (const IsaRow& r : isa_registry()) v.push_back(r.cpu_has());
  return v;
}
const std::vector<bool>& cpu_runs() {
  static const std::vector<bool> v = runs_on_this_cpu();
  return v;
}

int index_of(const std::string& name) {
  const std::vector<IsaRow>& rows = isa_registry();
  for (size_t i = 0; i < rows.size(); ++i)
    if (name == rows[i].name) return int(i);
  return -1;
}

std::string allowed_names() {
  std::string s = "auto";
  const std::vector<IsaRow>& rows = isa_registry();
  for (size_t i = rows.size(); i-- > 0;) s += std::string(", ") + rows[i].name;
  return s;
}

int checked_index(const std::string& name) {
  const int i = index_of(name == "auto" ? best_isa() : name);
  if (i < 0) throw std::invalid_argument("isa: '" + name + "' is not allowed; allowed: " + allowed_names());
  if (!cpu_runs()[size_t(i)]) throw std::invalid_argument("isa: '" + name + "' is not supported by this CPU");
  return i;
}

std::atomic<int>& selected() {
  static std::atomic<int> i{[] {
    const char* env = std::getenv("LOWBIT_ISA");
    return checked_index(env && *env ? std::string(env) : "auto");
  }()};
  return i;
}
}  // namespace

const std::vector<IsaRow>& isa_registry() {
  static const std::vector<IsaRow> rows = {
      {"scalar", nullptr, &cpu_scalar},
      {"avx2", "scalar", &cpu_avx2},  // with FMA and F16C
      {"avx512", "avx2", &cpu_avx512},  // F, BW, VL, DQ
      {"avx512_vnni", "avx512", &cpu_avx512_vnni},
  };
  return rows;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> v;
  for (size_t i = 0; i < isa_registry().size(); ++i)
    if (cpu_runs()[i]) v.push_back(isa_registry()[i].name);
  return v;
}
std::string best_isa() { return available_isas().back(); }
int current_isa_index() { return selected().load(std::memory_order_relaxed); }
std::string current_isa() { return isa_registry()[size_t(current_isa_index())].name; }
void set_isa(const std::string& name) { selected().store(checked_index(name), std::memory_order_relaxed); }

}  // namespace lowbit
