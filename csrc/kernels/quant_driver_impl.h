// Row loops of the quantization kernels, written once over a vector type V. Each
// instruction-set translation unit (quant_scalar.cpp, quant_avx2.cpp, quant_avx512.cpp)
// includes this file with its own V and gets its own copy of every kernel.
#pragma once
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "formats/half.h"
#include "kernels/codec_luts.h"
#include "kernels/codecs.h"
#include "kernels/isa_table.h"
#include "kernels/omp_region.h"
#include "kernels/quant_kernels.h"
#include "scales/granule_rule.h"

// Everything here has internal linkage (anonymous namespace) and avoids std::
// containers and algorithms: each ISA translation unit is compiled with different
// instruction-set flags, and a shared inline symbol could otherwise be taken by the
// linker from the AVX-512 unit for use on a CPU without AVX-512.
namespace lowbit {
namespace {
namespace driver {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline float maxf(float a, float b) { return a > b ? a : b; }
inline float minf(float a, float b) { return a < b ? a : b; }

// A zero-filled scratch row per thread, 64-byte aligned (whole-vector loads never straddle
// two cache lines).
struct Scratch {
  explicit Scratch(int64_t n)
      : p(static_cast<uint8_t*>(std::aligned_alloc(64, size_t((n + 63) / 64 * 64)))) {
    std::memset(p, 0, size_t((n + 63) / 64 * 64));
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  uint8_t* p;
};

template <DType D>
using DTypeTag = std::integral_constant<DType, D>;

template <class Fn>
void with_dtype(DType d, Fn&& fn) {
  switch (d) {
    case DType::kF32: return fn(DTypeTag<DType::kF32>{});
    case DType::kF16: return fn(DTypeTag<DType::kF16>{});
    case DType::kBF16: return fn(DTypeTag<DType::kBF16>{});
  }
}

template <class C>
struct CodecTag {
  using type = C;
};

// Calls fn(CodecTag<Codec>{}) with the element codec of spec.format (its table row's code
// and storage width).
template <class V, class Fn>
void with_codec(const QuantSpec& spec, Fn&& fn) {
  const FormatInfo& info = format_info(spec.format);
  switch (info.code) {
    case Code::kInt: {
      const bool sym = spec.symmetric || spec.granularity == Granularity::kToken;
      if (info.bits == 8) return sym ? fn(CodecTag<IntCodec<V, 8, true>>{}) : fn(CodecTag<IntCodec<V, 8, false>>{});
      return sym ? fn(CodecTag<IntCodec<V, 4, true>>{}) : fn(CodecTag<IntCodec<V, 4, false>>{});
    }
    case Code::kE4M3FN: return fn(CodecTag<MinifloatCodec<V, E4M3Traits>>{});
    case Code::kE2M1: return fn(CodecTag<MinifloatCodec<V, E2M1Traits>>{});
    case Code::kE1M2: return fn(CodecTag<MinifloatCodec<V, E1M2Traits>>{});
    case Code::kHiF8: return fn(CodecTag<HiFloat8Codec<V>>{});
  }
}

template <class V>
struct Kernels {
  using F = typename V::F;
  using I = typename V::I;
  static constexpr int L = V::kLanes;

  // ---- element access by dtype ----
  template <DType D>
  static F vload(const void* base, int64_t i) {
    if constexpr (D == DType::kF32) return V::load(static_cast<const float*>(base) + i);
    else if constexpr (D == DType::kF16) return V::load_f16(static_cast<const uint16_t*>(base) + i);
    else return V::load_bf16(static_cast<const uint16_t*>(base) + i);
  }
  template <DType D>
  static void vstore(void* base, int64_t i, F v) {
    if constexpr (D == DType::kF32) V::store(static_cast<float*>(base) + i, v);
    else if constexpr (D == DType::kF16) V::store_f16(static_cast<uint16_t*>(base) + i, v);
    else V::store_bf16(static_cast<uint16_t*>(base) + i, v);
  }
  template <DType D>
  static float sload(const void* base, int64_t i) {
    if constexpr (D == DType::kF32) return static_cast<const float*>(base)[i];
    else if constexpr (D == DType::kF16) return fp16_to_float(static_cast<const uint16_t*>(base)[i]);
    else return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
  }
  template <DType D>
  static void sstore(void* base, int64_t i, float v) {
    if constexpr (D == DType::kF32) static_cast<float*>(base)[i] = v;
    else if constexpr (D == DType::kF16) static_cast<uint16_t*>(base)[i] = float_to_fp16(v);
    else static_cast<uint16_t*>(base)[i] = float_to_bf16(v);
  }
  static size_t elem_size(DType d) { return d == DType::kF32 ? 4 : 2; }
  static const void* row_ptr(const ConstMatrix& m, int64_t r) {
    return static_cast<const char*>(m.data) + r * m.ld * int64_t(elem_size(m.dtype));
  }
  static void* row_ptr(const MutMatrix& m, int64_t r) {
    return static_cast<char*>(m.data) + r * m.ld * int64_t(elem_size(m.dtype));
  }

  // ---- spans: [k0, k1) of one row with one granule's parameters ----
  // Statistics a granule needs, by format: symmetric float formats and per-token rules
  // use |x| max only; INT (the sym rule looks at the sign of the larger side) uses max and
  // min; MX uses |x| max with NaN counted as +Inf (a NaN block gets the NaN scale). NaN is
  // ignored otherwise (x86 max keeps the second operand when the first is NaN).
  // Lane-wise partial statistics over the whole vectors of [a, b): pmax holds max (or
  // |x| max), pmin min (kMinMax only).
  template <DType D>
  __attribute__((always_inline)) static void partial_stats(const void* row, int64_t a, int64_t b, StatKind kind,
                                                           F& pmax, F& pmin) {
    const F inf = V::set1(std::numeric_limits<float>::infinity());
    if (kind == StatKind::kMinMax) {
      pmax = V::set1(-std::numeric_limits<float>::infinity());
      pmin = inf;
      for (int64_t k = a; k + L <= b; k += L) {
        F x = vload<D>(row, k);
        pmax = V::max(x, pmax);
        pmin = V::min(x, pmin);
      }
      return;
    }
    pmax = V::set1(0.0f);
    for (int64_t k = a; k + L <= b; k += L) {
      F x = V::abs(vload<D>(row, k));
      if (kind == StatKind::kAbsMaxNanInf) x = V::select(V::isnan(x), inf, x);
      pmax = V::max(x, pmax);
    }
  }

  template <DType D>
  __attribute__((always_inline)) static GranuleStats stats_span(const void* row, int64_t k0, int64_t k1, StatKind kind) {
    F pmax, pmin;
    partial_stats<D>(row, k0, k1, kind, pmax, pmin);
    const int64_t tail = k0 + (k1 - k0) / L * L;
    if (kind == StatKind::kMinMax) {
      GranuleStats st{V::reduce_max(pmax), V::reduce_min(pmin), false};
      for (int64_t k = tail; k < k1; ++k) {
        float x = sload<D>(row, k);
        st.max_value = x > st.max_value ? x : st.max_value;
        st.min_value = x < st.min_value ? x : st.min_value;
      }
      return st;
    }
    float amax = V::reduce_max(pmax);
    for (int64_t k = tail; k < k1; ++k) {
      float v = std::fabs(sload<D>(row, k));
      if (kind == StatKind::kAbsMaxNanInf && v != v) v = std::numeric_limits<float>::infinity();
      amax = v > amax ? v : amax;
    }
    return {amax, 0.0f, false};
  }

  // Statistics of L consecutive whole groups of one row at once: per-group partial
  // vectors, then one transposed reduction instead of L horizontal ones.
  template <DType D>
  static void batch_stats(const void* row, int64_t k0, int64_t glen, StatKind kind, float* mx, float* mn) {
    F pmax[L], pmin[L];
    for (int j = 0; j < L; ++j) partial_stats<D>(row, k0 + j * glen, k0 + (j + 1) * glen, kind, pmax[j], pmin[j]);
    V::store(mx, V::reduce_batch_max(pmax));
    if (kind == StatKind::kMinMax) V::store(mn, V::reduce_batch_min(pmin));
  }

  template <class C, DType Din, DType Dout>
  static void qdq_span(const void* src, void* dst, int64_t k0, int64_t k1, const Granule<V>& g) {
    int64_t k = k0;
    for (; k + L <= k1; k += L) vstore<Dout>(dst, k, C::qdq(vload<Din>(src, k), g));
    if (k < k1) {
      float tmp[L] = {};
      for (int64_t i = k; i < k1; ++i) tmp[i - k] = sload<Din>(src, i);
      V::store(tmp, C::qdq(V::load(tmp), g));
      for (int64_t i = k; i < k1; ++i) sstore<Dout>(dst, i, tmp[i - k]);
    }
  }

  template <class C, DType Din>
  static void encode_span(const void* src, uint8_t* codes, int64_t k0, int64_t k1, const Granule<V>& g) {
    int64_t k = k0;
    for (; k + L <= k1; k += L) V::store_u8(codes + k, C::encode(vload<Din>(src, k), g));
    if (k < k1) {
      float tmp[L] = {};
      uint8_t out[L];
      for (int64_t i = k; i < k1; ++i) tmp[i - k] = sload<Din>(src, i);
      V::store_u8(out, C::encode(V::load(tmp), g));
      std::memcpy(codes + k, out, size_t(k1 - k));
    }
  }

  template <class C, DType Dout>
  static void decode_span(const uint8_t* codes, void* dst, int64_t k0, int64_t k1, const Granule<V>& g) {
    int64_t k = k0;
    for (; k + L <= k1; k += L) vstore<Dout>(dst, k, C::decode(V::load_u8(codes + k), g));
    if (k < k1) {
      uint8_t in[L] = {};
      float tmp[L];
      std::memcpy(in, codes + k, size_t(k1 - k));
      V::store(tmp, C::decode(V::load_u8(in), g));
      for (int64_t i = k; i < k1; ++i) sstore<Dout>(dst, i, tmp[i - k]);
    }
  }

  // ---- whole matrices ----
  static int64_t granule_len(const QuantSpec& spec, int64_t cols) {
    if (format_info(spec.format).is_mx()) return kMxBlock;
    return spec.granularity == Granularity::kGroup ? spec.group_size : cols;
  }
  static bool parallel(int64_t rows, int64_t cols) { return rows > 1 && rows * cols >= (1 << 15); }

  // Everything about a call that does not change from granule to granule.
  struct Call {
    QuantSpec spec;
    GranuleRule rule;
    const float* lut;
    float lo, hi;  // INT code range
    int64_t glen, groups;
    bool tensor;  // one scale for the whole tensor
    int sc_max;   // K-quant scale grid: its largest integer (0: none)
    Call(const QuantSpec& s, int64_t cols)
        : spec(s), rule(make_granule_rule(s)), lut(decode_lut(s.format)),
          lo(-float(1 << (rule.bits > 0 ? rule.bits - 1 : 0))), hi(-lo - 1.0f), glen(granule_len(s, cols)),
          groups(groups_per_row(s, cols)),
          tensor(s.granularity == Granularity::kTensor && !format_info(s.format).is_mx()),
          sc_max(s.superblock_scales ? format_info(s.format).superblock_sc_max : 0) {}
    int64_t index(int64_t r, int64_t g) const { return tensor ? 0 : r * groups + g; }
    Granule<V> granule(const GranuleParams& p) const {
      return {V::set1(p.scale), V::set1(float(p.offset)), lut, V::set1(lo), V::set1(hi)};
    }
    void store(ScaleView sv, int64_t idx, const GranuleParams& p) const {
      if (rule.is_mx) {
        if (sv.e8m0) sv.e8m0[idx] = p.e8m0;
        return;
      }
      if (sv.scale) sv.scale[idx] = p.scale;
      if (sv.offset) sv.offset[idx] = p.offset;
    }
    GranuleParams load(ScaleView sv, int64_t idx) const {
      if (rule.is_mx) {
        uint8_t b = sv.e8m0 ? sv.e8m0[idx] : 127;
        return {e8m0_value(b), 0, b};
      }
      return {sv.scale ? sv.scale[idx] : 1.0f, sv.offset ? sv.offset[idx] : 0, 0};
    }
  };

  // Parameters of every granule of one row (not for kTensor).
  template <DType D>
  static void row_params(const void* row, int64_t cols, const Call& c, GranuleParams* params) {
    int64_t g = 0;
    if (L > 1 && c.glen % L == 0) {
      const int64_t whole = cols / c.glen;
      float mx[L], mn[L];
      for (int j = 0; j < L; ++j) mn[j] = 0.0f;
      for (; g + L <= whole; g += L) {
        batch_stats<D>(row, g * c.glen, c.glen, c.rule.stat, mx, mn);
        for (int j = 0; j < L; ++j) params[g + j] = rule_params(c.rule, {mx[j], mn[j], false});
      }
    }
    for (; g < c.groups; ++g) {
      const int64_t k0 = g * c.glen, k1 = min64(cols, k0 + c.glen);
      params[g] = rule_params(c.rule, stats_span<D>(row, k0, k1, c.rule.stat));
    }
    if (c.sc_max) superblock_scales(params, c.groups, c.sc_max);
  }

  static GranuleParams tensor_params(const ConstMatrix& x, const Call& c) {
    float mx = -std::numeric_limits<float>::infinity(), mn = std::numeric_limits<float>::infinity();
    with_dtype(x.dtype, [&](auto d) {
      constexpr DType D = decltype(d)::value;
#pragma omp parallel for schedule(static) reduction(max : mx) reduction(min : mn) if (parallel(x.rows, x.cols))
      for (int64_t r = 0; r < x.rows; ++r) {
        GranuleStats st = stats_span<D>(row_ptr(x, r), 0, x.cols, c.rule.stat);
        mx = maxf(mx, st.max_value);
        mn = minf(mn, st.min_value);
      }
    });
    return rule_params(c.rule, {mx, mn, false});
  }

  static void compute_scales(const ConstMatrix& x, const QuantSpec& spec, ScaleView sv) {
    const Call c(spec, x.cols);
    if (c.tensor) {
      c.store(sv, 0, tensor_params(x, c));
      return;
    }
    with_dtype(x.dtype, [&](auto d) {
      constexpr DType D = decltype(d)::value;
      omp_region(parallel(x.rows, x.cols), [&] {
        Scratch scratch(int64_t(sizeof(GranuleParams)) * c.groups);
        GranuleParams* params = reinterpret_cast<GranuleParams*>(scratch.p);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < x.rows; ++r) {
          row_params<D>(row_ptr(x, r), x.cols, c, params);
          for (int64_t g = 0; g < c.groups; ++g) c.store(sv, r * c.groups + g, params[g]);
        }
      });
    });
  }

  // QDQ of every row; `dynamic` computes each row's parameters from the row itself, in
  // two phases per row (all granule parameters, then the QDQ): the per-granule chains
  // statistics -> scale -> QDQ are then independent and overlap in the CPU.
  static void qdq_rows(const ConstMatrix& x, const Call& c, ScaleView sv, const MutMatrix& out, bool dynamic) {
    with_codec<V>(c.spec, [&](auto codec) {
      using C = typename decltype(codec)::type;
      with_dtype(x.dtype, [&](auto din) {
        constexpr DType Din = decltype(din)::value;
        with_dtype(out.dtype, [&](auto dout) {
          constexpr DType Dout = decltype(dout)::value;
          omp_region(parallel(x.rows, x.cols), [&] {
            Scratch scratch(dynamic ? int64_t(sizeof(GranuleParams)) * c.groups : 0);
            GranuleParams* params = reinterpret_cast<GranuleParams*>(scratch.p);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < x.rows; ++r) {
              const void* src = row_ptr(x, r);
              void* dst = row_ptr(out, r);
              if (dynamic) {
                row_params<Din>(src, x.cols, c, params);
                for (int64_t g = 0; g < c.groups; ++g) c.store(sv, c.index(r, g), params[g]);
              }
              // The statistics pass of the next row would wait on memory; pull that row
              // in while this one is being quantized.
              const char* next = dynamic && r + 1 < x.rows ? static_cast<const char*>(row_ptr(x, r + 1)) : nullptr;
              const int64_t es = int64_t(elem_size(x.dtype));
              for (int64_t g = 0; g < c.groups; ++g) {
                const int64_t k0 = g * c.glen, k1 = min64(x.cols, k0 + c.glen);
                const GranuleParams p = dynamic ? params[g] : c.load(sv, c.index(r, g));
                qdq_span<C, Din, Dout>(src, dst, k0, k1, c.granule(p));
                if (next)
                  for (int64_t b = k0 * es; b < k1 * es; b += 64) __builtin_prefetch(next + b);
              }
            }
          });
        });
      });
    });
  }

  static void fake_quant(const ConstMatrix& x, const QuantSpec& spec, ScaleView sv, const MutMatrix& out) {
    qdq_rows(x, Call(spec, x.cols), sv, out, false);
  }

  static void fake_quant_dynamic(const ConstMatrix& x, const QuantSpec& spec, const MutMatrix& out, ScaleView sv) {
    const Call c(spec, x.cols);
    if (c.tensor) {
      GranuleParams p = tensor_params(x, c);
      float s = p.scale;
      int32_t o = p.offset;
      c.store(sv, 0, p);
      qdq_rows(x, c, ScaleView{&s, &o, nullptr}, out, false);
      return;
    }
    qdq_rows(x, c, sv, out, true);
  }

  static void pack(const ConstMatrix& x, const QuantSpec& spec, ScaleView sv, uint8_t* out, int64_t out_ld,
                   bool nibbles) {
    const Call c(spec, x.cols);
    const int64_t glen = c.glen, groups = c.groups;
    const bool four_bit = format_info(spec.format).bits == 4 && nibbles;
    const int64_t row_bytes = nibbles ? packed_row_bytes(spec, x.cols) : x.cols;
    with_codec<V>(spec, [&](auto codec) {
      using C = typename decltype(codec)::type;
      with_dtype(x.dtype, [&](auto din) {
        constexpr DType Din = decltype(din)::value;
        omp_region(parallel(x.rows, x.cols), [&] {
          Scratch buf(groups * glen + L);
#pragma omp for schedule(static)
          for (int64_t r = 0; r < x.rows; ++r) {
            const void* src = row_ptr(x, r);
            uint8_t* dst = out + r * out_ld;
            uint8_t* codes = four_bit ? buf.p : dst;
            for (int64_t g = 0; g < groups; ++g) {
              const int64_t k0 = g * glen, k1 = min64(x.cols, k0 + glen);
              encode_span<C, Din>(src, codes, k0, k1, c.granule(c.load(sv, c.index(r, g))));
            }
            if (four_bit) {
              std::memset(buf.p + x.cols, 0, size_t(groups * glen + L - x.cols));
              pack_nibbles(buf.p, dst, row_bytes);
            } else if (row_bytes > x.cols) {
              std::memset(dst + x.cols, 0, size_t(row_bytes - x.cols));
            }
          }
        });
      });
    });
  }

  static void unpack(const uint8_t* codes, int64_t codes_ld, const QuantSpec& spec, ScaleView sv,
                     const MutMatrix& out, bool nibbles) {
    const Call c(spec, out.cols);
    const int64_t glen = c.glen, groups = c.groups;
    const bool four_bit = format_info(spec.format).bits == 4 && nibbles;
    with_codec<V>(spec, [&](auto codec) {
      using C = typename decltype(codec)::type;
      with_dtype(out.dtype, [&](auto dout) {
        constexpr DType Dout = decltype(dout)::value;
        omp_region(parallel(out.rows, out.cols), [&] {
          Scratch buf(2 * ((out.cols + 1) / 2) + L);
#pragma omp for schedule(static)
          for (int64_t r = 0; r < out.rows; ++r) {
            const uint8_t* row = codes + r * codes_ld;
            if (four_bit) {
              unpack_nibbles(row, buf.p, (out.cols + 1) / 2);
              row = buf.p;
            }
            void* dst = row_ptr(out, r);
            for (int64_t g = 0; g < groups; ++g) {
              const int64_t k0 = g * glen, k1 = min64(out.cols, k0 + glen);
              decode_span<C, Dout>(row, dst, k0, k1, c.granule(c.load(sv, c.index(r, g))));
            }
          }
        });
      });
    });
  }

  static IsaTable table() {
    return {V::kName, &compute_scales, &fake_quant, &fake_quant_dynamic, &pack, &unpack};
  }
};

}  // namespace driver
}  // namespace
}  // namespace lowbit
