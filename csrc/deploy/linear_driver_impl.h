// GEMV and blocked GEMM over packed weights, written once over the vector interface and
// instantiated per instruction set (linear_<isa>.cpp). Internal linkage and no std::
// templates, like kernels/quant_driver_impl.h (whose codecs the generic weight decoder
// reuses): an inline symbol compiled with AVX-512 flags must never be shared with the
// scalar unit.
#pragma once
#include <omp.h>

#include <cstring>
#include <stdexcept>

#include "deploy/conv_patches.h"
#include "deploy/linear_isa_table.h"
#include "deploy/scratch.h"
#include "deploy/weight_decoder.h"
#include "kernels/quant_driver_impl.h"
#include "kernels/omp_region.h"

namespace lowbit {
namespace {
namespace deploy {

using driver::min64;
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <class V, class LK>
struct ConvDirect;  // deploy/conv_direct_impl.h (included at the end)

template <class V>
struct LinearKernels {
  using F = typename V::F;
  using K = driver::Kernels<V>;
  static constexpr int L = V::kLanes;

  // ---- generic weight decoder: the quantization codecs (exactly unpack's values) ----
  static void generic_decode(const WeightDecoder& d, int64_t r0, int64_t r1, int64_t k0, int64_t k1, float* out,
                             int64_t ld, uint8_t* scratch) {
    const PackedWeight& w = *d.w;
    const typename K::Call c(w.spec, w.cols);
    const bool four_bit = format_info(w.spec.format).bits == 4;
    const int64_t kend = min64(k1, w.cols);
    driver::with_codec<V>(w.spec, [&](auto codec) {
      using C = typename decltype(codec)::type;
      for (int64_t r = r0; r < r1; ++r) {
        float* dst = out + (r - r0) * ld;
        const uint8_t* row = w.codes + r * w.row_bytes;
        const uint8_t* codes = row + k0;
        if (four_bit) {  // k0 is even: byte k0 / 2 starts with column k0
          unpack_nibbles(row + k0 / 2, scratch, (kend - k0 + 1) / 2);
          codes = scratch;
        }
        for (int64_t a = k0; a < kend;) {
          const int64_t g = a / c.glen, b = min64(kend, (g + 1) * c.glen);
          K::template decode_span<C, DType::kF32>(codes, dst, a - k0, b - k0, c.granule(c.load(w.scales, c.index(r, g))));
          a = b;
        }
        for (int64_t k = max64(kend, k0); k < k1; ++k) dst[k - k0] = 0.0f;
        finish_row(w, r, dst, max64(0, kend - k0));
      }
    });
  }

  // ---- activations in the decoder's column order, fp32, zero padded ----
  // GEMV layout: xp[m * kpad + p]. GEMM layout: blocks of MB rows, xt[(mb * kpad + p) * MB + i].
  // dst[pos[k] * stride] = x[m, k] for k < cols, 0 up to kpad (pos: decoder order, or null).
  // Returns whether every value is finite and below 2^64 in magnitude (see dot_rows_huge_x).
  static bool gather_x(const ConstMatrix& x, int64_t m, const int32_t* pos, int64_t kpad, float* dst, int64_t stride) {
    const void* row = K::row_ptr(x, m);
    float amax = 0.0f;  // NaN-aware: a NaN makes it NaN
    driver::with_dtype(x.dtype, [&](auto dt) {
      constexpr DType D = decltype(dt)::value;
      for (int64_t k = 0; k < x.cols; ++k) {
        const float v = K::template sload<D>(row, k);
        amax = std::fabs(v) > amax || v != v ? std::fabs(v) : amax;
        dst[(pos ? pos[k] : k) * stride] = v;
      }
      for (int64_t k = x.cols; k < kpad; ++k) dst[(pos ? pos[k] : k) * stride] = 0.0f;
    });
    return amax < 18446744073709551616.0f;  // 2^64
  }
  // Column positions in a decoder order (null for the natural order). A thread keeps them
  // from call to call and recomputes them only when the order or the width changes (a
  // model's layers alternate between a few widths; the table costs an O(K) pass).
  struct ColumnPositions {
    GrowBuffer<int32_t> buf;
    ColumnOrder order = ColumnOrder::kNatural;
    int64_t cols = -1, kpad = -1;
    const int32_t* get(ColumnOrder o, int64_t c, int64_t kp) {
      if (o == ColumnOrder::kNatural) return nullptr;
      if (o != order || c != cols || kp != kpad) {
        int32_t* pos = buf.get(kp);
        for (int64_t k = 0; k < kp; ++k) pos[k] = int32_t(column_position(k, o, c));
        order = o, cols = c, kpad = kp;
      }
      return buf.p;
    }
  };

  // ---- GEMV: up to kGemvRows activation rows, each weight row read once ----
  static constexpr int kGemvRows = 8;
  static constexpr int64_t kGemvSpan = 4096;  // columns decoded at a time (16 KiB, L1)
  static constexpr int64_t kGemvBlockRows = 64;  // weight rows per call of a fused decoder (at most)

  // Results kept transposed into y: y[m, n] = dots[(n - n0) * ld + m] + bias[n] for m < M,
  // n in [n0, n1) (y's dtype chosen once, not per element). The GEMV's and the GEMM's.
  static void store_dots(const MutMatrix& y, int64_t M, int64_t ld, int64_t n0, int64_t n1, const float* dots,
                         const float* bias) {
    driver::with_dtype(y.dtype, [&](auto dt) {
      constexpr DType D = decltype(dt)::value;
      for (int64_t m = 0; m < M; ++m) {
        char* row = static_cast<char*>(y.data) + m * y.ld * dtype_bytes(D);
        for (int64_t n = n0; n < n1; ++n) store_element(row, D, n, dots[(n - n0) * ld + m] + (bias ? bias[n] : 0.0f));
      }
    });
  }

  template <int MR>
  static void gemv_rows(const ConstMatrix& x, const WeightDecoder& d, const float* bias, const MutMatrix& y) {
    const PackedWeight& w = *d.w;
    const int64_t N = w.rows, kpad = round_up(w.cols, kChunk);
    thread_local GrowBuffer<float> xs;
    thread_local ColumnPositions positions;
    float* xp = xs.get(MR * kpad);
    const bool fused = d.dot_rows && x.rows <= d.dot_rows_max;
    const int32_t* pos = positions.get(fused ? d.dot_order : d.order, w.cols, kpad);
    const int64_t M = x.rows;  // <= MR; the rows beyond it are zeros
    bool bounded = true;
    for (int m = 0; m < MR; ++m) {
      if (m < M) bounded &= gather_x(x, m, pos, kpad, xp + m * kpad, 1);
      else for (int64_t k = 0; k < kpad; ++k) xp[m * kpad + k] = 0.0f;
    }
    if (fused) {  // fused decode + multiply, in column spans whose activations stay in L1
      const auto dot_rows = bounded || !d.dot_rows_huge_x ? d.dot_rows : d.dot_rows_huge_x;
      // Up to 64 rows per call: each call sets up its decoder (a few dozen ns), which 16-row
      // blocks repeated 11 times for a 172-row layer; in parallel, at least 4 blocks per thread.
      const bool parallel = N * kpad >= (1 << 16);
      const int64_t rows = parallel ? min64(kGemvBlockRows, round_up((N + 4 * omp_get_max_threads() - 1) /
                                                                  (4 * omp_get_max_threads()), 16))
                                    : kGemvBlockRows;
      const int64_t span = max64(kLaneBlock, (24 * 1024 / (4 * MR)) / kLaneBlock * kLaneBlock);
      omp_region(parallel, [&] {
#pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N; n0 += rows) {
          float dots[kGemvBlockRows * MR] = {};
          const int64_t n1 = min64(N, n0 + rows);
          for (int64_t k0 = 0; k0 < kpad; k0 += span) dot_rows(d, n0, n1, xp, MR, kpad, k0, min64(kpad, k0 + span), dots);
          store_dots(y, M, MR, n0, n1, dots, bias);
        }
      });
      return;
    }
    omp_region(N * kpad >= (1 << 16), [&] {
      driver::Scratch buf_bytes(kGemvSpan * 4 + 64);
      float* buf = reinterpret_cast<float*>(buf_bytes.p);
      driver::Scratch scratch(decode_scratch_bytes(kGemvSpan));
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        F acc[MR][2];
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = V::set1(0.0f);
        for (int64_t k0 = 0; k0 < kpad; k0 += kGemvSpan) {
          const int64_t span = min64(kGemvSpan, kpad - k0);
          d.run(n, n + 1, k0, k0 + span, buf, span, scratch.p);
          for (int64_t k = 0; k < span; k += 2 * L) {  // span is a multiple of 32
            const F w0 = V::load(buf + k), w1 = V::load(buf + k + L);
#pragma GCC unroll 16
            for (int m = 0; m < MR; ++m) {
              acc[m][0] = V::fmadd(w0, V::load(xp + m * kpad + k0 + k), acc[m][0]);
              acc[m][1] = V::fmadd(w1, V::load(xp + m * kpad + k0 + k + L), acc[m][1]);
            }
          }
        }
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m)  // constant indices keep acc in registers
          if (m < M) store_at(y, m, n, V::reduce_add(V::add(acc[m][0], acc[m][1])) + (bias ? bias[n] : 0.0f));
      }
    });
  }

  static void gemv(const ConstMatrix& x, const WeightDecoder& d, const float* bias, const MutMatrix& y) {
    with_gemv_rows(x.rows, [&](auto mr) { gemv_rows<decltype(mr)::value>(x, d, bias, y); });
  }

  // ---- blocked GEMM ----
  // Register tile: TN weight rows (broadcast) x MV vectors of activation rows.
  static constexpr int64_t kBlockK = 256;  // columns per panel (the x block, 256 x 32 fp32, stays in L1)
  static constexpr int64_t kBlockN = 48;   // weight rows per panel: 48 x 256 fp32 = 48 KiB (L2)

  // The register tile of every float GEMM and direct convolution: R x MV vectors of
  // accumulators, loaded from c (rows ldc floats apart) or, when `first`, zero (or the MV
  // vectors at `init` in every row), then
  //   acc[i][v] += scalar(j, i) * vec[v]  for j < count, vecs(j, vec) loading vec[0..MV),
  // and stored back. Fully unrolled: the accumulators live in registers.
  template <int R, int MV, class Vecs, class Scalar>
  __attribute__((always_inline)) static inline void fma_tile(float* c, int64_t ldc, bool first, int64_t count,
                                                             Vecs&& vecs, Scalar&& scalar,
                                                             const float* init = nullptr) {
    F acc[R][MV];
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 32
      for (int v = 0; v < MV; ++v)
        acc[i][v] = !first ? V::load(c + i * ldc + v * L) : init ? V::load(init + v * L) : V::set1(0.0f);
    for (int64_t j = 0; j < count; ++j) {
      F a[MV];
      vecs(j, a);
#pragma GCC unroll 32
      for (int i = 0; i < R; ++i) {
        const F b = V::set1(scalar(j, i));
#pragma GCC unroll 32
        for (int v = 0; v < MV; ++v) acc[i][v] = V::fmadd(b, a[v], acc[i][v]);
      }
    }
#pragma GCC unroll 32
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 32
      for (int v = 0; v < MV; ++v) V::store(c + i * ldc + v * L, acc[i][v]);
  }

  // GEMM tile: TN weight rows (broadcast) x MV vectors of packed activation rows. The
  // weight rows are kBlockK floats apart whatever kc is: a compile-time stride turns the TN
  // broadcasts into constant displacements from one pointer, where a run-time one needed
  // TN index registers and spilled (the register tile ran 15% slower).
  template <int TN, int MV>
  static void micro(const float* wd, const float* xt, int64_t kc, float* c, int64_t ldc, bool first) {
    fma_tile<TN, MV>(
        c, ldc, first, kc,
        [&](int64_t k, F* a) {
#pragma GCC unroll 16
          for (int v = 0; v < MV; ++v)  // the activation block streams from L2: every line of it
            __builtin_prefetch(xt + (k + 8) * MV * L + v * L);
#pragma GCC unroll 16
          for (int v = 0; v < MV; ++v) a[v] = V::load(xt + k * MV * L + v * L);
        },
        [&](int64_t k, int i) { return wd[i * kBlockK + k]; });
  }

  // The GEMM's activations and results: a matrix x -> y (MatrixIO), or a convolution's
  // input patches -> NCHW output (ConvIO, deploy/packed_linear.h's Conv2dArgs).
  //   pack(m, pos, kpad, dst, stride): row m of the activations, column k at dst[pos[k] * stride]
  //   store(ct, ldc, bias): results transposed, ct[n * ldc + m]
  struct MatrixIO {
    const ConstMatrix& x;
    const MutMatrix& y;
    int64_t rows() const { return x.rows; }
    // rows [m0, m0 + mb) (at most MB of them) into dst[pos[k] * MB + t]
    // (in tiles of 16 columns x the block's rows, so that reads and writes stay in L1)
    void pack_block(int64_t m0, int64_t mb, int64_t MB, const int32_t* pos, int64_t kpad, float* dst) const {
      driver::with_dtype(x.dtype, [&](auto dt) {
        constexpr DType D = decltype(dt)::value;
        for (int64_t k0 = 0; k0 < x.cols; k0 += 16) {
          const int64_t k1 = min64(x.cols, k0 + 16);
          for (int64_t t = 0; t < mb; ++t) {
            const void* row = K::row_ptr(x, m0 + t);
            if (pos)
              for (int64_t k = k0; k < k1; ++k) dst[pos[k] * MB + t] = K::template sload<D>(row, k);
            else
              for (int64_t k = k0; k < k1; ++k) dst[k * MB + t] = K::template sload<D>(row, k);
          }
        }
      });
      for (int64_t k = x.cols; k < kpad; ++k)
        for (int64_t t = 0; t < mb; ++t) dst[(pos ? pos[k] : k) * MB + t] = 0.0f;
    }
    // results of rows [m_begin, m_begin + M): ct[n * ldc + (m - m_begin)]
    void store(const float* ct, int64_t ldc, int64_t N, const float* bias, int64_t m_begin, int64_t M) const {
      const int64_t mt = (M + 31) / 32, nt = (N + 31) / 32;
      // 32 x 32 tiles: both sides stay in L1
#pragma omp for schedule(static)
      for (int64_t t = 0; t < mt * nt; ++t) {
        const int64_t m0 = (t / nt) * 32, n0 = (t % nt) * 32;
        const int64_t m1 = min64(M, m0 + 32), n1 = min64(N, n0 + 32);
        const MutMatrix rows{static_cast<char*>(y.data) + (m_begin + m0) * y.ld * dtype_bytes(y.dtype), y.dtype,
                             m1 - m0, y.cols, y.ld};
        store_dots(rows, m1 - m0, ldc, n0, n1, ct + n0 * ldc + m0, bias);
      }
    }
  };

  struct ConvIO {
    const Conv2dArgs& a;
    int64_t c0, o0;  // this group's first input and output channel
    int64_t rows() const { return a.n * a.ho * a.wo; }
    // Patches of rows [m0, m0 + mb): for each column (channel, ky, kx), the mb values.
    template <DType D>
    void pack_typed(int64_t m0, int64_t mb, int64_t MB, const int32_t* pos, int64_t kpad, float* dst) const {
      const int64_t plane = a.h * a.w;
      const PatchRows pr(a, c0, m0, mb);
      const char* src = static_cast<const char*>(a.x);
      int64_t k = 0;
      for (int64_t c = 0; c < a.cg; ++c)
        for (int64_t i = 0; i < a.kh; ++i)
          for (int64_t j = 0; j < a.kw; ++j, ++k) {
            float* out = dst + (pos ? pos[k] : k) * MB;
            const int64_t dyi = i * a.dy, dxj = j * a.dx, cp = c * plane;
            if (a.sx == 1) {  // rows of one output line read consecutive inputs: copy runs
              for (int64_t r = 0; r < pr.runs; ++r) {
                int64_t t = pr.run_at[r];
                const int64_t e = pr.run_at[r + 1];
                const int64_t iy = pr.iy0[t] + dyi;
                if (uint64_t(iy) >= uint64_t(a.h)) {
                  for (; t < e; ++t) out[t] = 0.0f;
                  continue;
                }
                int64_t lo, hi;
                pr.inside(r, dxj, a.w, lo, hi);
                for (; t < lo; ++t) out[t] = 0.0f;
                const int64_t first = pr.base[t] + cp + iy * a.w + pr.ix0[t] + dxj - t;  // input index of row t
                for (; t + L <= hi; t += L) K::template vstore<DType::kF32>(out, t, K::template vload<D>(src, first + t));
                for (; t < hi; ++t) out[t] = K::template sload<D>(src, first + t);
                for (; t < e; ++t) out[t] = 0.0f;
              }
              continue;
            }
            for (int64_t t = 0; t < mb; ++t) {
              const int64_t iy = pr.iy0[t] + dyi, ix = pr.ix0[t] + dxj;
              out[t] = (uint64_t(iy) < uint64_t(a.h) && uint64_t(ix) < uint64_t(a.w))
                           ? K::template sload<D>(src, pr.base[t] + cp + iy * a.w + ix) : 0.0f;
            }
            for (int64_t t = mb; t < MB; ++t) out[t] = 0.0f;
          }
      for (; k < kpad; ++k)
        for (int64_t t = 0; t < MB; ++t) dst[(pos ? pos[k] : k) * MB + t] = 0.0f;
    }
    void pack_block(int64_t m0, int64_t mb, int64_t MB, const int32_t* pos, int64_t kpad, float* dst) const {
      driver::with_dtype(a.dtype, [&](auto dt) { pack_typed<decltype(dt)::value>(m0, mb, MB, pos, kpad, dst); });
    }
    void store(const float* ct, int64_t ldc, int64_t N, const float* bias, int64_t m_begin, int64_t M) const {
      const int64_t L = a.ho * a.wo, es = dtype_bytes(a.dtype);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {  // per channel: runs of one image are contiguous outputs
        const float b = bias ? bias[n] : 0.0f;
        for (int64_t j = 0; j < M;) {
          const int64_t m = m_begin + j, img = m / L, p = m % L, len = min64(M - j, L - p);
          char* run = static_cast<char*>(a.y) + ((img * a.cout + o0 + n) * L + p) * es;
          for (int64_t q = 0; q < len; ++q) store_element(run, a.dtype, q, ct[n * ldc + j + q] + b);
          j += len;
        }
      }
    }
  };

  // Activation rows per pass: bounds the packed activations and results (a few MB)
  // whatever the batch; each pass decodes the weight again, which is cheap next to the
  // products of this many rows.
  static constexpr int64_t kRowsPerPass = 4096;

  template <int TN, int MV, class IO>
  static void gemm_mv(const IO& io, const WeightDecoder& d, const float* bias) {
    constexpr int64_t MB = MV * L;
    const PackedWeight& w = *d.w;
    const int64_t M_all = io.rows(), N = w.rows, kpad = round_up(w.cols, kChunk);
    const int64_t nblocks = (N + kBlockN - 1) / kBlockN, npad = nblocks * kBlockN;
    const int64_t pass_rows = min64(round_up(M_all, MB), round_up(kRowsPerPass, MB));
    thread_local GrowBuffer<float> xs, cs;
    thread_local ColumnPositions positions;
    float* xt = xs.get(pass_rows * kpad);
    float* ct = cs.get(npad * pass_rows);  // C transposed: [n][m]
    const int32_t* pos = positions.get(d.order, w.cols, kpad);
#pragma omp parallel
    {
      driver::Scratch panel_bytes(kBlockN * kBlockK * 4 + 64);
      float* panel = reinterpret_cast<float*>(panel_bytes.p);
      driver::Scratch scratch(decode_scratch_bytes(kBlockK));
      for (int64_t m_begin = 0; m_begin < M_all; m_begin += pass_rows) {
        const int64_t M = min64(pass_rows, M_all - m_begin);
        const int64_t mblocks = (M + MB - 1) / MB, mpad = mblocks * MB;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < mblocks; ++b) {  // activations in blocks of MB rows, zero padded
          float* dst = xt + b * kpad * MB;
          const int64_t mb = min64(MB, M - b * MB);
          if (mb < MB)
            for (int64_t i = 0; i < kpad * MB; ++i) dst[i] = 0.0f;
          io.pack_block(m_begin + b * MB, mb, MB, pos, kpad, dst);
        }
        // Work items: (weight panel, part of the activation blocks). Few panels (a
        // convolution's few output channels) are shared out over the activation rows.
        const int64_t mparts = min64(mblocks, max64(1, (4 * omp_get_num_threads() + nblocks - 1) / nblocks));
        for (int64_t k0 = 0; k0 < kpad; k0 += kBlockK) {
          const int64_t kc = min64(kBlockK, kpad - k0);
          // dynamic: on a shared machine one core often runs slower for a while, and a
          // static split made the other wait for it at every k block (medians of a 2-thread
          // 512 x 4096 x 4096 product: 84-95 ms against 96-99 ms, same run)
#pragma omp for schedule(dynamic)
          for (int64_t item = 0; item < nblocks * mparts; ++item) {
            const int64_t nb = item / mparts, part = item % mparts;
            const int64_t mb0 = part * mblocks / mparts, mb1 = (part + 1) * mblocks / mparts;
            const int64_t n0 = nb * kBlockN, n1 = min64(N, n0 + kBlockN);
            const int64_t rows = round_up(n1 - n0, TN);  // whole register tiles only
            d.run(n0, n1, k0, k0 + kc, panel, kBlockK, scratch.p);
            for (int64_t i = n1 - n0; i < rows; ++i)
              for (int64_t k = 0; k < kc; ++k) panel[i * kBlockK + k] = 0.0f;
            for (int64_t mb = mb0; mb < mb1; ++mb)
              for (int64_t i = 0; i < rows; i += TN)
                micro<TN, MV>(panel + i * kBlockK, xt + (mb * kpad + k0) * MB, kc, ct + (n0 + i) * mpad + mb * MB,
                              mpad, k0 == 0);
          }
        }
        io.store(ct, mpad, N, bias, m_begin, M);
      }
    }
  }

  template <class IO>
  static void gemm(const IO& io, const WeightDecoder& d, const float* bias) {
    const int64_t m = io.rows();
    if (L == 1) return gemm_mv<4, 1>(io, d, bias);
    if (L == 8) return m <= L ? gemm_mv<12, 1>(io, d, bias) : gemm_mv<6, 2>(io, d, bias);  // 12 accumulators of 16
    if (m <= L) return gemm_mv<8, 1>(io, d, bias);
    if (m <= 2 * L) return gemm_mv<8, 2>(io, d, bias);
    // 6 x 4 vectors: 10 loads per 24 FMAs, against 14 for 12 x 2 (5-10% faster at n = 512,
    // 4096 x 4096, one thread), but in blocks of 64 rows: taken unless the padding costs more
    if (round_up(m, 4 * L) * 12 <= round_up(m, 2 * L) * 13) return gemm_mv<6, 4>(io, d, bias);
    return gemm_mv<12, 2>(io, d, bias);
  }

  static void linear(const ConstMatrix& x, const WeightDecoder& d, const float* bias, const MutMatrix& y) {
    if (x.rows <= kGemvRows) return gemv(x, d, bias, y);
    if (d.dot_rows && x.rows <= d.dot_rows_max) {  // GEMVs in passes of kGemvRows rows
      for (int64_t r = 0; r < x.rows; r += kGemvRows) {
        const int64_t n = min64(kGemvRows, x.rows - r);
        gemv(ConstMatrix{K::row_ptr(x, r), x.dtype, n, x.cols, x.ld}, d, bias,
             MutMatrix{K::row_ptr(y, r), y.dtype, n, y.cols, y.ld});
      }
      return;
    }
    gemm(MatrixIO{x, y}, d, bias);
  }

  // One convolution group: input channels [c0, c0 + cg), weight rows = its output channels.
  // (direct from padded input planes where a tiling suits the layer, else packed patches)
  static void conv2d(const Conv2dArgs& a, int64_t group, const WeightDecoder& d, const float* bias) {
    if (ConvDirect<V, LinearKernels>::conv2d(a, group, d, bias)) return;
    // (the patch packer reads x as it is: conv2d_packed quantizes x first unless direct() holds)
    if (a.act) throw std::logic_error("conv2d: activation QDQ requested from the patch kernel");
    gemm(ConvIO{a, group * a.cg, group * (a.cout / a.groups)}, d, bias);
  }

  static WeightDecoder generic_decoder(const PackedWeight& w) {
    WeightDecoder d;
    d.w = &w;
    d.decode = &generic_decode;
    return d;
  }
  static LinearIsaTable table(WeightDecoder (*decoder)(const PackedWeight&) = &generic_decoder) {
    return {V::kName, decoder, &linear, &conv2d, &ConvDirect<V, LinearKernels>::channels_tiling,
            &ConvDirect<V, LinearKernels>::direct};
  }
};

}  // namespace deploy
}  // namespace
}  // namespace lowbit

#include "deploy/conv_direct_impl.h"
