// The quantization kernels one instruction set provides; quant_kernels.cpp lists them per
// instruction set and isa_pick() (isa/isa_registry.h) chooses.
#pragma once
#include "kernels/quant_kernels.h"

namespace lowbit {

struct IsaTable {
  const char* name;
  void (*compute_scales)(const ConstMatrix&, const QuantSpec&, ScaleView);
  void (*fake_quant)(const ConstMatrix&, const QuantSpec&, ScaleView, const MutMatrix&);
  void (*fake_quant_dynamic)(const ConstMatrix&, const QuantSpec&, const MutMatrix&, ScaleView);
  void (*pack)(const ConstMatrix&, const QuantSpec&, ScaleView, uint8_t*, int64_t, bool);
  void (*unpack)(const uint8_t*, int64_t, const QuantSpec&, ScaleView, const MutMatrix&, bool);
};

IsaTable isa_table_scalar();
IsaTable isa_table_avx2();    // only call when the CPU has AVX2 + FMA + F16C
IsaTable isa_table_avx512();  // only call when the CPU has AVX-512 F/BW/VL/DQ

}  // namespace lowbit
