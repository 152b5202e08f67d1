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
};

LinearIsaTable linear_table_scalar();
LinearIsaTable linear_table_avx2();
LinearIsaTable linear_table_avx512();

}  // namespace lowbit
