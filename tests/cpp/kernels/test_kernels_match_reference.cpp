// Every instruction-set path of the kernels against the reference pipeline, bit for
// bit: random matrices with specials at every granularity, and all 65,536 fp16 and
// bf16 bit patterns for every element format.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "formats/half.h"
#include "kernels/codec_luts.h"
#include "kernels/quant_kernels.h"
#include "reference_pipeline.h"

using namespace lowbit;
using namespace lowbit::testing;

namespace {

struct IsaGuard {
  explicit IsaGuard(const std::string& isa) { set_isa(isa); }
  ~IsaGuard() { set_isa("auto"); }
};

std::vector<float> random_matrix(int64_t n, uint32_t seed, bool specials) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = nd(rng);
  if (specials && n > 8) {
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    const float sp[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-40f, -3e-39f, 1e30f, 448.0f, 65504.0f, 1e-8f};
    for (float s : sp) x[size_t(pick(rng))] = s;
  }
  return x;
}

struct Case {
  Format format;
  Granularity gran;
  int64_t group;
  bool sym;
  bool signed_max = false;  // symmetric INT4: ggml's Q4_0 scale rule (negative scales)
  bool fp16 = false;        // scales rounded to fp16
  bool superblock = false;  // the Q4_K scale grid (scale_dtype q4_k)
};

// Every row of the format table: each weight granularity (groups of 32 and 128 for
// integers, 64 for floats), asymmetric where the row allows it, per token where it is an
// activation type or a float, ggml's signed_max rule (fp32 and fp16 scales) where allowed.
std::vector<Case> all_cases() {
  std::vector<Case> c;
  for (const FormatInfo& f : format_table()) {
    if (f.is_mx()) {
      c.push_back({f.format, Granularity::kGroup, f.block, true});
      continue;
    }
    if (f.is_int()) {
      for (bool sym : {true, false}) {
        if (!sym && !f.allows_asym) continue;
        c.push_back({f.format, Granularity::kTensor, 0, sym});
        c.push_back({f.format, Granularity::kChannel, 0, sym});
        c.push_back({f.format, Granularity::kGroup, 32, sym});
        c.push_back({f.format, Granularity::kGroup, 128, sym});
      }
      if (f.as_input) c.push_back({f.format, Granularity::kToken, 0, true});
      if (f.superblock_scale) c.push_back({f.format, Granularity::kGroup, 32, true, false, false, true});
      for (bool fp16 : {false, true}) {
        if (!f.allows_signed_max) continue;
        c.push_back({f.format, Granularity::kTensor, 0, true, true, fp16});
        c.push_back({f.format, Granularity::kChannel, 0, true, true, fp16});
        c.push_back({f.format, Granularity::kGroup, 32, true, true, fp16});
        c.push_back({f.format, Granularity::kGroup, 128, true, true, fp16});
      }
      continue;
    }
    c.push_back({f.format, Granularity::kTensor, 0, true});
    c.push_back({f.format, Granularity::kChannel, 0, true});
    c.push_back({f.format, Granularity::kGroup, 64, true});
    c.push_back({f.format, Granularity::kToken, 0, true});
  }
  return c;
}

// The rows without block scales (every element code once).
std::vector<Format> scalar_formats() {
  std::vector<Format> v;
  for (const FormatInfo& f : format_table())
    if (!f.is_mx()) v.push_back(f.format);
  return v;
}

std::vector<Format> mx_formats() {
  std::vector<Format> v;
  for (const FormatInfo& f : format_table())
    if (f.is_mx()) v.push_back(f.format);
  return v;
}

QuantSpec spec_of(const Case& c, MxRule rule = MxRule::kAuto) {
  QuantSpec s;
  s.format = c.format;
  s.granularity = c.gran;
  s.group_size = c.group;
  s.symmetric = c.sym;
  s.mx_rule = rule;
  s.signed_max = c.signed_max;
  s.fp16_scale = c.fp16;
  s.superblock_scales = c.superblock;
  return s;
}

std::string describe(const Case& c, int64_t rows, int64_t cols, const std::string& isa) {
  return std::string(format_info(c.format).name) + " " + granularity_name(c.gran) + " g" +
         std::to_string(c.group) + (c.sym ? " sym " : " asym ") + (c.signed_max ? "signed_max " : "") +
         (c.fp16 ? "fp16 " : "") + (c.superblock ? "q4_k " : "") + std::to_string(rows) + "x" +
         std::to_string(cols) + " " + isa;
}

}  // namespace

TEST(Kernels, EveryPathMatchesReferenceOnRaggedShapes) {
  const int64_t shapes[][2] = {{1, 1}, {3, 33}, {4, 172}, {1, 4096}, {7, 64}, {2, 100}};
  for (const std::string& isa : available_isas()) {
    IsaGuard guard(isa);
    for (const Case& c : all_cases())
      for (const auto& sh : shapes) {
        const int64_t rows = sh[0], cols = sh[1];
        QuantSpec spec = spec_of(c);
        const std::string what = describe(c, rows, cols, isa);
        std::vector<float> x = random_matrix(rows * cols, uint32_t(rows * 7919 + cols), true);
        RefMatrix want = reference_matrix(spec, x, rows, cols);
        const int64_t ns = scale_count(spec, rows, cols);
        std::vector<float> scale(static_cast<size_t>(ns));
        std::vector<int32_t> offset(static_cast<size_t>(ns));
        std::vector<uint8_t> e8m0(static_cast<size_t>(ns));
        ScaleView sv{scale.data(), offset.data(), e8m0.data()};
        ConstMatrix cx{x.data(), DType::kF32, rows, cols, cols};
        compute_scales(cx, spec, sv);
        for (int64_t i = 0; i < ns; ++i) {
          if (format_info(spec.format).is_mx()) {
            ASSERT_EQ(e8m0[size_t(i)], want.params[size_t(i)].e8m0) << what << " block " << i;
          } else {
            ASSERT_TRUE(same_bits(scale[size_t(i)], want.params[size_t(i)].scale)) << what << " scale " << i;
            ASSERT_EQ(offset[size_t(i)], want.params[size_t(i)].offset) << what;
          }
        }
        // static QDQ with the stored scales, and the fused dynamic QDQ
        std::vector<float> out(x.size()), out_dyn(x.size());
        fake_quant(cx, spec, sv, MutMatrix{out.data(), DType::kF32, rows, cols, cols});
        fake_quant_dynamic(cx, spec, MutMatrix{out_dyn.data(), DType::kF32, rows, cols, cols});
        for (size_t i = 0; i < x.size(); ++i) {
          ASSERT_TRUE(same_bits(out[i], want.values[i])) << what << " i=" << i << " x=" << x[i] << " got "
                                                          << out[i] << " want " << want.values[i];
          ASSERT_TRUE(same_bits(out_dyn[i], want.values[i])) << what << " dynamic i=" << i;
          if (std::isnan(out[i])) ASSERT_EQ(bits_of(out[i]), 0x7FC00000u) << what << " canonical NaN";
        }
        // codes, packed and unpacked
        const int64_t rb = packed_row_bytes(spec, cols);
        std::vector<uint8_t> packed(size_t(rows * rb), 0xAB);
        pack(cx, spec, sv, packed.data(), rb);
        const bool four = format_info(spec.format).bits == 4;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < rb * (four ? 2 : 1); ++k) {
            uint8_t b = packed[size_t(r * rb + (four ? k / 2 : k))];
            uint8_t got = four ? ((k & 1) ? b >> 4 : b & 0xF) : b;
            uint8_t expect = k < cols ? want.codes[size_t(r * cols + k)] : 0;  // zero padding
            ASSERT_EQ(got, expect) << what << " row " << r << " k " << k;
          }
        std::vector<float> back(x.size());
        unpack(packed.data(), rb, spec, sv, MutMatrix{back.data(), DType::kF32, rows, cols, cols});
        for (size_t i = 0; i < x.size(); ++i) {
          // unpack cannot restore NaN where the format has no NaN code; elsewhere it equals QDQ
          if (std::isnan(x[i]) && !std::isnan(back[i])) continue;
          ASSERT_TRUE(same_bits(back[i], want.values[i])) << what << " unpack i=" << i;
        }
      }
  }
}

// All 65,536 bit patterns of a 16-bit dtype, through every format and path.
void exhaustive_16bit(DType dtype) {
  std::vector<uint16_t> in(65536);
  for (uint32_t i = 0; i < 65536; ++i) in[i] = uint16_t(i);
  std::vector<float> as_float(65536);
  for (uint32_t i = 0; i < 65536; ++i)
    as_float[i] = dtype == DType::kF16 ? fp16_to_float(in[i]) : bf16_to_float(in[i]);
  const std::vector<Format> formats = scalar_formats();
  for (const std::string& isa : available_isas()) {
    IsaGuard guard(isa);
    for (Format f : formats)
      for (float s : {1.0f, 0.37f}) {
        QuantSpec spec;
        spec.format = f;
        GranuleParams p{s, 0, 0};
        ScaleView sv{&s, nullptr, nullptr};
        ConstMatrix cx{in.data(), dtype, 256, 256, 256};
        std::vector<uint8_t> codes(65536);
        pack(cx, spec, sv, codes.data(), 256, /*nibbles=*/false);
        std::vector<uint16_t> out(65536);
        fake_quant(cx, spec, sv, MutMatrix{out.data(), dtype, 256, 256, 256});
        for (uint32_t i = 0; i < 65536; ++i) {
          RefElement e = reference_element(spec, p, as_float[i]);
          ASSERT_EQ(codes[i], e.code) << isa << " " << format_info(f).name << " s=" << s << " pattern " << i;
          uint16_t want = dtype == DType::kF16 ? float_to_fp16(std::isnan(e.value) ? NAN : e.value)
                                               : float_to_bf16(e.value);
          if (std::isnan(e.value)) want = dtype == DType::kF16 ? 0x7E00 : 0x7FC0;
          ASSERT_EQ(out[i], want) << isa << " " << format_info(f).name << " s=" << s << " pattern " << i;
        }
      }
  }
}

TEST(Kernels, AllFp16PatternsMatchReferenceOnEveryPath) { exhaustive_16bit(DType::kF16); }
TEST(Kernels, AllBf16PatternsMatchReferenceOnEveryPath) { exhaustive_16bit(DType::kBF16); }

TEST(Kernels, HalfConversionsMatchAcrossPaths) {
  // fp32 -> fp16/bf16 of the QDQ output goes through F16C / integer SIMD on the vector
  // paths and through half.h on the scalar one: compare them on random fp32 bits.
  std::mt19937 rng(7);
  std::vector<uint32_t> bits(1 << 16);
  for (auto& b : bits) b = rng();
  std::vector<float> x(bits.size());
  std::memcpy(x.data(), bits.data(), bits.size() * 4);
  for (DType d : {DType::kF16, DType::kBF16}) {
    std::vector<std::vector<uint16_t>> outs;
    for (const std::string& isa : available_isas()) {
      IsaGuard guard(isa);
      QuantSpec spec;
      spec.format = Format::kInt8;
      std::vector<uint16_t> out(x.size());
      float s = 1e30f;  // keeps almost everything in range: exercises wide magnitudes
      int32_t o = 0;
      fake_quant(ConstMatrix{x.data(), DType::kF32, 256, 256, 256}, spec, ScaleView{&s, &o, nullptr},
                 MutMatrix{out.data(), d, 256, 256, 256});
      outs.push_back(out);
    }
    for (size_t i = 1; i < outs.size(); ++i) EXPECT_EQ(outs[i], outs[0]) << "path " << i;
  }
}

TEST(Kernels, NibbleOrderIsLowFirst) {
  const uint8_t codes[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  uint8_t packed[6], back[12];
  pack_nibbles(codes, packed, 6);
  EXPECT_EQ(packed[0], 0x21);
  EXPECT_EQ(packed[5], 0xCB);
  unpack_nibbles(packed, back, 6);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(back[i], codes[i]);
}

TEST(Kernels, NonContiguousRowsAndPaddedOutputs) {
  // ld > cols: only the first cols of each row are read and written.
  const int64_t rows = 3, cols = 40, ld = 57;
  std::vector<float> x = random_matrix(rows * ld, 3, false), out(size_t(rows * ld), -7.0f);
  QuantSpec spec;
  spec.format = Format::kInt4;
  spec.granularity = Granularity::kGroup;
  spec.group_size = 32;
  std::vector<float> scale(size_t(rows * 2));
  ScaleView sv{scale.data(), nullptr, nullptr};
  fake_quant_dynamic(ConstMatrix{x.data(), DType::kF32, rows, cols, ld}, spec,
                     MutMatrix{out.data(), DType::kF32, rows, cols, ld}, sv);
  std::vector<float> dense;
  for (int64_t r = 0; r < rows; ++r) dense.insert(dense.end(), x.begin() + r * ld, x.begin() + r * ld + cols);
  RefMatrix want = reference_matrix(spec, dense, rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < ld; ++k) {
      float got = out[size_t(r * ld + k)];
      if (k < cols) EXPECT_TRUE(same_bits(got, want.values[size_t(r * cols + k)]));
      else EXPECT_EQ(got, -7.0f) << "padding touched";
    }
}

TEST(Kernels, EdgeGranules) {
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.granularity = Granularity::kGroup;
  spec.group_size = 32;
  // all-zero group -> scale 1, QDQ exact zeros; a huge outlier only affects its group
  std::vector<float> x(64, 0.0f);
  for (int i = 32; i < 64; ++i) x[size_t(i)] = 0.01f * float(i - 32);
  x[40] = 1e6f;
  std::vector<float> scale(2), out(64);
  fake_quant_dynamic(ConstMatrix{x.data(), DType::kF32, 1, 64, 64}, spec, MutMatrix{out.data(), DType::kF32, 1, 64, 64},
                     ScaleView{scale.data(), nullptr, nullptr});
  EXPECT_EQ(scale[0], 1.0f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[size_t(i)], 0.0f);
  EXPECT_FLOAT_EQ(scale[1], 1e6f / 127);
  EXPECT_FLOAT_EQ(out[40], 1e6f);
  EXPECT_EQ(out[33], 0.0f);  // small values of the outlier's group collapse to zero
}

TEST(Kernels, ValidationMessages) {
  QuantSpec spec;
  spec.format = Format::kInt4;
  spec.granularity = Granularity::kGroup;
  spec.group_size = 48;
  try {
    validate_spec(spec);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("group_size: 48 is not a positive multiple of 32"), std::string::npos);
  }
  spec.group_size = 0;
  EXPECT_THROW(validate_spec(spec), std::invalid_argument);
  spec.format = Format::kHiFloat8;
  spec.group_size = 32;
  spec.symmetric = false;
  try {
    validate_spec(spec);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    for (const FormatInfo& f : format_table())  // every format with a zero point is named
      EXPECT_EQ(std::string(e.what()).find(f.name) != std::string::npos, f.allows_asym || f.format == spec.format)
          << f.name << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find("symmetric: False is only allowed for int8"), std::string::npos);
  }
  spec.format = Format::kMxFp4E2M1;
  spec.symmetric = true;
  spec.group_size = 64;
  EXPECT_THROW(validate_spec(spec), std::invalid_argument);
  try {
    parse_format("int5");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("allowed: int8, int4"), std::string::npos);
  }
  EXPECT_THROW(set_isa("sse9"), std::invalid_argument);
}

TEST(Kernels, MxBlocksOfTinyAndHugeValues) {
  // Subnormal block maxima take the slow exact path of the E8M0 rule; huge ones clamp.
  for (const std::string& isa : available_isas()) {
    IsaGuard guard(isa);
    for (Format f : mx_formats()) {
      QuantSpec spec;
      spec.format = f;
      spec.granularity = Granularity::kGroup;
      spec.group_size = format_info(f).block;
      std::vector<float> x(32 * 20);
      for (size_t i = 0; i < x.size(); ++i) {
        const size_t block = i / 32;
        x[i] = block < 10 ? 1e-41f * float(i % 7 + 1) : 3e38f / float(i % 5 + 1);
        if (i % 3 == 0) x[i] = -x[i];
      }
      RefMatrix want = reference_matrix(spec, x, 1, int64_t(x.size()));
      std::vector<uint8_t> e8m0(20);
      std::vector<float> out(x.size());
      fake_quant_dynamic(ConstMatrix{x.data(), DType::kF32, 1, int64_t(x.size()), int64_t(x.size())}, spec,
                         MutMatrix{out.data(), DType::kF32, 1, int64_t(x.size()), int64_t(x.size())},
                         ScaleView{nullptr, nullptr, e8m0.data()});
      for (size_t b = 0; b < 20; ++b) ASSERT_EQ(e8m0[b], want.params[b].e8m0) << isa << " block " << b;
      EXPECT_EQ(e8m0[0], 0);  // clamped at e = -127
      for (size_t i = 0; i < x.size(); ++i) ASSERT_TRUE(same_bits(out[i], want.values[i])) << isa << " i=" << i;
    }
  }
}
