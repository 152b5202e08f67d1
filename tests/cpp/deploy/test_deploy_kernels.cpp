// The deploy decoders and products, torch-free: every instruction set's dequantized
// weight equals unpack() bit for bit (every format, every weight dtype, ragged widths),
// linear_packed equals a double-precision product of those values within fp32 summation
// error, the VNNI int8 tile equals the portable one exactly, and the 8-bit compute
// mode's kernels equal its scalar reference bit for bit (exact-size buffers: ASan sees
// any read past a row's last block).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "deploy/dynamic_int8.h"
#include "deploy/int8_common.h"
#include "deploy/int8_tile.h"
#include "deploy/packed_linear.h"
#include "deploy/weight_decoder.h"
#include "formats/half.h"
#include "kernels/codec_luts.h"

using namespace lowbit;

namespace {

// Instruction sets to run (the registry's rows this CPU runs); "<isa>-novbmi" is the best
// AVX-512 row with the pre-VBMI float8 decoder.
std::vector<std::string> isas() {
  std::vector<std::string> v = available_isas();
  if (v.back().rfind("avx512", 0) == 0) v.push_back(v.back() + "-novbmi");
  return v;
}

struct Case {
  Format f;
  Granularity g;
  int64_t gs;
  bool sym;
};

// Every weight row of the format table: integers in groups of 32, 64 and 96 and per channel
// and tensor, with and without a zero point; floats in each granularity they allow.
std::vector<Case> weight_cases() {
  std::vector<Case> c;
  for (const FormatInfo& f : format_table()) {
    if (!f.as_weight) continue;
    if (f.is_mx()) {
      c.push_back({f.format, Granularity::kGroup, f.block, true});
    } else if (f.is_int()) {
      const bool zp = !f.allows_asym;  // "symmetric" of the zero-point cases: false where the row allows one
      c.push_back({f.format, Granularity::kGroup, 32, true});
      c.push_back({f.format, Granularity::kGroup, 64, zp});
      c.push_back({f.format, Granularity::kGroup, 96, true});
      c.push_back({f.format, Granularity::kChannel, 0, true});
      c.push_back({f.format, Granularity::kChannel, 0, zp});
      c.push_back({f.format, Granularity::kTensor, 0, zp});
    } else {
      if (f.weight_granularities & granularity_bit(Granularity::kTensor))
        c.push_back({f.format, Granularity::kTensor, 0, true});
      if (f.weight_granularities & granularity_bit(Granularity::kChannel))
        c.push_back({f.format, Granularity::kChannel, 0, true});
      if (f.weight_granularities & granularity_bit(Granularity::kGroup)) {
        c.push_back({f.format, Granularity::kGroup, 32, true});
        c.push_back({f.format, Granularity::kGroup, 64, true});
      }
    }
  }
  return c;
}
const std::vector<Case> kCases = weight_cases();

// A group larger than the row (MX blocks are always 32 long).
bool group_too_long(const Case& c, int64_t k) {
  return c.g == Granularity::kGroup && c.gs > k && !format_info(c.f).is_mx();
}

struct Packed {
  QuantSpec spec;
  std::vector<float> scale;
  std::vector<int32_t> offset;
  std::vector<uint8_t> e8m0, codes;
  int64_t row_bytes;
  PackedWeight view(int64_t n, int64_t k, DType vd, const float* s1 = nullptr) {
    PackedWeight w;
    w.codes = codes.data();
    w.row_bytes = row_bytes;
    w.rows = n;
    w.cols = k;
    w.spec = spec;
    w.scales = ScaleView{scale.data(), spec.symmetric ? nullptr : offset.data(), e8m0.data()};
    w.row_scale1 = s1;
    w.value_dtype = vd;
    return w;
  }
};

Packed make(const Case& c, int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> w(size_t(n * k));
  for (auto& v : w) v = nd(rng);
  Packed p;
  p.spec.format = c.f;
  p.spec.granularity = c.g;
  p.spec.group_size = c.gs;
  p.spec.symmetric = c.sym;
  const int64_t count = scale_count(p.spec, n, k);
  p.scale.resize(size_t(count));
  p.offset.resize(size_t(count));
  p.e8m0.resize(size_t(count));
  ScaleView sv{p.scale.data(), p.offset.data(), p.e8m0.data()};
  ConstMatrix x{w.data(), DType::kF32, n, k, k};
  compute_scales(x, p.spec, sv);
  p.row_bytes = packed_row_bytes(p.spec, k);
  p.codes.resize(size_t(n * p.row_bytes));
  pack(x, p.spec, sv, p.codes.data(), p.row_bytes);
  return p;
}

struct IsaGuard {
  explicit IsaGuard(const std::string& isa) {
    const bool novbmi = isa.size() > 7 && isa.compare(isa.size() - 7, 7, "-novbmi") == 0;
    set_isa(novbmi ? isa.substr(0, isa.size() - 7) : isa);
    allow_vbmi_decoders(!novbmi);
  }
  ~IsaGuard() {
    set_isa("auto");
    allow_vbmi_decoders(true);
  }
};

// The scalar unpack of p into w's weight dtype, widened to fp32: the values every path
// must give.
std::vector<float> unpacked(const Packed& p, const PackedWeight& w, int64_t n, int64_t k) {
  IsaGuard g("scalar");
  std::vector<float> want(size_t(n * k));
  if (w.value_dtype == DType::kF32) {
    unpack(p.codes.data(), p.row_bytes, p.spec, w.scales, MutMatrix{want.data(), w.value_dtype, n, k, k});
    return want;
  }
  std::vector<uint16_t> half(size_t(n * k));
  unpack(p.codes.data(), p.row_bytes, p.spec, w.scales, MutMatrix{half.data(), w.value_dtype, n, k, k});
  for (size_t i = 0; i < half.size(); ++i)
    want[i] = w.value_dtype == DType::kBF16 ? bf16_to_float(half[i]) : fp16_to_float(half[i]);
  return want;
}

// Overwrites p's codes with code = (column + step * row) mod 2^bits, so that every code
// sits in every column position, except the non-finite ones (8-bit float NaN codes, HiF8
// infinities), which quantization never writes: those positions get code 0.
void write_every_code(Packed& p, int64_t n, int64_t k, int64_t step) {
  const int bits = format_info(p.spec.format).bits;
  const float* lut = decode_lut(p.spec.format);  // float formats: the value of every code
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j) {
      uint8_t code = uint8_t((j + step * r) % (1 << bits));
      if (lut != nullptr && !std::isfinite(lut[code])) code = 0;
      uint8_t& byte = p.codes[size_t(r * p.row_bytes + (bits == 4 ? j / 2 : j))];
      if (bits == 8) byte = code;
      else byte = uint8_t(j % 2 ? (byte & 0x0F) | (code << 4) : (byte & 0xF0) | code);
    }
}

// Whether dequant_rows (current instruction set) gives `want` bit for bit; names the first
// element that differs.
::testing::AssertionResult decodes_to(const PackedWeight& w, const std::vector<float>& want, int64_t n, int64_t k) {
  std::vector<float> got(size_t(n * k));
  dequant_rows(w, 0, n, got.data(), k);
  for (size_t i = 0; i < got.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &got[i], 4);
    std::memcpy(&b, &want[i], 4);
    if (a != b)
      return ::testing::AssertionFailure() << "row " << i / size_t(k) << " column " << i % size_t(k) << ": got "
                                           << got[i] << ", unpack gives " << want[i];
  }
  return ::testing::AssertionSuccess();
}

TEST(DeployKernels, DequantRowsEqualUnpackOnEveryIsa) {
  for (const Case& c : kCases) {
    for (int64_t k : {33, 172, 256}) {
      if (group_too_long(c, k)) continue;
      const int64_t n = 5;
      Packed p = make(c, n, k, uint32_t(k));
      for (DType vd : {DType::kF32, DType::kBF16, DType::kF16}) {
        PackedWeight w = p.view(n, k, vd);
        const std::vector<float> want = unpacked(p, w, n, k);
        for (const std::string& isa : isas()) {
          IsaGuard g(isa);
          ASSERT_TRUE(decodes_to(w, want, n, k)) << isa << " format " << int(c.f) << " k=" << k << " dtype " << int(vd);
        }
      }
    }
  }
}

// Every code in every column position (write_every_code: each 32-column chunk and the
// ragged tail see all finite codes; the decoders assume no NaN code, and lowbit.load
// rejects them): decoding must equal the scalar unpack bit for bit, in every weight dtype,
// and the GEMV and GEMM outputs must stay finite.
TEST(DeployKernels, EveryCodeDecodesLikeUnpackOnEveryIsa) {
  for (const Case& c : kCases) {
    const int64_t n = 9, k = 300;
    if (c.g == Granularity::kGroup && c.gs > k) continue;
    Packed p = make(c, n, k, 11);
    write_every_code(p, n, k, 7);
    for (DType vd : {DType::kF32, DType::kBF16, DType::kF16}) {
      PackedWeight w = p.view(n, k, vd);
      const std::vector<float> want = unpacked(p, w, n, k);
      std::vector<float> x(size_t(40 * k), 0.5f);
      for (const std::string& isa : isas()) {
        IsaGuard g(isa);
        ASSERT_TRUE(decodes_to(w, want, n, k)) << isa << " format " << int(c.f) << " dtype " << int(vd);
        for (int64_t m : {1, 40}) {  // GEMV and GEMM
          std::vector<float> y(size_t(m * n));
          linear_packed(ConstMatrix{x.data(), DType::kF32, m, k, k}, w, nullptr,
                        MutMatrix{y.data(), DType::kF32, m, n, n});
          for (int64_t i = 0; i < m; ++i)
            for (int64_t r = 0; r < n; ++r)
              ASSERT_TRUE(std::isfinite(y[size_t(i * n + r)]))
                  << isa << " format " << int(c.f) << " dtype " << int(vd) << " m=" << m << " row " << r;
        }
      }
    }
  }
}

// MX block scales at the ends of the E8M0 range (2^-127 .. 2^127, products down to 2^-128
// and up to infinity) with every code: each decoder's values still equal unpack's bit for
// bit in every weight dtype (the bf16 decoders take an MX product as already rounded).
// A per-row multiplier (row_scale1: FP8 x FP4's first level, or a BatchNorm folded by
// convert) scales each decoded row before its rounding to the weight dtype, in every
// format: round_vd(unpack_fp32(code) * s1[r]) bit for bit on every ISA and decoder, and
// the products use it (GEMV and GEMM against a double sum of those values).
TEST(DeployKernels, RowMultiplierScalesEveryFormatOnEveryIsa) {
  for (const Case& c : kCases) {
    const int64_t n = 7, k = 172;
    if (group_too_long(c, k)) continue;
    Packed p = make(c, n, k, 5);
    const float s1[n] = {0.75f, -1.3f, 2.0f, 0.0f, 1e-3f, -0.1f, 3.7f};
    for (DType vd : {DType::kF32, DType::kBF16, DType::kF16}) {
      const PackedWeight w = p.view(n, k, vd, s1);
      std::vector<float> want = unpacked(p, p.view(n, k, DType::kF32), n, k);
      for (int64_t i = 0; i < n * k; ++i) {
        const float v = want[size_t(i)] * s1[i / k];
        want[size_t(i)] = vd == DType::kBF16 ? bf16_to_float(float_to_bf16(v))
                          : vd == DType::kF16 ? fp16_to_float(float_to_fp16(v)) : v;
      }
      std::mt19937 rng(3);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      std::vector<float> x(size_t(40 * k));
      for (auto& v : x) v = nd(rng);
      for (const std::string& isa : isas()) {
        IsaGuard g(isa);
        ASSERT_TRUE(decodes_to(w, want, n, k)) << isa << " format " << int(c.f) << " dtype " << int(vd);
        for (int64_t m : {1, 40}) {
          std::vector<float> y(size_t(m * n));
          linear_packed(ConstMatrix{x.data(), DType::kF32, m, k, k}, w, nullptr, MutMatrix{y.data(), DType::kF32, m, n, n});
          for (int64_t i = 0; i < m; ++i)
            for (int64_t r = 0; r < n; ++r) {
              double ref = 0, mag = 0;
              for (int64_t j = 0; j < k; ++j) {
                ref += double(x[size_t(i * k + j)]) * want[size_t(r * k + j)];
                mag += std::fabs(double(x[size_t(i * k + j)]) * want[size_t(r * k + j)]);
              }
              ASSERT_NEAR(y[size_t(i * n + r)], ref, 1e-6 * mag + 1e-30)
                  << isa << " format " << int(c.f) << " dtype " << int(vd) << " m=" << m << " row " << r;
            }
        }
      }
    }
  }
}

TEST(DeployKernels, MxExtremeScalesDecodeLikeUnpack) {
  const uint8_t scales[] = {0, 1, 2, 64, 127, 200, 253, 254};
  for (const FormatInfo& info : format_table()) {
    if (!info.is_mx()) continue;
    const Format f = info.format;
    const int64_t n = 8, k = 96;
    Packed p = make(Case{f, Granularity::kGroup, info.block, true}, n, k, 5);
    for (size_t i = 0; i < p.e8m0.size(); ++i) p.e8m0[i] = scales[i % 8];  // block (row, b): i = row * 3 + b
    write_every_code(p, n, k, 5);
    for (DType vd : {DType::kF32, DType::kBF16, DType::kF16}) {
      PackedWeight w = p.view(n, k, vd);
      const std::vector<float> want = unpacked(p, w, n, k);
      for (const std::string& isa : isas()) {
        IsaGuard g(isa);
        ASSERT_TRUE(decodes_to(w, want, n, k)) << isa << " format " << int(f) << " dtype " << int(vd);
      }
    }
  }
}

TEST(DeployKernels, LinearPackedWithinFp32SummationError) {
  for (const Case& c : kCases) {
    for (int64_t m : {1, 3, 9, 20, 40, 96, 120}) {  // GEMV; AVX-512 tiles 8x1, 8x2, 6x4 (40, 120), 12x2 (96)
      const int64_t n = 13, k = 172;
      if (group_too_long(c, k)) continue;
      Packed p = make(c, n, k, uint32_t(m));
      PackedWeight w = p.view(n, k, DType::kF32);
      std::vector<float> wd(size_t(n * k)), x(size_t(m * k)), bias(static_cast<size_t>(n));
      dequant_rows(w, 0, n, wd.data(), k);
      std::mt19937 rng(7);
      std::normal_distribution<float> nd;
      for (auto& v : x) v = nd(rng);
      for (auto& v : bias) v = nd(rng);
      for (const std::string& isa : isas()) {
        IsaGuard g(isa);
        std::vector<float> y(size_t(m * n));
        linear_packed(ConstMatrix{x.data(), DType::kF32, m, k, k}, w, bias.data(), MutMatrix{y.data(), DType::kF32, m, n, n});
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double ref = bias[size_t(j)], mag = std::fabs(bias[size_t(j)]);
            for (int64_t t = 0; t < k; ++t) {
              ref += double(x[size_t(i * k + t)]) * wd[size_t(j * k + t)];
              mag += std::fabs(double(x[size_t(i * k + t)]) * wd[size_t(j * k + t)]);
            }
            ASSERT_NEAR(y[size_t(i * n + j)], ref, (k + 2) * 6e-8 * mag) << isa << " format " << int(c.f) << " m=" << m;
          }
      }
    }
  }
}

TEST(DeployKernels, DynamicInt8EqualsScalarReferenceAndDoubleProduct) {
  std::vector<Case> cases;  // every integer row, symmetric, in groups of 32, 64, 128, per channel and tensor
  for (const FormatInfo& f : format_table())
    if (f.is_int())
      for (const Case& c : {Case{f.format, Granularity::kGroup, 32, true}, Case{f.format, Granularity::kGroup, 64, true},
                            Case{f.format, Granularity::kGroup, 128, true}, Case{f.format, Granularity::kChannel, 0, true},
                            Case{f.format, Granularity::kTensor, 0, true}})
        cases.push_back(c);
  for (const Case& c : cases)
    for (int64_t k : {33, 100, 128, 300})
      for (int64_t m : {1, 2, 5, 9}) {
        const int64_t n = 7;
        Packed p = make(c, n, k, uint32_t(k + m));
        PackedWeight pw = p.view(n, k, DType::kF32);
        std::vector<float> wd(size_t(n * k));
        dequant_rows(pw, 0, n, wd.data(), k);
        GroupedIntWeight w;
        w.codes = p.codes.data();
        w.rows = n;
        w.cols = k;
        w.row_bytes = p.row_bytes;
        w.bits = format_info(c.f).bits;
        w.scale = p.scale.data();
        w.group = c.g == Granularity::kGroup ? c.gs : 0;
        w.per_tensor = c.g == Granularity::kTensor;
        std::mt19937 rng(3);
        std::normal_distribution<float> nd;
        std::vector<float> x(size_t(m * k));
        for (auto& v : x) v = nd(rng);
        x[0] = -std::numeric_limits<float>::infinity();  // row 0: guarded scale, codes -128 and 127
        std::vector<float> want;
        for (const std::string& isa : isas()) {
          IsaGuard g(isa);
          std::vector<float> y(size_t(m * n));
          linear_dynamic_int8(ConstMatrix{x.data(), DType::kF32, m, k, k}, w, nullptr,
                              MutMatrix{y.data(), DType::kF32, m, n, n});
          if (want.empty()) want = y;
          ASSERT_EQ(0, std::memcmp(y.data(), want.data(), y.size() * sizeof(float))) << isa << " k=" << k << " m=" << m;
        }
        for (int64_t i = 1; i < m; ++i) {  // rows 1..: per-token INT8 codes times the weights, in double
          float amax = 0.0f;
          for (int64_t t = 0; t < k; ++t) amax = std::max(amax, std::fabs(x[size_t(i * k + t)]));
          const float sx = amax / 127.0f;
          for (int64_t j = 0; j < n; ++j) {
            double ref = 0.0, mag = 0.0;
            for (int64_t t = 0; t < k; ++t) {
              const double q = std::nearbyint(x[size_t(i * k + t)] / sx) * double(sx);
              ref += q * wd[size_t(j * k + t)];
              mag += std::fabs(q * wd[size_t(j * k + t)]);
            }
            ASSERT_NEAR(want[size_t(i * n + j)], ref, (k + 4) * 6e-8 * mag) << "k=" << k << " m=" << m;
          }
        }
      }
}

// Each column order is a permutation of the padded columns; kNibbleLanes puts column
// 8 l + j of a full 128-column block at 16 j + l and orders the columns after the last
// full block as kEvenOdd does.
TEST(DeployKernels, ColumnOrdersArePermutations) {
  for (ColumnOrder order : {ColumnOrder::kNatural, ColumnOrder::kEvenOdd, ColumnOrder::kNibbleLanes}) {
    for (int64_t cols : {1, 33, 127, 128, 172, 300, 4096}) {
      const int64_t kpad = round_up(cols, kChunk);
      std::vector<int> hits(size_t(kpad), 0);
      for (int64_t k = 0; k < kpad; ++k) {
        const int64_t p = column_position(k, order, cols);
        ASSERT_TRUE(p >= 0 && p < kpad) << "order " << int(order) << " cols " << cols << " k " << k;
        ++hits[size_t(p)];
      }
      for (int64_t p = 0; p < kpad; ++p) EXPECT_EQ(hits[size_t(p)], 1) << "order " << int(order) << " position " << p;
    }
  }
  EXPECT_EQ(column_position(1, ColumnOrder::kEvenOdd, 64), 16);
  EXPECT_EQ(column_position(34, ColumnOrder::kEvenOdd, 64), 33);
  EXPECT_EQ(column_position(8 * 3 + 5, ColumnOrder::kNibbleLanes, 256), 16 * 5 + 3);
  EXPECT_EQ(column_position(128 + 8 * 15 + 7, ColumnOrder::kNibbleLanes, 256), 128 + 16 * 7 + 15);
  EXPECT_EQ(column_position(128 + 1, ColumnOrder::kNibbleLanes, 172), 128 + 16);  // after the last full block
  EXPECT_EQ(column_position(9, ColumnOrder::kNatural, 172), 9);
}

TEST(DeployKernels, ShapeErrorsNameTheArgument) {
  Packed p = make(kCases[0], 4, 64, 1);
  PackedWeight w = p.view(4, 64, DType::kF32);
  std::vector<float> x(3 * 63), y(3 * 4);
  try {
    linear_packed(ConstMatrix{x.data(), DType::kF32, 3, 63, 63}, w, nullptr, MutMatrix{y.data(), DType::kF32, 3, 4, 4});
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("x: 63 columns, but the weight has 64"), std::string::npos) << e.what();
  }
}

TEST(DeployKernels, Int8TilesEqualPortableTile) {
  if (best_isa() == "scalar") GTEST_SKIP() << "no AVX2 on this CPU";
  const bool vnni = int8_kernel_name() == "avx512_vnni";
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> s8(-128, 127), u8(0, 255);
  for (int64_t k4 : {1, 9, 43}) {
    const int64_t ldw = 4 * k4 + 4;
    std::vector<int8_t> w(size_t(kInt8TileN * ldw));
    std::vector<uint8_t> xq(size_t(k4 * kInt8TileM * 4));
    for (auto& v : w) v = int8_t(s8(rng));
    for (auto& v : xq) v = uint8_t(u8(rng));
    std::vector<int32_t> a(size_t(kInt8TileN * kInt8TileM)), b(a.size()), c(a.size());
    int8_tile_scalar(w.data(), ldw, xq.data(), k4, a.data());
    int8_tile_avx2(w.data(), ldw, xq.data(), k4, c.data());
    EXPECT_EQ(a, c) << "avx2 k4=" << k4;
    if (vnni) {
      int8_tile_vnni(w.data(), ldw, xq.data(), k4, b.data());
      EXPECT_EQ(a, b) << "vnni k4=" << k4;
    }
    // the GEMV form, against the same sums, ragged k
    const int64_t k = 4 * k4 - 1, kpad = (k + 63) / 64 * 64;
    std::vector<uint8_t> xu(size_t(3 * kpad), 0);
    for (int64_t m = 0; m < 3; ++m)
      for (int64_t i = 0; i < k; ++i) xu[size_t(m * kpad + i)] = uint8_t(u8(rng));
    std::vector<int32_t> r1(size_t(kInt8TileN * 3)), r2(r1.size()), r3(r1.size());
    int8_rows_scalar(w.data(), ldw, kInt8TileN, k, xu.data(), 3, kpad, r1.data());
    int8_rows_avx2(w.data(), ldw, kInt8TileN, k, xu.data(), 3, kpad, r3.data());
    EXPECT_EQ(r1, r3) << "avx2 k=" << k;
    if (vnni) {
      int8_rows_vnni(w.data(), ldw, kInt8TileN, k, xu.data(), 3, kpad, r2.data());
      EXPECT_EQ(r1, r2) << "vnni k=" << k;
    }
    for (int64_t r = 0; r < kInt8TileN; ++r) {
      EXPECT_EQ(int8_row_sum_scalar(w.data() + r * ldw, k), int8_row_sum_avx2(w.data() + r * ldw, k));
      if (vnni) EXPECT_EQ(int8_row_sum_scalar(w.data() + r * ldw, k), int8_row_sum_vnni(w.data() + r * ldw, k));
    }
  }
}

}  // namespace

TEST(DeployKernels, HasNanFindsEveryPositionInEveryDtype) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t n : {1, 3, 4, 7, 8, 9, 1000, 70001}) {
      const int64_t es = d == DType::kF32 ? 4 : 2;
      std::vector<uint8_t> buf(size_t(n * es), 0);
      auto put = [&](int64_t i, float v) {
        if (d == DType::kF32) std::memcpy(buf.data() + i * 4, &v, 4);
        else {
          const uint16_t h = d == DType::kBF16 ? float_to_bf16(v) : float_to_fp16(v);
          std::memcpy(buf.data() + i * 2, &h, 2);
        }
      };
      for (int64_t i = 0; i < n; ++i) put(i, i % 2 ? INFINITY : -INFINITY);  // infinities are not NaN
      EXPECT_FALSE(int8_detail::has_nan(buf.data(), d, n)) << int(d) << " n=" << n;
      for (int64_t at : {int64_t(0), n / 2, n - 1}) {
        put(at, NAN);
        EXPECT_TRUE(int8_detail::has_nan(buf.data(), d, n)) << int(d) << " n=" << n << " at " << at;
        put(at, INFINITY);
      }
    }
  }
}
