// The scalar reference codecs against every vector of shared/spec/formats.md, plus
// exhaustive checks over all codes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "formats/half.h"
#include "formats/reference.h"
#include "scales/granule_scale.h"

using namespace lowbit;
using namespace lowbit::ref;

TEST(IntReference, SymmetricScaleVectors) {
  EXPECT_FLOAT_EQ(int_scale_symmetric(1, -2, 8).scale, 2.0f / 128);
  EXPECT_FLOAT_EQ(int_scale_symmetric(2, -1, 8).scale, 2.0f / 127);
  EXPECT_FLOAT_EQ(int_scale_symmetric(7, -1, 4).scale, 1.0f);
  EXPECT_EQ(int_scale_symmetric(7, -1, 4).offset, 0);
}

TEST(IntReference, AsymmetricScaleVectors) {
  IntScale a = int_scale_asymmetric(3, -1, 8);
  EXPECT_FLOAT_EQ(a.scale, 4.0f / 255);
  EXPECT_EQ(a.offset, -64);
  IntScale b = int_scale_asymmetric(3, -1, 4);
  EXPECT_FLOAT_EQ(b.scale, 4.0f / 15);
  EXPECT_EQ(b.offset, -4);
}

TEST(IntReference, RoundingAndClampVectors) {
  IntScale two{2.0f, 0};
  const float in[] = {1, 2, 3, 4};
  const int32_t want[] = {0, 1, 2, 2};  // ties to even
  for (int i = 0; i < 4; ++i) EXPECT_EQ(int_quantize(in[i], two, 8, true), want[i]) << in[i];
  IntScale one{1.0f, 0};
  const float in8[] = {-200, -1.6f, 0.4f, 1.5f, 200};
  const int32_t want8[] = {-128, -2, 0, 2, 127};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(int_quantize(in8[i], one, 8, true), want8[i]) << in8[i];
}

// INT3 (the integer rules at 3 bits; codes -4..3, stored in a nibble): worked by hand.
TEST(IntReference, Int3Vectors) {
  EXPECT_FLOAT_EQ(int_scale_symmetric(3, -2, 3).scale, 1.0f);    // 3 / 3
  EXPECT_FLOAT_EQ(int_scale_symmetric(1, -4, 3).scale, 1.0f);    // |min| wins: 4 / 4
  EXPECT_FLOAT_EQ(int_scale_symmetric(6, -1, 3).scale, 2.0f);    // 6 / 3
  IntScale a = int_scale_asymmetric(5, -2, 3);                   // (5 + 2) / 7, zero point -4 + 2
  EXPECT_FLOAT_EQ(a.scale, 1.0f);
  EXPECT_EQ(a.offset, -2);
  EXPECT_EQ(int_quantize(5.0f, a, 3, false), 3);
  EXPECT_EQ(int_quantize(-2.0f, a, 3, false), -4);
  IntScale one{1.0f, 0};
  const float in[] = {-9, -4.4f, -3.5f, -0.5f, 0.5f, 2.5f, 2.6f, 3.7f, 100};
  const int32_t want[] = {-4, -4, -4, 0, 0, 2, 3, 3, 3};  // ties to even, clamped to [-4, 3]
  for (int i = 0; i < 9; ++i) EXPECT_EQ(int_quantize(in[i], one, 3, true), want[i]) << in[i];
  QuantSpec s;
  s.format = Format::kInt3;
  s.granularity = Granularity::kChannel;
  const GranuleParams p = granule_params(s, {6.0f, -1.0f, false});
  EXPECT_FLOAT_EQ(p.scale, 2.0f);
  EXPECT_EQ(format_info(Format::kInt3).bits, 4);  // two codes a byte
  EXPECT_EQ(packed_row_bytes(Format::kInt3, 33), 17);
}

// INT6 (codes -32..31 in a byte; Q6_K's codes): worked by hand.
TEST(IntReference, Int6Vectors) {
  EXPECT_FLOAT_EQ(int_scale_symmetric(31, -5, 6).scale, 1.0f);   // 31 / 31
  EXPECT_FLOAT_EQ(int_scale_symmetric(3, -32, 6).scale, 1.0f);   // |min| wins: 32 / 32
  IntScale one{1.0f, 0};
  const float in[] = {-40, -31.5f, 30.5f, 31.4f, 99};
  const int32_t want[] = {-32, -32, 30, 31, 31};  // ties to even, clamped to [-32, 31]
  for (int i = 0; i < 5; ++i) EXPECT_EQ(int_quantize(in[i], one, 6, true), want[i]) << in[i];
  EXPECT_EQ(format_info(Format::kInt6).bits, 8);
  EXPECT_STREQ(format_info(Format::kInt6).superblock_scale, "q6_k");
  EXPECT_EQ(format_info(Format::kInt6).superblock_sc_max, 127);
  GranuleParams p[2] = {{1.27f, 0, 0}, {0.5f, 0, 0}};
  superblock_scales(p, 2, 127);
  const float d = fp16_to_float(float_to_fp16(0.01f));
  EXPECT_EQ(p[0].scale, d * 127.0f);
  EXPECT_EQ(p[1].scale, d * std::nearbyint(0.5f / d));
  float s[2] = {p[0].scale, p[1].scale}, got_d;
  uint8_t sc[2];
  ASSERT_TRUE(split_superblock_scales(s, 2, 127, &got_d, sc));
  EXPECT_EQ(got_d, d);
  EXPECT_EQ(sc[0], 127);
  EXPECT_FALSE(split_superblock_scales(s, 2, 63, &got_d, sc));  // 127 steps do not fit Q4_K's 63
}

TEST(IntReference, ScaleGuard) {
  EXPECT_FLOAT_EQ(int_scale_symmetric(0, 0, 8).scale, 1.0f);
  EXPECT_FLOAT_EQ(int_scale_symmetric(1e-6f, 0, 8).scale, 1.0f);  // 1e-6/127 < 1.19e-7
  IntScale z = int_scale_asymmetric(0, 0, 8);
  EXPECT_FLOAT_EQ(z.scale, 1.0f);
  EXPECT_EQ(z.offset, -128);
  EXPECT_FLOAT_EQ(int_scale_symmetric(std::numeric_limits<float>::quiet_NaN(), 0, 8).scale, 1.0f);
  EXPECT_TRUE(scale_needs_guard(std::numeric_limits<float>::infinity()));
  EXPECT_FALSE(scale_needs_guard(1.2e-7f));
}

struct HiF8Vector {
  float in;
  uint8_t code;
  float decoded;
};

TEST(HiFloat8Reference, SpecVectors) {
  const HiF8Vector v[] = {
      {1.0f, 0x08, 1.0f},          {1.0625f, 0x09, 1.125f},       {1.0624f, 0x08, 1.0f},
      {-1.0625f, 0x89, -1.125f},   {0.5f, 0x18, 0.5f},            {3.0f, 0x14, 3.0f},
      {15.5f, 0x40, 16.0f},        {17.0f, 0x40, 16.0f},          {18.0f, 0x41, 20.0f},
      {19.0f, 0x41, 20.0f},        {0.1f, 0x52, 0.09375f},        {0.01f, 0x5D, 0.009765625f},
      {0.001f, 0x74, 0.0009765625f}, {100.0f, 0x4A, 96.0f},       {448.0f, 0x62, 512.0f},
      {1000.0f, 0x64, 1024.0f},    {28671.0f, 0x6D, 24576.0f},    {28672.0f, 0x6E, 32768.0f},
      {40000.0f, 0x6E, 32768.0f},  {65504.0f, 0x6E, 32768.0f},    {4.57763671875e-5f, 0x7F, 4.57763671875e-5f},
      {2.288818359375e-5f, 0x7E, 0x1p-15f}, {2.2e-5f, 0x07, 0x1p-16f}, {0x1p-23f, 0x01, 0x1p-22f},
      {1e-7f, 0x00, 0.0f},
  };
  for (const auto& t : v) {
    EXPECT_EQ(hifloat8_encode(t.in), t.code) << t.in;
    EXPECT_EQ(hifloat8_decode(t.code), t.decoded) << std::hex << int(t.code);
  }
}

TEST(HiFloat8Reference, Specials) {
  EXPECT_EQ(hifloat8_encode(std::numeric_limits<float>::quiet_NaN()), 0x80);
  EXPECT_EQ(hifloat8_encode(std::numeric_limits<float>::infinity()), 0x6F);
  EXPECT_EQ(hifloat8_encode(-std::numeric_limits<float>::infinity()), 0xEF);
  EXPECT_EQ(hifloat8_encode(-0.0f), 0x00);
  EXPECT_EQ(hifloat8_encode(-1e-9f), 0x00);  // no -0 code
  EXPECT_EQ(hifloat8_decode(0x6E), 32768.0f);
  EXPECT_EQ(hifloat8_decode(0x7E), 0x1p-15f);
  EXPECT_EQ(hifloat8_decode(0x01), 0x1p-22f);
  // fp16 2.7180e-5 (the fp16 value nearest to it) -> 0x7E
  EXPECT_EQ(hifloat8_encode(0.000027179718017578125f), 0x7E);
}

TEST(HiFloat8Reference, AllCodesDecodeAndRoundTrip) {
  int nans = 0, infs = 0;
  std::set<float> finite;
  for (int c = 0; c < 256; ++c) {
    float v = hifloat8_decode(uint8_t(c));
    if (std::isnan(v)) {
      ++nans;
      continue;
    }
    if (std::isinf(v)) ++infs;
    else finite.insert(v);
    EXPECT_EQ(hifloat8_encode(v), c) << "code " << std::hex << c;
  }
  EXPECT_EQ(nans, 1);
  EXPECT_EQ(infs, 2);
  EXPECT_EQ(finite.size(), 253u);  // +0 once, no two codes share a value
}

TEST(HiFloat8Reference, CodeTableRows) {
  // Rows 0x4_ and 0x7_ of shared/spec/hifloat8_codes.md.
  const float row4[] = {16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(hifloat8_decode(uint8_t(0x40 + i)), row4[i]);
  const float row7[] = {0x1p-8f, 0x1.8p-8f, 0x1p-9f, 0x1.8p-9f, 0x1p-10f, 0x1.8p-10f, 0x1p-11f, 0x1.8p-11f,
                        0x1p-12f, 0x1.8p-12f, 0x1p-13f, 0x1.8p-13f, 0x1p-14f, 0x1.8p-14f, 0x1p-15f, 0x1.8p-15f};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(hifloat8_decode(uint8_t(0x70 + i)), row7[i]);
  const float row6[] = {256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768};
  for (int i = 0; i < 15; ++i) EXPECT_EQ(hifloat8_decode(uint8_t(0x60 + i)), row6[i]);
  EXPECT_EQ(hifloat8_decode(0xC4), -32.0f);
}

TEST(Float8E4M3Reference, RangeAndSaturation) {
  EXPECT_EQ(minifloat_decode(0x7E, kE4M3FN), 448.0f);
  EXPECT_TRUE(std::isnan(minifloat_decode(0x7F, kE4M3FN)));
  EXPECT_TRUE(std::isnan(minifloat_decode(0xFF, kE4M3FN)));
  EXPECT_EQ(minifloat_decode(0x08, kE4M3FN), 0x1p-6f);
  EXPECT_EQ(minifloat_decode(0x01, kE4M3FN), 0x1p-9f);
  EXPECT_EQ(minifloat_encode(500.0f, kE4M3FN), 0x7E);  // saturating, not NaN
  EXPECT_EQ(minifloat_encode(1e30f, kE4M3FN), 0x7E);
  EXPECT_EQ(minifloat_encode(-std::numeric_limits<float>::infinity(), kE4M3FN), 0xFE);
  EXPECT_EQ(minifloat_encode(std::numeric_limits<float>::quiet_NaN(), kE4M3FN), 0x7F);
  EXPECT_EQ(minifloat_encode(-0.0f, kE4M3FN), 0x80);
  EXPECT_EQ(minifloat_encode(0x1p-10f, kE4M3FN), 0x00);     // tie to even (0)
  EXPECT_EQ(minifloat_encode(0x1.8p-10f, kE4M3FN), 0x01);   // above the tie
  EXPECT_EQ(minifloat_encode(464.0f, kE4M3FN), 0x7E);       // tie between 448 and 480 -> 448 (even)
}

TEST(Float8E4M3Reference, AllCodesRoundTrip) {
  std::set<float> values;
  for (int c = 0; c < 256; ++c) {
    float v = minifloat_decode(uint8_t(c), kE4M3FN);
    if (std::isnan(v)) continue;
    values.insert(v);
    EXPECT_EQ(minifloat_encode(v, kE4M3FN), c) << c;
  }
  EXPECT_EQ(values.size(), 253u);  // 254 non-NaN codes, +0 == -0
}

TEST(Float4Reference, E2M1SpecVector) {
  const float in[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 5.01f, 7.0f, -0.26f, -2.6f, 100.0f};
  const float want[] = {0, 1, 1, 2, 2, 4, 4, 6, 6, -0.5f, -3, 6};
  for (int i = 0; i < 12; ++i) EXPECT_EQ(minifloat_decode(minifloat_encode(in[i], kE2M1), kE2M1), want[i]) << in[i];
}

// Both sides of every rounding boundary of the FP4 grids.
void check_boundaries(const MinifloatSpec& f, const float* grid, int n) {
  for (int i = 0; i + 1 < n; ++i) {
    float lo = grid[i], hi = grid[i + 1], mid = 0.5f * (lo + hi);
    float below = std::nextafter(mid, 0.0f), above = std::nextafter(mid, 100.0f);
    EXPECT_EQ(minifloat_decode(minifloat_encode(below, f), f), lo) << below;
    EXPECT_EQ(minifloat_decode(minifloat_encode(above, f), f), hi) << above;
    EXPECT_EQ(minifloat_decode(minifloat_encode(-above, f), f), -hi) << -above;
    // the tie goes to the code with an even mantissa
    uint8_t c_lo = minifloat_encode(lo, f), c_hi = minifloat_encode(hi, f);
    float tie = minifloat_decode(minifloat_encode(mid, f), f);
    EXPECT_EQ(tie, (c_lo & 1) == 0 ? lo : hi) << mid;
    (void)c_hi;
  }
}

TEST(Float4Reference, E2M1Boundaries) {
  const float g[] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  check_boundaries(kE2M1, g, 8);
  EXPECT_EQ(minifloat_decode(minifloat_encode(std::numeric_limits<float>::infinity(), kE2M1), kE2M1), 6.0f);
  EXPECT_EQ(minifloat_encode(std::numeric_limits<float>::quiet_NaN(), kE2M1), 0);
}

TEST(Float4Reference, E1M2Boundaries) {
  const float g[] = {0, 0.25f, 0.5f, 0.75f, 1, 1.25f, 1.5f, 1.75f};
  check_boundaries(kE1M2, g, 8);
  EXPECT_EQ(minifloat_decode(minifloat_encode(9.0f, kE1M2), kE1M2), 1.75f);
  for (int c = 0; c < 16; ++c) EXPECT_EQ(minifloat_encode(minifloat_decode(uint8_t(c), kE1M2), kE1M2), c);
}

TEST(MxReference, AscendBumpVectors) {
  const float amax[] = {1.0f, 7.5f, 6.9f, 0.3f, 448.0f};
  const int want[] = {-2, 1, 0, -4, 6};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(int(mx_scale_e8m0(amax[i], 2, true)) - 127, want[i]) << amax[i];
  EXPECT_EQ(int(mx_scale_e8m0(7.5f, 2, false)) - 127, 0);  // OCP: no bump
  EXPECT_EQ(int(mx_scale_e8m0(448.0f, 8, false)) - 127, 0);
}

TEST(MxReference, SpecialBlocks) {
  EXPECT_EQ(mx_scale_e8m0(0.0f, 8, false), 127);  // all-zero block: e = 0
  EXPECT_EQ(mx_scale_e8m0(std::numeric_limits<float>::infinity(), 8, false), 0xFF);
  EXPECT_EQ(mx_scale_e8m0(std::numeric_limits<float>::quiet_NaN(), 2, true), 0xFF);
  EXPECT_EQ(mx_scale_e8m0(1e-44f, 8, false), 0);  // clamped to e = -127
  EXPECT_EQ(mx_scale_e8m0(3e38f, 0, false), 254);  // clamped to e = 127
  EXPECT_TRUE(std::isnan(e8m0_decode(0xFF)));
  EXPECT_EQ(e8m0_decode(0), 0x1p-127f);
}

TEST(GranuleParams, SignedMaxIsGgmlQ4_0Rule) {
  // s = m / -8, m the value of largest magnitude with its sign; the negative one on a tie
  EXPECT_EQ(int_scale_signed_max(6.0f, -2.0f, 4).scale, -0.75f);
  EXPECT_EQ(int_scale_signed_max(2.0f, -6.0f, 4).scale, 0.75f);
  EXPECT_EQ(int_scale_signed_max(4.0f, -4.0f, 4).scale, 0.5f);
  EXPECT_EQ(int_scale_signed_max(0.0f, 0.0f, 4).scale, 1.0f);    // all zero: the guard
  EXPECT_EQ(int_scale_signed_max(8e-7f, 0.0f, 4).scale, 1.0f);   // |s| = 1e-7 < 1.19e-7
  EXPECT_EQ(int_scale_signed_max(1e-6f, 0.0f, 4).scale, -1.25e-7f);
  EXPECT_EQ(int_scale_signed_max(INFINITY, 0.0f, 4).scale, 1.0f);
  // the top level lands on m: code -8 of a negative scale
  const IntScale s = int_scale_signed_max(6.0f, -2.0f, 4);
  EXPECT_EQ(int_quantize(6.0f, s, 4, true), -8);
  EXPECT_EQ(int_dequantize(-8, s, true), 6.0f);
  EXPECT_EQ(int_quantize(-6.0f, s, 4, true), 7);  // the other side saturates at 7 levels
  QuantSpec q;
  q.format = Format::kInt4;
  q.granularity = Granularity::kGroup;
  q.group_size = 32;
  q.signed_max = true;
  EXPECT_EQ(granule_params(q, {6.0f, -2.0f, false}).scale, -0.75f);
  q.fp16_scale = true;  // rounded to fp16 with its sign
  EXPECT_EQ(granule_params(q, {0.1f, -0.05f, false}).scale, fp16_to_float(float_to_fp16(-0.0125f)));
  EXPECT_EQ(granule_params(q, {1e6f, 0.0f, false}).scale, -65504.0f);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(granule_params(q, {-inf, inf, true}).scale, 1.0f);  // all NaN: all zero
}

TEST(GranuleParams, TokenAndStaticDivisors) {
  GranuleStats st{3.0f, -6.0f, false};
  QuantSpec s;
  s.format = Format::kHiFloat8;
  s.granularity = Granularity::kChannel;
  EXPECT_FLOAT_EQ(granule_params(s, st).scale, 6.0f / 16);
  s.granularity = Granularity::kToken;
  EXPECT_FLOAT_EQ(granule_params(s, st).scale, 6.0f / 15);
  s.format = Format::kInt8;
  EXPECT_FLOAT_EQ(granule_params(s, st).scale, 6.0f / 127);  // token: no extra negative code
  s.granularity = Granularity::kChannel;
  EXPECT_FLOAT_EQ(granule_params(s, st).scale, 6.0f / 128);
  s.format = Format::kFloat8E4M3FN;
  EXPECT_FLOAT_EQ(granule_params(s, st).scale, 6.0f / 448);
  s.format = Format::kFloat4E1M2;
  EXPECT_FLOAT_EQ(granule_params(s, st).scale, 6.0f / 1.75f);
  s.format = Format::kMxFp8E4M3FN;
  s.granularity = Granularity::kGroup;
  s.group_size = 32;
  EXPECT_EQ(granule_params(s, {3.0f, -6.0f, true}).e8m0, 0xFF);  // NaN in the block
  EXPECT_EQ(granule_params(s, st).e8m0, 127 + 2 - 8);
  // all-NaN granule (max < min): treated as all zero
  s.format = Format::kInt8;
  s.granularity = Granularity::kTensor;
  s.group_size = 0;
  float inf = std::numeric_limits<float>::infinity();
  EXPECT_FLOAT_EQ(granule_params(s, {-inf, inf, true}).scale, 1.0f);
}

// The Q4_K scale grid: d = fp16(max / 63), scales d x round(s / d) in [1, 63], worked by hand.
TEST(GranuleParams, SuperblockScalesAreFp16TimesSixBitIntegers) {
  GranuleParams p[10];
  const float s[10] = {0.63f, 0.315f, 0.01f, 1e-9f, 0.2f, 0.63f, 0.05f, 0.4f, /* next run: */ 3.0f, 1.5f};
  for (int j = 0; j < 10; ++j) p[j] = {s[j], 0, 0};
  superblock_scales(p, 10, 63);
  const float d = fp16_to_float(float_to_fp16(0.63f / 63.0f));
  EXPECT_EQ(d, 0.01000213623046875f);  // the fp16 nearest 0.01
  const int want[8] = {63, 31, 1, 1, 20, 63, 5, 40};  // 0.315 / d = 31.49; 1e-9 -> at least 1
  for (int j = 0; j < 8; ++j) EXPECT_EQ(p[j].scale, d * float(want[j])) << j;
  const float d2 = fp16_to_float(float_to_fp16(3.0f / 63.0f));  // the second run has its own d
  EXPECT_EQ(p[8].scale, d2 * 63.0f);
  EXPECT_EQ(p[9].scale, d2 * std::nearbyint(1.5f / d2));
  float got_d;
  uint8_t sc[8];
  float run[8];
  for (int j = 0; j < 8; ++j) run[j] = p[j].scale;
  ASSERT_TRUE(split_superblock_scales(run, 8, 63, &got_d, sc));
  EXPECT_EQ(got_d, d);
  for (int j = 0; j < 8; ++j) EXPECT_EQ(sc[j], want[j]) << j;
  run[2] = 0.0105f;  // not a multiple of d
  EXPECT_FALSE(split_superblock_scales(run, 8, 63, &got_d, sc));
  const float tiny[2] = {1e-6f * 3.0f, 1e-6f};  // d below fp16's normal range is still found
  GranuleParams t[2] = {{tiny[0], 0, 0}, {tiny[1], 0, 0}};
  superblock_scales(t, 2, 63);
  float tt[2] = {t[0].scale, t[1].scale};
  ASSERT_TRUE(split_superblock_scales(tt, 2, 63, &got_d, sc));
  EXPECT_EQ(got_d * float(sc[0]), t[0].scale);
  EXPECT_EQ(got_d * float(sc[1]), t[1].scale);
}
