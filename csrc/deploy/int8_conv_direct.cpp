// INT8 x INT8 Conv2d without patches (AVX512-VNNI): the input codes of a pass of images
// are laid out once as zero-padded channels-last planes, [R][C][cg rounded up to 4] bytes
// per image (padding holds the code of 0), so the 4 input channels of one kernel tap are
// one 32-bit word. The tile (int8_tile_vnni.cpp) puts 16, 32 or 64 output channels in its
// vectors and broadcasts each pixel's word: vpdpbusd then multiplies 4 channels at once,
// with the weights reordered per call to [tap][channel quad][output channel][4]. The
// epilogue is int8_conv.cpp's ((acc - (128 + z) rowsum) s_x s_w + bias); results go
// straight to channels-last fp32 outputs, through a small buffer otherwise.
#include <emmintrin.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "deploy/int8_common.h"

namespace lowbit {
namespace int8_detail {
namespace {

// 16 x 16 bytes transposed in registers: four rounds of interleaving row i with row i + 8.
inline void transpose16(__m128i r[16]) {
  for (int step = 0; step < 4; ++step) {
    __m128i t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
      t[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
  }
}

// The padded channels-last code planes of one pass: per image R x C pixels of cgp bytes.
struct CodePlanes {
  int64_t R, C, cgp, image;
};

// Padded row r of image img: the unsigned codes (code ^ 0x80) of input channels
// [c0, c0 + cg) from `codes` (this pass's signed codes, in the input's layout), pad_code
// for padding pixels and for the channels past cg.
void fill_plane_row(const Conv2dArgs& a, const CodePlanes& pl, const uint8_t* codes, int64_t c0, int64_t img,
                    int64_t r, uint8_t pad_code, uint8_t* planes) {
  const int64_t C = pl.C, cgp = pl.cgp, iy = r - a.py;
  uint8_t* dst = planes + img * pl.image + r * C * cgp;
  if (uint64_t(iy) >= uint64_t(a.h)) {
    std::memset(dst, pad_code, size_t(C * cgp));
    return;
  }
  const __m128i flip = _mm_set1_epi8(char(0x80));
  int64_t q_done = 0;  // NCHW: whole 16 x 16 tiles (16 pixels x 16 channels) first
  if (!a.channels_last && a.cg >= 16) {
    const int64_t x0 = std::min(a.px, C), x1 = std::min(C, a.px + a.w);
    std::memset(dst, pad_code, size_t(x0 * cgp));
    int64_t q = x0;
    for (; q + 16 <= x1; q += 16) {
      for (int64_t c = 0; c + 16 <= a.cg; c += 16) {
        __m128i rows[16];
        for (int64_t i = 0; i < 16; ++i)
          rows[i] = _mm_loadu_si128(
              reinterpret_cast<const __m128i*>(codes + ((img * a.c + c0 + c + i) * a.h + iy) * a.w + q - a.px));
        transpose16(rows);
        for (int64_t j = 0; j < 16; ++j)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (q + j) * cgp + c), _mm_xor_si128(rows[j], flip));
      }
      for (int64_t j = 0; j < 16; ++j)  // channels past the last 16
        for (int64_t c = a.cg / 16 * 16; c < cgp; ++c)
          dst[(q + j) * cgp + c] =
              c < a.cg ? uint8_t(codes[((img * a.c + c0 + c) * a.h + iy) * a.w + q + j - a.px] ^ 0x80u) : pad_code;
    }
    q_done = q;
  }
  dst += q_done * cgp;
  for (int64_t q = q_done; q < C; ++q, dst += cgp) {
    const int64_t ix = q - a.px;
    if (uint64_t(ix) >= uint64_t(a.w)) {
      std::memset(dst, pad_code, size_t(cgp));
      continue;
    }
    if (a.channels_last) {
      const uint8_t* src = codes + ((img * a.h + iy) * a.w + ix) * a.c + c0;
      int64_t c = 0;
      for (; c + 16 <= a.cg; c += 16)  // (SSE2: every x86-64 CPU)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c),
                         _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c)), flip));
      for (; c < a.cg; ++c) dst[c] = uint8_t(src[c] ^ 0x80u);
    } else {  // (locals: byte stores may alias a's fields, which the loop would reload)
      const int64_t cg = a.cg, plane = a.h * a.w;
      const uint8_t* src = codes + ((img * a.c + c0) * a.h + iy) * a.w + ix;
      for (int64_t c = 0; c < cg; ++c) dst[c] = uint8_t(src[c * plane] ^ 0x80u);
    }
    for (int64_t c = a.cg; c < cgp; ++c) dst[c] = pad_code;
  }
}

}  // namespace

bool conv2d_int8_direct(const Conv2dArgs& a, const Int8Activation& act, const IntWeight& w, const float* bias,
                        uint8_t pad_code) {
  if (std::string(int8_kernels().name) != "avx512_vnni") return false;
  const int64_t og = a.cout / a.groups;
  const int64_t cgp = (a.cg + 3) / 4 * 4, quads = cgp / 4, nq = a.kh * a.kw * quads;
  if (og % 16 != 0 || nq * 4 > (1 << 15)) return false;  // (int32 sums stay exact below 2^15 columns)
  const int mv = og % 64 == 0 ? 4 : og % 32 == 0 ? 2 : 1;
  const int64_t NB = 16 * mv, nblocks = og / NB, TP = int8_conv_tile_pixels(mv);
  const int64_t R = a.h + 2 * a.py, C = a.w + 2 * a.px, image = R * C * cgp, hw = a.ho * a.wo;
  const CodePlanes planes_geo{R, C, cgp, image};
  const int64_t ipp = std::max<int64_t>(1, std::min<int64_t>(a.n, 4096 / hw)), K = a.cg * a.kh * a.kw;
  const int64_t pmax = (ipp * hw + TP - 1) / TP * TP;
  float sx = act.scale;
  int32_t zx = act.offset;
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.symmetric = zx == 0;
  const int64_t image_in = a.c * a.h * a.w;  // input values per image (either layout)
  thread_local GrowBuffer<uint8_t> planes_buf, codes_buf;
  uint8_t* codes = codes_buf.get(ipp * image_in);
  thread_local GrowBuffer<int8_t> wt_buf, row_buf;
  thread_local GrowBuffer<int32_t> corr_buf;
  thread_local GrowBuffer<float> scale_buf, bias_buf;
  thread_local GrowBuffer<int64_t> off_buf, pix_buf;
  uint8_t* planes = planes_buf.get(ipp * image + 64);
  int8_t* wt = wt_buf.get(og * nq * 4);
  int8_t* row = row_buf.get((K + 3) / 4 * 4);
  int32_t* corr = corr_buf.get(og);
  float* scale = scale_buf.get(og);
  float* bv = bias_buf.get(og);
  int64_t* off = off_buf.get(nq);
  int64_t* pix = pix_buf.get(pmax);
  for (int64_t ky = 0; ky < a.kh; ++ky)
    for (int64_t kx = 0; kx < a.kw; ++kx)
      for (int64_t c4 = 0; c4 < quads; ++c4)
        off[(ky * a.kw + kx) * quads + c4] = (ky * a.dy * C + kx * a.dx) * cgp + c4 * 4;
  const bool nhwc = a.channels_last;
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t c0 = g * a.cg;
    // weights of this group: [channel block][tap][quad][NB][4], padded input channels 0
    // (every stride in a local: the byte stores may alias any field, which the loop would
    // otherwise reload at each element)
    std::memset(wt, 0, size_t(og * nq * 4));
    const int64_t taps = a.kh * a.kw, cg = a.cg, tap_stride = quads * NB * 4;
    for (int64_t o = 0; o < og; ++o) {
      const int64_t r = g * og + o;
      weight_row(w, r, row, (K + 3) / 4 * 4);
      int8_t* dst = wt + ((o / NB) * nq * NB + o % NB) * 4;
      int32_t rsum = 0;
      for (int64_t c = 0; c < cg; ++c) {
        const int8_t* src = row + c * taps;
        int8_t* d = dst + (c / 4) * NB * 4 + c % 4;
        for (int64_t t = 0; t < taps; ++t) {
          d[t * tap_stride] = src[t];
          rsum += src[t];
        }
      }
      corr[o] = (128 + zx) * rsum;
      scale[o] = sx * (w.per_tensor ? w.scale[0] : w.scale[r]);
      bv[o] = bias ? bias[r] : 0.0f;
    }
    for (int64_t img0 = 0; img0 < a.n; img0 += ipp) {
      const int64_t nimg = std::min(ipp, a.n - img0), P = nimg * hw, ppad = (P + TP - 1) / TP * TP;
      // this pass's input, quantized (per tensor: the layout does not matter); a NaN sends
      // the whole convolution to the patch kernel, which propagates it
      const void* slice = static_cast<const char*>(a.x) + img0 * image_in * dtype_bytes(a.dtype);
      if (has_nan(slice, a.dtype, nimg * image_in)) return false;
      pack(ConstMatrix{slice, a.dtype, nimg, image_in, image_in}, spec,
           ScaleView{&sx, spec.symmetric ? nullptr : &zx, nullptr}, codes, image_in, false);
      const int64_t groups = ppad / TP, parts = std::min<int64_t>(groups, 4 * omp_get_max_threads());
#pragma omp parallel
      {
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nimg * R; ++t)  // padded row t % R of image t / R
          fill_plane_row(a, planes_geo, codes, c0, t / R, t % R, pad_code, planes);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nimg * a.ho; ++t) {  // output row oy of image img
          const int64_t img = t / a.ho, oy = t % a.ho, first = img * image + oy * a.sy * C * cgp;
          int64_t* dst = pix + t * a.wo;
          for (int64_t ox = 0; ox < a.wo; ++ox) dst[ox] = first + ox * a.sx * cgp;
        }
#pragma omp single
        for (int64_t p = P; p < ppad; ++p) pix[p] = pix[P - 1];  // the last group's extra pixels
        float buf[12 * 64];
#pragma omp for schedule(static)
        for (int64_t item = 0; item < nblocks * parts; ++item) {
          const int64_t nb = item / parts, part = item % parts;
          for (int64_t gi = part * groups / parts; gi < (part + 1) * groups / parts; ++gi) {
            const uint8_t* px[12];
            for (int64_t p = 0; p < TP; ++p) px[p] = planes + pix[gi * TP + p];
            const int64_t p0 = gi * TP, valid = std::min(TP, P - p0);
            const int64_t o = g * og + nb * NB;  // first output channel of the block
            Int8ConvTile t;
            t.mv = mv;
            t.wt = wt + nb * nq * NB * 4;
            t.off = off;
            t.nq = nq;
            t.px = px;
            t.corr = corr + nb * NB;
            t.scale = scale + nb * NB;
            t.bias = bv + nb * NB;
            // fp32 outputs are written by the tile: channels-last rows, or (when the pixels
            // lie in one image) one NCHW run per channel
            const int64_t q0 = img0 * hw + p0;  // global pixel
            const bool one_image = q0 / hw == (q0 + TP - 1) / hw;
            const bool straight = a.dtype == DType::kF32 && valid == TP && (nhwc || one_image);
            if (!straight) {
              t.out = buf;
              t.ldo = NB;
            } else if (nhwc) {
              t.out = static_cast<float*>(a.y) + q0 * a.cout + o;
              t.ldo = a.cout;
            } else {
              t.out = static_cast<float*>(a.y) + ((q0 / hw) * a.cout + o) * hw + q0 % hw;
              t.ldo = hw;
              t.channel_major = true;
            }
            int8_conv_tile_vnni(t);
            if (straight) continue;
            for (int64_t p = 0; p < valid; ++p) {
              const int64_t q = img0 * hw + p0 + p;  // global pixel
              for (int64_t ch = 0; ch < NB; ++ch) {
                const int64_t at = nhwc ? q * a.cout + o + ch : ((q / hw) * a.cout + o + ch) * hw + q % hw;
                store_element(a.y, a.dtype, at, buf[p * NB + ch]);
              }
            }
          }
        }
      }
    }
  }
  return true;
}

}  // namespace int8_detail
}  // namespace lowbit
