// The ISA registry: its rows, selection, the base-chain rule every kernel family uses,
// and each family's choice on every instruction set this CPU runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "algorithms/gptq_kernels.h"
#include "deploy/dynamic_int8.h"
#include "deploy/packed_linear.h"
#include "isa/isa_registry.h"

using namespace lowbit;

namespace {

struct IsaGuard {
  explicit IsaGuard(const std::string& isa) { set_isa(isa); }
  ~IsaGuard() { set_isa("auto"); }
};

int row_index(const std::string& name) {
  for (size_t i = 0; i < isa_registry().size(); ++i)
    if (name == isa_registry()[i].name) return int(i);
  return -1;
}

// The first of `names` found walking from `isa` down its bases.
std::string nearest(const std::string& isa, const std::vector<std::string>& names) {
  for (int i = row_index(isa); i >= 0;) {
    for (const std::string& n : names)
      if (n == isa_registry()[size_t(i)].name) return n;
    const char* base = isa_registry()[size_t(i)].base;
    i = base ? row_index(base) : -1;
  }
  return "";
}

int toy_scalar() { return 1; }
int toy_avx2() { return 2; }

}  // namespace

TEST(IsaRegistry, RowsAreScalarFirstEachAfterItsBase) {
  const auto& rows = isa_registry();
  ASSERT_FALSE(rows.empty());
  EXPECT_STREQ(rows[0].name, "scalar");
  EXPECT_EQ(rows[0].base, nullptr);
  for (size_t i = 1; i < rows.size(); ++i) {
    ASSERT_NE(rows[i].base, nullptr) << rows[i].name;
    const int b = row_index(rows[i].base);
    EXPECT_GE(b, 0) << rows[i].name;
    EXPECT_LT(b, int(i)) << rows[i].name;
  }
}

TEST(IsaRegistry, AvailableRowsSelectAndAutoIsTheBest) {
  const std::vector<std::string> isas = available_isas();
  ASSERT_EQ(isas.front(), "scalar");
  EXPECT_EQ(best_isa(), isas.back());
  for (const std::string& isa : isas) {
    ASSERT_GE(row_index(isa), 0) << isa;
    IsaGuard g(isa);
    EXPECT_EQ(current_isa(), isa);
    // a row this CPU runs has a base this CPU runs
    const char* base = isa_registry()[size_t(row_index(isa))].base;
    if (base) EXPECT_NE(std::find(isas.begin(), isas.end(), std::string(base)), isas.end()) << isa;
  }
  set_isa("auto");
  EXPECT_EQ(current_isa(), best_isa());
}

TEST(IsaRegistry, UnknownAndUnsupportedNamesAreRefused) {
  try {
    set_isa("sse9");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    std::string want = "isa: 'sse9' is not allowed; allowed: auto";
    for (size_t i = isa_registry().size(); i-- > 0;) want += std::string(", ") + isa_registry()[i].name;
    EXPECT_EQ(std::string(e.what()), want);
  }
  const std::vector<std::string> isas = available_isas();
  for (const IsaRow& r : isa_registry())
    if (std::find(isas.begin(), isas.end(), std::string(r.name)) == isas.end())
      EXPECT_THROW(set_isa(r.name), std::invalid_argument) << r.name;
  EXPECT_EQ(current_isa(), best_isa());  // a refused name changes nothing
}

TEST(IsaRegistry, FamiliesTakeTheNearestRowTheyHaveCodeFor) {
  static const IsaImpl<int> toy[] = {{"avx2", &toy_avx2}, {"scalar", &toy_scalar}};
  for (const std::string& isa : available_isas()) {
    IsaGuard g(isa);
    EXPECT_EQ(isa_pick(toy), nearest(isa, {"avx2", "scalar"}) == "avx2" ? 2 : 1) << isa;
    EXPECT_EQ(int8_kernel_name(), nearest(isa, {"avx512_vnni", "avx2", "scalar"})) << isa;
    EXPECT_EQ(std::string(dynamic_int8_kernels().name), nearest(isa, {"avx2", "scalar"})) << isa;
    EXPECT_EQ(std::string(gptq_kernels().name), nearest(isa, {"avx512", "avx2", "scalar"})) << isa;
  }
}

TEST(IsaRegistry, GptqLoopsAgreeOnEveryIsa) {
  // rank_k_update is element-wise and grid_error keeps 16 fixed partial sums: without FMA
  // contraction (scalar, AVX2) every unit gives the same bits; AVX-512 contracts, so it
  // agrees to rounding.
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const int64_t N = 37, rows = 5, k = 3, ldu = 7;
  std::vector<float> w0(size_t(rows * N)), u(size_t(k * ldu)), e(size_t(k * N)), h(static_cast<size_t>(N));
  for (auto* v : {&w0, &u, &e, &h})
    for (auto& x : *v) x = nd(rng);
  for (auto& x : h) x = std::fabs(x);
  const GptqKernels ref = gptq_kernels_scalar();
  std::vector<float> want = w0;
  ref.rank_k_update(want.data(), N, rows, u.data(), ldu, e.data(), k);
  const float want_err = ref.grid_error(w0.data(), h.data(), N, 0.3f, -8.0f, 7.0f);
  for (const std::string& isa : available_isas()) {
    IsaGuard g(isa);
    const GptqKernels kern = gptq_kernels();
    std::vector<float> got = w0;
    kern.rank_k_update(got.data(), N, rows, u.data(), ldu, e.data(), k);
    const float err = kern.grid_error(w0.data(), h.data(), N, 0.3f, -8.0f, 7.0f);
    const bool exact = std::string(kern.name) != "avx512";
    for (size_t i = 0; i < got.size(); ++i) {
      if (exact) ASSERT_EQ(got[i], want[i]) << isa << " i=" << i;
      else ASSERT_NEAR(got[i], want[i], 1e-5f * (1.0f + std::fabs(want[i]))) << isa << " i=" << i;
    }
    if (exact) EXPECT_EQ(err, want_err) << isa;
    else EXPECT_NEAR(err, want_err, 1e-5f * want_err) << isa;
  }
}
