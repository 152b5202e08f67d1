// Direct convolution over packed weights: the GEMM's register tile reads its activations
// straight from a zero-padded copy of the input instead of packed patches.
//
// The input of a pass of images is copied once into "phase planes": for stride (sy, sx),
// plane (fy, fx, c) holds padded pixels (r * sy + fy, q * sx + fx) at [r][q], R x C of them.
// Output pixel (oy, ox) reads kernel tap (ky, kx) at phase ((ky dy) % sy, (kx dx) % sx),
// row oy + (ky dy) / sy, column ox + (kx dx) / sx. Numbering the outputs p = oy * C + ox
// over the full plane width C (the columns ox >= wo are computed and dropped), tap k of
// pixel p is plane[off(k) + p]: consecutive pixels are consecutive floats for every tap,
// so a vector of pixels is one unaligned load, with no im2col copy. The planes get a zeroed
// tail, so reads past a plane (only by dropped pixels) stay finite.
//
// A second tiling puts output channels in the vectors and broadcasts pixels: no pixel is
// computed in vain and the planes need no phases, so it is used whenever the channel count
// fills the vectors; with channels-last tensors its planes are [R][C][cg] (input rows
// copied as they are) and its outputs are written as channel runs. The first serves the
// rest when its dropped columns cost little (C <= 1.5 wo); otherwise LinearKernels::conv2d
// packs patches.
// Internal linkage, no std:: templates (compiled into every ISA unit). Included at the end
// of deploy/linear_driver_impl.h, whose helpers it uses.
#pragma once
#include "deploy/linear_driver_impl.h"

namespace lowbit {
namespace {
namespace deploy {

template <class V, class LK>
struct ConvDirect {
  using F = typename V::F;
  static constexpr int L = V::kLanes;

  // Planes of one image: sy x sx phases (or one padded plane, sy = sx = 1, when the tiling
  // does not need consecutive positions to be consecutive floats) x cg channels.
  // With nhwc (channels-last input, one padded plane), an image is [R][C][cg] instead.
  struct Geometry {
    bool nhwc;
    int64_t sy, sx;               // phase strides
    int64_t R, C, plane, image;   // plane rows and columns, floats per plane and per image
    int64_t ext;                  // output positions per image (ho * C)
    Geometry(const Conv2dArgs& a, bool phased)
        : nhwc(a.channels_last && !phased), sy(phased ? a.sy : 1), sx(phased ? a.sx : 1) {
      R = (a.h + 2 * a.py + sy - 1) / sy;
      C = (a.w + 2 * a.px + sx - 1) / sx;
      plane = R * C;
      image = sy * sx * a.cg * plane;
      ext = a.ho * C;
    }
  };

  static bool positions_worthwhile(const Conv2dArgs& a) { return 2 * Geometry(a, true).C <= 3 * a.wo; }
  // Whether conv2d below takes a direct tiling for groups of `rows` output channels
  // (output channels that fill the vectors, or few dropped positions).
  static bool direct(const Conv2dArgs& a, int64_t rows) { return channels_tiling(rows) || positions_worthwhile(a); }

  // Float offset of column k (channel, ky, kx) inside an image's planes.
  static int64_t column_offset(const Conv2dArgs& a, const Geometry& g, int64_t k) {
    const int64_t c = k / (a.kh * a.kw), ky = (k / a.kw) % a.kh, kx = k % a.kw;
    const int64_t ty = ky * a.dy, tx = kx * a.dx;
    if (g.nhwc) return (ty * g.C + tx) * a.cg + c;
    const int64_t phase = (ty % g.sy) * g.sx + tx % g.sx;
    return (phase * a.cg + c) * g.plane + (ty / g.sy) * g.C + tx / g.sx;
  }

  static void zero(float* p, int64_t n) {
    int64_t q = 0;
    for (; q + L <= n; q += L) V::store(p + q, V::set1(0.0f));
    if (q < n) V::store_first(p + q, V::set1(0.0f), int(n - q));
  }

  // Planes of images [img0, img0 + nimg), input channels [c0, c0 + cg): work item t is one
  // (image, phase) pair, whose cg planes are consecutive.
  // Both fills call post(p, n) on each run of real (not padding) values they wrote: the
  // activation QDQ when the convolution quantizes its input (Conv2dArgs::act), else nothing.
  template <DType D, class Post>
  static void fill_planes(const Conv2dArgs& a, const Geometry& g, int64_t c0, int64_t img0, int64_t t, float* buf,
                          const Post& post) {
    const int64_t phase = t % (g.sy * g.sx), img = t / (g.sy * g.sx), fy = phase / g.sx, fx = phase % g.sx;
    float* out = buf + img * g.image + phase * a.cg * g.plane;
    const char* src = static_cast<const char*>(a.x);
    // the columns q whose input column ix = q sx + fx - px lies in [0, w): [q0, q1)
    const int64_t q0 = min64(g.C, a.px > fx ? (a.px - fx + g.sx - 1) / g.sx : 0);
    const int64_t q1 = max64(q0, min64(g.C, (a.w + a.px - fx + g.sx - 1) / g.sx));
    const int64_t n = q1 - q0;
    for (int64_t c = 0; c < a.cg; ++c) {
      const int64_t chan = ((img0 + img) * a.c + c0 + c) * a.h * a.w;
      for (int64_t r = 0; r < g.R; ++r) {
        float* row = out + (c * g.R + r) * g.C;
        const int64_t iy = r * g.sy + fy - a.py;
        if (uint64_t(iy) >= uint64_t(a.h) || n == 0) {
          zero(row, g.C);
          continue;
        }
        zero(row, q0);
        const int64_t first = chan + iy * a.w + q0 * g.sx + fx - a.px;  // input index of column q0
        float* dst = row + q0;
        int64_t q = 0;
        if (g.sx == 1 && D == DType::kF32) {
          const float* in = reinterpret_cast<const float*>(src) + first;
          for (; q + L <= n; q += L) V::store(dst + q, V::load(in + q));
          if (q < n) V::store_first(dst + q, V::load_first(in + q, int(n - q)), int(n - q));
        } else {
          if (g.sx == 1)
            for (; q + L <= n; q += L) LK::K::template vstore<DType::kF32>(dst, q, LK::K::template vload<D>(src, first + q));
          for (; q < n; ++q) dst[q] = LK::K::template sload<D>(src, first + q * g.sx);
        }
        post(dst, n);
        zero(row + q1, g.C - q1);
      }
    }
  }

  // Channels-last input: padded row r of image img (work item t = img * R + r), [C][cg].
  template <DType D, class Post>
  static void fill_nhwc_row(const Conv2dArgs& a, const Geometry& g, int64_t c0, int64_t img0, int64_t t, float* buf,
                            const Post& post) {
    const int64_t img = t / g.R, r = t % g.R, iy = r - a.py, cg = a.cg;
    float* row = buf + img * g.image + r * g.C * cg;
    if (uint64_t(iy) >= uint64_t(a.h)) return zero(row, g.C * cg);
    const int64_t x0 = min64(a.px, g.C), x1 = min64(g.C, a.px + a.w);  // [x0, x1): inside the image
    zero(row, x0 * cg);
    const int64_t first = (((img0 + img) * a.h + iy) * a.w) * a.c + c0;  // input index of (iy, ix = 0, c0)
    if (cg == a.c) {  // one run: the whole image row
      const int64_t n = (x1 - x0) * cg;
      float* dst = row + x0 * cg;
      int64_t q = 0;
      for (; q + L <= n; q += L) LK::K::template vstore<DType::kF32>(dst, q, LK::K::template vload<D>(a.x, first + q));
      for (; q < n; ++q) dst[q] = LK::K::template sload<D>(a.x, first + q);
    } else {
      for (int64_t q = x0; q < x1; ++q)
        for (int64_t c = 0; c < cg; ++c) row[q * cg + c] = LK::K::template sload<D>(a.x, first + (q - x0) * a.c + c);
    }
    post(row + x0 * cg, (x1 - x0) * cg);
    zero(row + x1 * cg, (g.C - x1) * cg);
  }

  static constexpr int64_t kMaxBlockK = 320;  // columns per weight panel (48 x 320 fp32 = 60 KiB, L2)
  // Output positions per pass: few passes (each costs a handful of thread barriers), with
  // planes and results of a few MB.
  static constexpr int64_t kPositionsPerPass = 16384;
  // ... and at most this many bytes of planes and results, so that the planes a pass has
  // just filled are still in the cores' L2 when the tiles read them (a 256-image pass of
  // 16x16 planes was 10 MB; capping passes at 2 MB took the stride-2 CIFAR layers at batch
  // 256 from 0.74-0.89x of oneDNN to 0.87-0.94x, and none slower)
  static constexpr int64_t kPassBytes = 2 << 20;

  // What both tilings share: equal k blocks, the real columns of each block in the
  // decoder's order (kk: position in the block, off: offset in an image's planes; columns
  // past w.cols are left out, so their filler weights never meet the planes), and the
  // planes buffer of one pass of `ipp` images with its zeroed tail.
  struct Plan {
    Geometry g;
    int64_t c0, o0, N, kpad, kBlockK, nkb, ipp, slack;
    const int32_t* kk;
    const int64_t* off;
    const int64_t* start;
    float* buf;
    Plan(const Conv2dArgs& a, int64_t group, const WeightDecoder& d, bool phased, int64_t positions_per_image,
         int64_t tail)
        : g(a, phased) {
      const PackedWeight& w = *d.w;
      c0 = group * a.cg;
      o0 = group * (a.cout / a.groups);
      N = w.rows;
      kpad = round_up(w.cols, kChunk);
      // equal blocks: no short last block costing a full extra pass over the results
      kBlockK = round_up((kpad + kMaxBlockK - 1) / ((kpad + kMaxBlockK - 1) / kMaxBlockK), kChunk);
      nkb = (kpad + kBlockK - 1) / kBlockK;
      const int64_t image_bytes = (g.image + positions_per_image * N) * 4;  // its planes and results
      ipp = max64(1, min64(a.n, min64(kPositionsPerPass / positions_per_image, kPassBytes / image_bytes)));
      slack = round_up(tail + g.plane + g.C, 16);
      thread_local GrowBuffer<int32_t> kks, invs;
      thread_local GrowBuffer<int64_t> offs, starts;
      thread_local GrowBuffer<float> bufs;
      int32_t* kkw = kks.get(w.cols);
      int64_t* offw = offs.get(w.cols);
      int64_t* startw = starts.get(nkb + 1);
      int32_t* inv = invs.get(kpad);  // decoder position -> column (-1: padding)
      for (int64_t p = 0; p < kpad; ++p) inv[p] = -1;
      for (int64_t k = 0; k < w.cols; ++k) inv[column_position(k, d.order, w.cols)] = int32_t(k);
      int64_t count = 0;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        startw[kb] = count;
        for (int64_t p = kb * kBlockK; p < min64(kpad, (kb + 1) * kBlockK); ++p)
          if (inv[p] >= 0) {
            kkw[count] = int32_t(p - kb * kBlockK);
            offw[count++] = column_offset(a, g, inv[p]);
          }
      }
      startw[nkb] = count;
      kk = kkw;
      off = offw;
      start = startw;
      buf = bufs.get(ipp * g.image + slack);
    }
    int64_t k0(int64_t kb) const { return kb * kBlockK; }
    int64_t kc(int64_t kb) const { return min64(kBlockK, kpad - kb * kBlockK); }
    int64_t count(int64_t kb) const { return start[kb + 1] - start[kb]; }
    // Planes of images [img0, img0 + nimg) and zeros after them (inside a parallel region).
    // (with Conv2dArgs::act, the activation QDQ of each copied run, in place: fp32 input
    // only, whose QDQ values are the planes' values, bit for bit what fake_quant gives)
    void fill(const Conv2dArgs& a, int64_t img0, int64_t nimg) const {
      driver::with_dtype(a.dtype, [&](auto dt) {
        constexpr DType D = decltype(dt)::value;
        auto run = [&](const auto& post) {
          if (g.nhwc) {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < nimg * g.R; ++t) fill_nhwc_row<D>(a, g, c0, img0, t, buf, post);
          } else {
#pragma omp for schedule(static)
            for (int64_t t = 0; t < nimg * g.sy * g.sx; ++t) fill_planes<D>(a, g, c0, img0, t, buf, post);
          }
        };
        if constexpr (D == DType::kF32) {
          if (a.act) {
            const ActQuant& q = *a.act;
            driver::with_codec<V>(q.spec, [&](auto codec) {
              using C = typename decltype(codec)::type;
              const auto gr = typename LK::K::Call(q.spec, 1).granule(GranuleParams{q.scale, q.offset, 0});
              run([&](float* p, int64_t n) { LK::K::template qdq_span<C, D, D>(p, p, 0, n, gr); });
            });
            return;
          }
        }
        run([](float*, int64_t) {});
      });
#pragma omp for schedule(static)
      for (int64_t i = 0; i < slack; ++i) buf[nimg * g.image + i] = 0.0f;
    }
  };

  // ---- tiling 1: vectors of MB consecutive output positions x TN output channels ----
  // acc[i][v] += w(i, kk[j]) * x[off[j] + v L] over the j < count columns of this k block.
  template <int TN, int MV>
  static void micro(const float* wd, int64_t ldw, const int32_t* kk, const int64_t* off, int64_t count,
                    const float* x, float* c, int64_t ldc, bool first) {
    LK::template fma_tile<TN, MV>(
        c, ldc, first, count,
        [&](int64_t j, F* xv) {
#pragma GCC unroll 32
          for (int v = 0; v < MV; ++v) xv[v] = V::load(x + off[j] + v * L);
        },
        [&](int64_t j, int i) { return wd[kk[j] + i * ldw]; });
  }

  template <int TN, int MV>
  static void run_positions(const Conv2dArgs& a, int64_t group, const WeightDecoder& d, const float* bias) {
    constexpr int64_t MB = MV * L, kBlockN = LK::kBlockN;
    const int64_t ext = Geometry(a, true).ext, blocks_per_image = (ext + MB - 1) / MB;
    const Plan pl(a, group, d, true, blocks_per_image * MB, MB);
    const Geometry& g = pl.g;
    const int64_t N = pl.N, nblocks = (N + kBlockN - 1) / kBlockN, npad = nblocks * kBlockN;
    thread_local GrowBuffer<float> cs;
    float* ct = cs.get(npad * pl.ipp * blocks_per_image * MB);  // results transposed: [n][position]
#pragma omp parallel
    {
      driver::Scratch panel_bytes(kBlockN * pl.kBlockK * 4 + 64);
      float* panel = reinterpret_cast<float*>(panel_bytes.p);
      driver::Scratch scratch(decode_scratch_bytes(pl.kBlockK));
      for (int64_t img0 = 0; img0 < a.n; img0 += pl.ipp) {
        const int64_t nimg = min64(pl.ipp, a.n - img0);
        pl.fill(a, img0, nimg);
        const int64_t mblocks = nimg * blocks_per_image, mpad = mblocks * MB;
        const int64_t mparts = min64(mblocks, max64(1, (4 * omp_get_num_threads() + nblocks - 1) / nblocks));
        for (int64_t kb = 0; kb < pl.nkb; ++kb) {
          const int64_t k0 = pl.k0(kb), kc = pl.kc(kb);
#pragma omp for schedule(static)
          for (int64_t item = 0; item < nblocks * mparts; ++item) {
            const int64_t nb = item / mparts, part = item % mparts;
            const int64_t mb0 = part * mblocks / mparts, mb1 = (part + 1) * mblocks / mparts;
            const int64_t n0 = nb * kBlockN, n1 = min64(N, n0 + kBlockN);
            const int64_t rows = round_up(n1 - n0, TN);
            d.run(n0, n1, k0, k0 + kc, panel, kc, scratch.p);
            for (int64_t i = (n1 - n0) * kc; i < rows * kc; ++i) panel[i] = 0.0f;
            for (int64_t mb = mb0; mb < mb1; ++mb) {
              const float* x = pl.buf + (mb / blocks_per_image) * g.image + (mb % blocks_per_image) * MB;
              for (int64_t i = 0; i < rows; i += TN)
                micro<TN, MV>(panel + i * kc, kc, pl.kk + pl.start[kb], pl.off + pl.start[kb], pl.count(kb), x,
                              ct + (n0 + i) * mpad + mb * MB, mpad, kb == 0);
            }
          }
        }
        // NCHW output: channel n of image img is ct[n][img * blocks_per_image * MB + oy * C + ox], ox < wo
        driver::with_dtype(a.dtype, [&](auto dt) {
          constexpr DType D = decltype(dt)::value;
          const int64_t out_plane = a.ho * a.wo;
#pragma omp for schedule(static)
          for (int64_t t = 0; t < nimg * N; ++t) {
            const int64_t img = t / N, n = t % N;
            const float b = bias ? bias[n] : 0.0f;
            const F bv = V::set1(b);
            const float* src = ct + n * mpad + img * blocks_per_image * MB;
            char* dst = static_cast<char*>(a.y) + (((img0 + img) * a.cout + pl.o0 + n) * out_plane) * dtype_bytes(D);
            for (int64_t oy = 0; oy < a.ho; ++oy) {
              const float* s = src + oy * g.C;
              const int64_t o = oy * a.wo;
              int64_t ox = 0;
              for (; ox + L <= a.wo; ox += L) LK::K::template vstore<D>(dst, o + ox, V::add(V::load(s + ox), bv));
              for (; ox < a.wo; ++ox) store_element(dst, D, o + ox, s[ox] + b);
            }
          }
        });
      }
    }
  }

  // ---- tiling 2: TP output pixels (broadcast) x vectors of MV L output channels ----
  // No pixel is computed in vain, whatever the image width; the weights are transposed
  // per panel into wt[j][channel].
  template <int TP, int MV>
  static void micro_channels(const float* wt, const int64_t* off, int64_t count, const float* const* px, float* c,
                             int64_t ldc, bool first) {
    constexpr int64_t NB = MV * L;
    LK::template fma_tile<TP, MV>(
        c, ldc, first, count,
        [&](int64_t j, F* wv) {
#pragma GCC unroll 32
          for (int v = 0; v < MV; ++v) wv[v] = V::load(wt + j * NB + v * L);
        },
        [&](int64_t j, int p) { return px[p][off[j]]; });
  }
  // The same for TP consecutive pixels of one output row of channels-last planes, S floats
  // apart (sx * cg, a compile-time constant): each broadcast is a constant displacement from
  // one pointer per column, where TP pixel pointers would not fit the registers. `init`:
  // the first k block's starting values (the bias; null: zeros).
  template <int TP, int MV, int S>
  static void micro_row(const float* wt, const int64_t* off, int64_t count, const float* px0, float* c, int64_t ldc,
                        bool first, const float* init) {
    constexpr int64_t NB = MV * L;
    const float* tap = px0;
    LK::template fma_tile<TP, MV>(
        c, ldc, first, count,
        [&](int64_t j, F* wv) {
#pragma GCC unroll 32
          for (int v = 0; v < MV; ++v) wv[v] = V::load(wt + j * NB + v * L);
          // the column's pointer in a register: base + displacement operands stay
          // micro-fused, where base + index ones are split into two uops
          tap = px0 + off[j];
          asm("" : "+r"(tap));
        },
        [&](int64_t, int p) { return tap[p * S]; }, init);
  }
  // Pixel strides micro_row is compiled for (the 16-, 32-, 64-channel layers at stride 1 and 2)
  static bool row_stride_compiled(int64_t s) { return s == 16 || s == 32 || s == 64 || s == 128; }
  template <int TP, int MV, class... Args>
  static void micro_row_any(int64_t stride, Args... args) {
    switch (stride) {
      case 16: return micro_row<TP, MV, 16>(args...);
      case 32: return micro_row<TP, MV, 32>(args...);
      case 64: return micro_row<TP, MV, 64>(args...);
      default: return micro_row<TP, MV, 128>(args...);
    }
  }

  template <int TP, int MV>
  static void run_channels(const Conv2dArgs& a, int64_t group, const WeightDecoder& d, const float* bias) {
    constexpr int64_t NB = MV * L;
    const int64_t hw = a.ho * a.wo;
    const Plan pl(a, group, d, false, hw, 0);  // one padded plane per channel: pixels need not be consecutive
    const Geometry& g = pl.g;
    const int64_t N = pl.N, nblocks = (N + NB - 1) / NB, npad = nblocks * NB;
    const int64_t pmax = round_up(pl.ipp * hw, TP);
    const bool rows = row_tiles(a, TP);  // every group of TP pixels lies in one output row
    // fp32 channels-last output (whole rows of pixels, no padding pixel): the tiles
    // accumulate in the output itself, starting from the bias
    float* const direct = rows && a.dtype == DType::kF32 ? static_cast<float*>(a.y) + pl.o0 : nullptr;
    thread_local GrowBuffer<float> cs;
    thread_local GrowBuffer<int64_t> pixs;
    float* ct = cs.get(pmax * npad);  // results: [pixel][channel]
    int64_t* pix = pixs.get(pmax);    // each pixel's offset in the planes
#pragma omp parallel
    {
      driver::Scratch panel_bytes(NB * pl.kBlockK * 4 + 64), wt_bytes(NB * pl.kBlockK * 4 + 64);
      float* panel = reinterpret_cast<float*>(panel_bytes.p);
      float* wt = reinterpret_cast<float*>(wt_bytes.p);
      driver::Scratch scratch(decode_scratch_bytes(pl.kBlockK));
      for (int64_t img0 = 0; img0 < a.n; img0 += pl.ipp) {
        const int64_t nimg = min64(pl.ipp, a.n - img0), P = nimg * hw, ppad = round_up(P, TP);
        pl.fill(a, img0, nimg);
        const int64_t unit = g.nhwc ? a.cg : 1;  // floats per plane position
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nimg * a.ho; ++t) {  // output row oy of image img
          const int64_t img = t / a.ho, oy = t % a.ho, first = img * g.image + oy * a.sy * g.C * unit;
          for (int64_t ox = 0; ox < a.wo; ++ox) pix[t * a.wo + ox] = first + ox * a.sx * unit;
        }
#pragma omp single
        for (int64_t p = P; p < ppad; ++p) pix[p] = pix[P - 1];  // the last group's extra pixels
        // one part per thread and channel block: each transposes its weight panel once per k block
        const int64_t groups = ppad / TP;
        const int64_t parts = min64(groups, max64(1, (omp_get_num_threads() + nblocks - 1) / nblocks));
        for (int64_t kb = 0; kb < pl.nkb; ++kb) {
          const int64_t k0 = pl.k0(kb), kc = pl.kc(kb), cnt = pl.count(kb);
          const int32_t* kk = pl.kk + pl.start[kb];
#pragma omp for schedule(static)
          for (int64_t item = 0; item < nblocks * parts; ++item) {
            const int64_t nb = item / parts, part = item % parts;
            const int64_t g0 = part * groups / parts, g1 = (part + 1) * groups / parts;
            const int64_t n0 = nb * NB, n1 = min64(N, n0 + NB);
            d.run(n0, n1, k0, k0 + kc, panel, kc, scratch.p);
            for (int64_t j = 0; j < cnt; ++j) {
              for (int64_t i = 0; i < n1 - n0; ++i) wt[j * NB + i] = panel[i * kc + kk[j]];
              for (int64_t i = n1 - n0; i < NB; ++i) wt[j * NB + i] = 0.0f;
            }
            for (int64_t gi = g0; gi < g1; ++gi) {
              if (rows) {
                float* c = direct ? direct + (img0 * hw + gi * TP) * a.cout + n0 : ct + gi * TP * npad + n0;
                const float* init = direct && bias ? bias + n0 : nullptr;
                micro_row_any<TP, MV>(a.sx * a.cg, wt, pl.off + pl.start[kb], cnt, pl.buf + pix[gi * TP], c,
                                      direct ? a.cout : npad, kb == 0, init);
                continue;
              }
              const float* px[TP];
#pragma GCC unroll 32
              for (int p = 0; p < TP; ++p) px[p] = pl.buf + pix[gi * TP + p];
              micro_channels<TP, MV>(wt, pl.off + pl.start[kb], cnt, px, ct + gi * TP * npad + n0, npad, kb == 0);
            }
          }
        }
        if (direct) continue;
        if (a.channels_last) {  // NHWC output: each pixel's channels are one run
          driver::with_dtype(a.dtype, [&](auto dt) {
            constexpr DType D = decltype(dt)::value;
#pragma omp for schedule(static)
            for (int64_t p = 0; p < P; ++p) {
              const float* src = ct + p * npad;
              const int64_t o = ((img0 * hw + p) * a.cout + pl.o0);
              int64_t n = 0;
              for (; n + L <= N; n += L)
                LK::K::template vstore<D>(a.y, o + n, V::add(V::load(src + n), bias ? V::load(bias + n) : V::set1(0.0f)));
              for (; n < N; ++n) store_element(a.y, D, o + n, src[n] + (bias ? bias[n] : 0.0f));
            }
          });
          continue;
        }
        // NCHW output from [pixel][channel], in tiles of 64 pixels that stay in L1
        driver::with_dtype(a.dtype, [&](auto dt) {
          constexpr DType D = decltype(dt)::value;
          alignas(64) static const float iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
          const auto stride = V::cvtfi(V::mul(V::load(iota), V::set1(float(npad))));  // lane i: i * npad
          const int64_t tiles = (hw + 63) / 64;
#pragma omp for schedule(static)
          for (int64_t t = 0; t < nimg * tiles; ++t) {
            const int64_t img = t / tiles, q0 = (t % tiles) * 64, q1 = min64(hw, q0 + 64);
            const float* src = ct + img * hw * npad;
            char* dst = static_cast<char*>(a.y) + ((img0 + img) * a.cout + pl.o0) * hw * dtype_bytes(D);
            for (int64_t n = 0; n < N; ++n) {
              const float b = bias ? bias[n] : 0.0f;
              int64_t q = q0;
              for (; q + L <= q1; q += L)  // L pixels of channel n: a gather down the [pixel][channel] rows
                LK::K::template vstore<D>(dst, n * hw + q, V::add(V::gather(src + q * npad + n, stride), V::set1(b)));
              for (; q < q1; ++q) store_element(dst, D, n * hw + q, src[q * npad + n] + b);
            }
          }
        });
      }
    }
  }

  // Runs one group with the tiling that suits it; false when neither does (few output
  // channels and positions that would mostly be dropped): the caller packs patches then.
  // Whether output channels fill the vectors (the channels tiling, which alone reads
  // channels-last input): the caller converts channels-last layers for which it is false.
  static bool channels_tiling(int64_t rows) {
    if constexpr (L == 16) return rows % 16 == 0;
    if constexpr (L == 8) return rows % 8 == 0;
    return false;
  }

  // Whether run_channels<TP, ...> can use micro_row: channels-last planes, whole rows of TP
  // pixels, a compiled pixel stride.
  static bool row_tiles(const Conv2dArgs& a, int64_t tp) {
    return L == 16 && a.channels_last && a.wo % tp == 0 && row_stride_compiled(a.sx * a.cg);
  }

  static bool conv2d(const Conv2dArgs& a, int64_t group, const WeightDecoder& d, const float* bias) {
    const int64_t n = d.w->rows;
    if (a.channels_last && !channels_tiling(n)) return false;  // (never asked: see channels_tiling)
    if (!direct(a, n)) return false;  // (the one rule, which conv2d_packed also asks)
    if constexpr (L == 16) {
      if (n % 64 == 0 && row_tiles(a, 4)) return run_channels<4, 4>(a, group, d, bias), true;
      if (n % 32 == 0 && row_tiles(a, 8)) return run_channels<8, 2>(a, group, d, bias), true;
      if (n % 16 == 0 && row_tiles(a, 16)) return run_channels<16, 1>(a, group, d, bias), true;
      if (n % 64 == 0) return run_channels<6, 4>(a, group, d, bias), true;
      if (n % 48 == 0) return run_channels<8, 3>(a, group, d, bias), true;
      if (n % 32 == 0) return run_channels<12, 2>(a, group, d, bias), true;
      if (n % 16 == 0 && (a.channels_last || n > 16 || !positions_worthwhile(a))) return run_channels<12, 1>(a, group, d, bias), true;
      if (n % 12 == 0 || n < 8) return run_positions<12, 2>(a, group, d, bias), true;
      return run_positions<8, 3>(a, group, d, bias), true;
    } else if constexpr (L == 8) {
      if (n % 16 == 0) return run_channels<6, 2>(a, group, d, bias), true;
      if (n % 8 == 0) return run_channels<12, 1>(a, group, d, bias), true;
      return run_positions<4, 2>(a, group, d, bias), true;
    } else {
      return run_positions<4, 1>(a, group, d, bias), true;
    }
  }
};

}  // namespace deploy
}  // namespace
}  // namespace lowbit
