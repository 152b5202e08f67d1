// The deploy kernels one instruction set provides; packed_linear.cpp picks a table.
#pragma once
#include "deploy/weight_decoder.h"

namespace lowbit {

struct LinearIsaTable {
  const char* name;
  // The best decoder this instruction set has for w's format.
  WeightDecoder (*decoder)(const PackedWeight& w);
  void (*linear)(const ConstMatrix& x, const WeightDecoder& d, const float* bias, const MutMatrix& y);
  void (*conv2d)(const Conv2dArgs& a, int64_t group, const WeightDecoder& d, const float* bias);
  // Whether conv2d reads channels-last input (and writes channels-last output) directly for
  // groups of this many output channels; otherwise the caller converts.
  bool (*conv2d_channels_last)(int64_t rows);
  // Whether conv2d runs a direct tiling (padded planes, which apply Conv2dArgs::act) for
  // groups of this many output channels, rather than packing patches.
  bool (*conv2d_direct)(const Conv2dArgs& a, int64_t rows);
};

LinearIsaTable linear_table_scalar();
LinearIsaTable linear_table_avx2();
LinearIsaTable linear_table_avx512();

// The AVX-512 decoder of 8-bit float codes (E4M3, MXFP8, HiF8) built on AVX512-VBMI byte
// permutes (decoder_vbmi.cpp); used when vbmi_decoders_enabled().
WeightDecoder vbmi_decoder_avx512(const PackedWeight& w);
bool vbmi_decoders_enabled();

}  // namespace lowbit
