// pycodec codec core: the fixed-width lossless layout of bf16 weights ("fixed12": 12 bits a
// weight plus rare escapes), its encoder and decoder, and the GEMV lane code that the CUDA kernels
// (csrc/cuda/fixed12_cuda.cu) and their CPU emulation (emulate.cpp) both run.
//
// Read me first
// - Why a fixed width: the entropy-coded layouts (windowed.h) reach ~10.6-10.8 bits a bf16 weight,
//   but their GEMVs spend 14-27 lane-instructions a weight (bench/sass_count.py), so at batch 1
//   they are bound by issue, not by memory. Here decoding a weight takes ~2 integer instructions
//   and no serial dependence: the GEMV reads 12/16 of bf16's bytes and should run at memory speed.
// - A bf16 weight is its top byte h (sign, exponent bits 7..1) and its low byte l (exponent bit 0,
//   7 mantissa bits). l is stored raw. Trained weights use few top bytes: per tensor, e' = h & 0x7F
//   in [base + 1, base + 7] or 0 (zeros and the tiniest values, exact) holds all but 5.2e-4
//   (all-MiniLM-L6-v2) and 4.7e-4 (SmolLM2-135M) of the weights, so h is stored as a 4-bit code:
//        code c = sign << 3 | t,   t = 0 for e' = 0, t = e' - base for e' in [base + 1, base + 7]
//   (A window of 8 nonzero values would escape fewer, 1.5e-4 and 3.4e-4, and save an instruction
//   or two a piece; but zeros, as in pruned or padded rows, would then be escapes, which the GEMV
//   decodes to an ordinary value and takes away again: their rows' outputs not exactly 0.)
// - Any other weight (rare outliers, infinities, NaNs, rare tiny values) is an escape: code 0, its
//   low byte stored as for any weight (so it decodes to e' = 0, |w| < 2^-125), and its 16 bits in a
//   side list of (flat index, bits). Decoders write code 0's value, then patch the escapes; the
//   GEMV adds each escape's product and takes away the decoded one's, in its epilogue.
// - Pieces: weights 8p .. 8p + 7 of the flat row-major weight are piece p. Its codes are one
//   32-bit little-endian word, byte j = c(8p + j) | c(8p + 4 + j) << 4, and its low bytes are the 8
//   bytes low[8p .. 8p + 7]. One 32-bit and one 64-bit load give 8 weights, and four top bytes
//   come from four codes (one a byte, n) at once, no byte carrying into the next (base + 7 <= 127):
//        t   = n & 0x07070707
//        e'  = t + base * (1 where t != 0)      the 1s: ((t + 0x7F7F7F7F) >> 7) & 0x01010101
//        h   = e' | (n << 4) & 0x80808080       the sign, code bit 3 to bit 7
//   then a byte permute joins two top and two low bytes into two bf16s.
//
//     codes word of piece p (bits):
//       31..28   27..24   23..20   19..16   15..12   11..8    7..4     3..0
//       c(8p+7)  c(8p+3)  c(8p+6)  c(8p+2)  c(8p+5)  c(8p+1)  c(8p+4)  c(8p+0)
//
// - Buffers hold whole pieces: codes 4 * ceil(n / 8) bytes, low 8 * ceil(n / 8) bytes; the
//   weights past n in the last piece are code 0, low 0 (nothing reads them as weights).
// - The GEMVs need K % 8 == 0, so that a piece never straddles two rows. On CUDA cores: one warp a
//   row; lane j multiplies pieces j, j + 32, ... of the row (so a warp's loads are contiguous: 128
//   bytes of codes, 256 of low bytes, 1 KiB of x per batch row), then its share of the row's
//   escapes; the warp then adds its 32 sums by an xor butterfly. The emulation runs the same lane
//   code lane by lane and the same butterfly, so its outputs are the kernel's, bit for bit. On
//   tensor cores (bf16 x): the tile section below.
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__SSE2__) && !defined(__CUDACC__)
#include <emmintrin.h>
#endif

#include "status.h"
#include "windowed_gemv.h"  // byte_perm, bits_float, PYCODEC_LOAD

// nvcc's loop unrolling, spelled so that host compilers (which warn of unknown pragmas) see nothing.
#if defined(__CUDACC__)
#define FIXED12_PRAGMA(x) _Pragma(#x)
#else
#define FIXED12_PRAGMA(x)
#endif

namespace pycodec {
namespace fixed12 {

constexpr uint32_t kPieceWeights = 8;  // one 32-bit code word, one 64-bit low word
constexpr uint32_t kWindow = 8;        // values of t: 3 bits, 0 (e' = 0) and base + 1 .. base + 7
constexpr uint32_t kMaxBase = 127 - (kWindow - 1);  // base + 7 <= 127: a byte's sum never carries
constexpr uint32_t kWarpLanes = 32;
constexpr int kMaxBatch = 16;
static_assert(kPieceWeights == 2 * 4, "a code word is 4 bytes of two codes each");
static_assert(kMaxBase + kWindow - 1 == 0x7F, "the window lies inside the top byte's 7 exponent bits");

PYCODEC_HD uint64_t pieces_of(uint64_t n) { return (n + kPieceWeights - 1) / kPieceWeights; }

// Four top bytes from four codes, one code in the low nibble of each byte of n4 (base4 = base * 0x01010101).
PYCODEC_HD uint32_t top_bytes4(uint32_t n4, uint32_t base4) {
  const uint32_t t = n4 & 0x07070707u;
  const uint32_t nonzero = ((t + 0x7F7F7F7Fu) >> 7) & 0x01010101u;  // 1 in each byte whose t != 0
  return (nonzero * (base4 & 0xFFu) + t) | ((n4 << 4) & 0x80808080u);
}

// The 8 weights of a piece as four words of two bf16s (pair[i] = w(2i + 1) << 16 | w(2i)), from its
// code word and its low bytes (low_lo: weights 0-3, low_hi: 4-7, little-endian). base4 = base * 0x01010101.
PYCODEC_HD void piece_pairs(uint32_t code_word, uint32_t low_lo, uint32_t low_hi, uint32_t base4, uint32_t pair[4]) {
  const uint32_t h_lo = top_bytes4(code_word & 0x0F0F0F0Fu, base4);
  const uint32_t h_hi = top_bytes4((code_word >> 4) & 0x0F0F0F0Fu, base4);
  pair[0] = windowed::byte_perm(low_lo, h_lo, 0x5140u);  // h1 l1 h0 l0, from the top byte down
  pair[1] = windowed::byte_perm(low_lo, h_lo, 0x7362u);  // h3 l3 h2 l2
  pair[2] = windowed::byte_perm(low_hi, h_hi, 0x5140u);
  pair[3] = windowed::byte_perm(low_hi, h_hi, 0x7362u);
}

// A bf16 pair's two weights as floats (exact: bf16 is fp32's top half).
PYCODEC_HD float pair_low(uint32_t pair) { return windowed::bits_float(pair << 16); }
PYCODEC_HD float pair_high(uint32_t pair) { return windowed::bits_float(pair & 0xFFFF0000u); }

// ---------------------------------------------------------------------------- host: encode, decode

// The code of one bf16 weight, or kEscape when its top byte lies outside the window.
constexpr uint32_t kEscape = 0x100;
inline uint32_t code_of(uint16_t bits, uint32_t base) {
  const uint32_t h = bits >> 8, e = h & 0x7Fu, d = e - base;  // unsigned: below base wraps high
  if (e == 0) return (h >> 7) << 3;
  return d - 1 < kWindow - 1 ? ((h >> 7) << 3) | d : kEscape;
}

// The base whose window [base + 1, base + 7] holds the most weights, from the count of each
// e' = (bits >> 8) & 0x7F (e' = 0 is held whatever the base); the lowest such base on ties.
inline uint32_t best_base(const uint64_t count[128]) {
  uint64_t held = 0;
  for (uint32_t e = 1; e < kWindow; ++e) held += count[e];
  uint64_t best = held;
  uint32_t base = 0;
  for (uint32_t b = 1; b <= kMaxBase; ++b) {
    held += count[b + kWindow - 1] - count[b];
    if (held > best) best = held, base = b;
  }
  return base;
}

// The weights a base's window holds (every weight but the escapes).
inline uint64_t held_by(const uint64_t count[128], uint32_t base) {
  uint64_t held = count[0];
  for (uint32_t e = base + 1; e < base + kWindow; ++e) held += count[e];
  return held;
}

inline void count_tops(const uint16_t* bits, uint64_t n, uint64_t count[128]) {
  for (uint32_t e = 0; e < 128; ++e) count[e] = 0;
  for (uint64_t i = 0; i < n; ++i) ++count[(bits[i] >> 8) & 0x7Fu];
}

// Fills codes (4 * pieces_of(n) bytes) and low (8 * pieces_of(n) bytes) and writes the escapes'
// flat indices, ascending, to escapes (room for `cap`). Returns the number of escapes, or more
// than cap if they did not fit (then escapes holds the first cap).
inline uint64_t encode(const uint16_t* bits, uint64_t n, uint32_t base, uint8_t* codes, uint8_t* low,
                       int64_t* escapes, uint64_t cap) {
  const uint64_t pieces = pieces_of(n);
  uint64_t n_escapes = 0;
  // a piece at a time, its code word built in a register (one store, not eight read-modify-writes)
  for (uint64_t p = 0; p < pieces; ++p) {
    uint32_t word = 0;
    for (uint32_t j = 0; j < kPieceWeights; ++j) {
      const uint64_t i = p * kPieceWeights + j;
      uint32_t c = 0;
      if (i < n) {
        c = code_of(bits[i], base);
        if (c == kEscape) {
          if (n_escapes < cap) escapes[n_escapes] = int64_t(i);
          ++n_escapes;
          c = 0;
        }
      }
      word |= c << (8 * (j & 3u) + (j & 4u));
      low[i] = i < n ? uint8_t(bits[i]) : 0;
    }
    std::memcpy(codes + 4 * p, &word, 4);  // little-endian: byte j = c(j) | c(j + 4) << 4
  }
  return n_escapes;
}

// One weight's bits from its piece's codes (the scalar reference of top_bytes4).
inline uint16_t decode_one(const uint8_t* codes, const uint8_t* low, uint32_t base, uint64_t i) {
  const uint32_t j = uint32_t(i % kPieceWeights);
  const uint32_t c = (codes[4 * (i / kPieceWeights) + (j & 3u)] >> (j & 4u)) & 0xFu;
  const uint32_t h = ((c & 8u) << 4) | ((c & 7u) ? base + (c & 7u) : 0u);
  return uint16_t(h << 8 | low[i]);
}

#if defined(__SSE2__) && !defined(__CUDACC__)
// Four pieces (32 weights) with SSE2, top_bytes4's arithmetic on 16 codes at once: the byte
// compare stands for its nonzero mask, and two unpacks put the codes' halves and then the low
// bytes in weight order.
inline void decode_pieces4_sse2(const uint8_t* codes, const uint8_t* low, __m128i base16, uint16_t* out) {
  const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  const __m128i nibble = _mm_set1_epi8(0x0F), seven = _mm_set1_epi8(7), sign = _mm_set1_epi8(char(0x80));
  const __m128i halves[2] = {_mm_and_si128(c, nibble), _mm_and_si128(_mm_srli_epi16(c, 4), nibble)};
  __m128i h[2];
  for (int i = 0; i < 2; ++i) {
    const __m128i t = _mm_and_si128(halves[i], seven);
    const __m128i e = _mm_add_epi8(t, _mm_andnot_si128(_mm_cmpeq_epi8(t, _mm_setzero_si128()), base16));
    h[i] = _mm_or_si128(e, _mm_and_si128(_mm_slli_epi16(halves[i], 4), sign));
  }
  const __m128i tops[2] = {_mm_unpacklo_epi32(h[0], h[1]), _mm_unpackhi_epi32(h[0], h[1])};  // weight order
  for (int i = 0; i < 2; ++i) {
    const __m128i l = _mm_loadu_si128(reinterpret_cast<const __m128i*>(low + 16 * i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * i), _mm_unpacklo_epi8(l, tops[i]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * i + 8), _mm_unpackhi_epi8(l, tops[i]));
  }
}
#endif

// The bits of weights [first, first + count) as code 0's value for escapes (the caller patches
// them). codes / low hold whole pieces for at least first + count weights (the caller checks).
inline void decode(const uint8_t* codes, const uint8_t* low, uint32_t base, uint64_t first, uint64_t count,
                   uint16_t* out) {
  uint64_t i = first;
  const uint64_t end = first + count;
#if defined(__SSE2__) && !defined(__CUDACC__)
  for (; i < end && i % kPieceWeights; ++i) *out++ = decode_one(codes, low, base, i);
  const __m128i base16 = _mm_set1_epi8(char(base));
  for (; i + 4 * kPieceWeights <= end; i += 4 * kPieceWeights, out += 4 * kPieceWeights)
    decode_pieces4_sse2(codes + i / 2, low + i, base16, out);
#endif
  for (; i < end; ++i) *out++ = decode_one(codes, low, base, i);
}

// ---------------------------------------------------------------------------- GEMV and decode kernels

// What the kernels read and write (device pointers, or host pointers in the emulation). x, bias
// and y are in the activations' type: bf16 (x_bf16) or fp32, so that a batch-1 forward is this
// one launch (no copy of x, no cast of y, the bias added before y's one rounding, as cuBLAS's
// epilogue adds it).
struct GemvArgs {
  const uint32_t* codes;       // pieces words
  const uint32_t* low;         // 2 * pieces words (8-byte aligned)
  uint64_t pieces;
  uint32_t base4;              // base * 0x01010101
  const void* x;               // [batch][k], 16-byte aligned rows
  bool x_bf16;                 // x, bias and y are bf16 bits; else fp32
  uint32_t batch;              // rows of x and y; the kernel instance's B >= batch
  uint32_t n_rows;
  uint32_t k;                  // a multiple of kPieceWeights
  const int32_t* escape_row;   // [n_rows + 1] CSR offsets into escape_col / escape_value; null: none
  const int32_t* escape_col;   // [n_escapes]
  const float* escape_value;   // [n_escapes][2]: the weight's value, and the value code 0 decodes to (its low byte)
  uint32_t n_escapes;
  const void* bias;            // [n_rows] or null
  void* y;                     // [batch][n_rows]
};

// Argument checks shared by the kernels' entry points and the emulation.
inline Status check_gemv(const GemvArgs& a, uint32_t batch_pad) {
  if (a.k == 0 || a.k % kPieceWeights || a.n_rows == 0 || !a.codes || !a.low || !a.x || !a.y) return Status::BadArgument;
  // instances 1..8 take exactly their batch (no test per row), 16 takes 9..16
  if (a.batch < 1 || (batch_pad <= 8 ? a.batch != batch_pad : batch_pad != uint32_t(kMaxBatch) || a.batch > batch_pad))
    return Status::BadArgument;
  if (uint64_t(a.n_rows) * a.k / kPieceWeights != a.pieces) return Status::BadArgument;
  if ((a.base4 & 0xFFu) > kMaxBase || a.base4 != (a.base4 & 0xFFu) * 0x01010101u)
    return Status::BadArgument;
  if ((reinterpret_cast<uintptr_t>(a.low) & 7u) || (reinterpret_cast<uintptr_t>(a.x) & 15u) ||
      (reinterpret_cast<uintptr_t>(a.codes) & 3u))
    return Status::BadArgument;
  if (a.n_escapes && (!a.escape_row || !a.escape_col || !a.escape_value)) return Status::BadArgument;
  return Status::Ok;
}

inline Status check_decode(const uint32_t* codes, const uint32_t* low, uint64_t pieces, uint32_t base4,
                           const uint16_t* out) {
  if (pieces && (!codes || !low || !out)) return Status::BadArgument;
  if ((base4 & 0xFFu) > kMaxBase || base4 != (base4 & 0xFFu) * 0x01010101u) return Status::BadArgument;
  if ((reinterpret_cast<uintptr_t>(low) & 7u) || (reinterpret_cast<uintptr_t>(out) & 15u) ||
      (reinterpret_cast<uintptr_t>(codes) & 3u))
    return Status::BadArgument;
  return Status::Ok;
}

// A piece's 8 low bytes: one 64-bit load on a GPU (low is 8-byte aligned).
PYCODEC_HD void load_low8(const uint32_t* low, uint64_t piece, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__)
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(low) + piece);
  lo = v.x, hi = v.y;
#else
  lo = low[2 * piece], hi = low[2 * piece + 1];
#endif
}

// How the kernels read x and write y, by the activations' type.
struct XFloat {
  using T = float;
  PYCODEC_HD static void load8(const void* x, size_t at, float out[8]) {
    const float* p = static_cast<const float*>(x) + at;
    windowed::XGlobal::load4(p, out);
    windowed::XGlobal::load4(p + 4, out + 4);
  }
  PYCODEC_HD static float load(const void* x, size_t at) { return PYCODEC_LOAD(static_cast<const float*>(x) + at); }
  PYCODEC_HD static void store(void* y, size_t at, float v) { static_cast<float*>(y)[at] = v; }
};
struct XBf16 {
  using T = uint16_t;
  PYCODEC_HD static void load8(const void* x, size_t at, float out[8]) {  // one 16-byte load
    uint32_t w[4];
#if defined(__CUDA_ARCH__)
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + at));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
#else
    std::memcpy(w, static_cast<const uint16_t*>(x) + at, 16);
#endif
    for (int i = 0; i < 4; ++i) out[2 * i] = pair_low(w[i]), out[2 * i + 1] = pair_high(w[i]);
  }
  PYCODEC_HD static float load(const void* x, size_t at) {
    return windowed::bits_float(uint32_t(PYCODEC_LOAD(static_cast<const uint16_t*>(x) + at)) << 16);
  }
  // fp32 to bf16, rounding to nearest even (NaN kept a quiet NaN): integer arithmetic, the same bits
  // on host and device.
  PYCODEC_HD static void store(void* y, size_t at, float v) {
    uint32_t u;
#if defined(__CUDA_ARCH__)
    u = __float_as_uint(v);
#else
    std::memcpy(&u, &v, 4);
#endif
    const uint16_t h = (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t((u >> 16) | 0x40u)
                                                         : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    static_cast<uint16_t*>(y)[at] = h;
  }
};

// Lane `lane`'s sums of row `row` over its pieces, added to acc[0..B): B is the batch, or 16 for 9..16.
template <int B, class X>
PYCODEC_HD void gemv_lane(const GemvArgs& a, uint32_t row, uint32_t lane, float acc[B]) {
  const uint32_t row_pieces = a.k / kPieceWeights;
  const uint64_t first = uint64_t(row) * row_pieces;
FIXED12_PRAGMA(unroll 4)
  for (uint32_t p = lane; p < row_pieces; p += kWarpLanes) {
    const uint32_t code_word = PYCODEC_LOAD(a.codes + first + p);
    uint32_t low_lo, low_hi;
    load_low8(a.low, first + p, low_lo, low_hi);
    uint32_t pair[4];
    piece_pairs(code_word, low_lo, low_hi, a.base4, pair);
    float w[8];
FIXED12_PRAGMA(unroll)
    for (int i = 0; i < 4; ++i) w[2 * i] = pair_low(pair[i]), w[2 * i + 1] = pair_high(pair[i]);
FIXED12_PRAGMA(unroll)
    for (int b = 0; b < B; ++b) {
      if (B == kMaxBatch && b >= int(a.batch)) break;  // the 16 instance serves batches 9..16
      float x[8];
      X::load8(a.x, size_t(b) * a.k + size_t(p) * kPieceWeights, x);
      float s = acc[b];
FIXED12_PRAGMA(unroll)
      for (int i = 0; i < 8; ++i) s = fmaf(w[i], x[i], s);
      acc[b] = s;
    }
  }
}

// Lane 0's output of row `row`, batch row b: the warp's sum, plus the bias, rounded once to y's type.
template <class X>
PYCODEC_HD void store_output(const GemvArgs& a, uint32_t row, int b, float sum) {
  const float bias = a.bias ? X::load(a.bias, row) : 0.f;
  X::store(a.y, size_t(b) * a.n_rows + row, a.bias ? sum + bias : sum);
}

// Lane `lane`'s share of row `row`'s escapes: each takes its decoded product away and adds its own.
template <int B, class X>
PYCODEC_HD void escape_lane(const GemvArgs& a, uint32_t row, uint32_t lane, float acc[B]) {
  if (!a.n_escapes) return;
  const int32_t begin = PYCODEC_LOAD(a.escape_row + row), end = PYCODEC_LOAD(a.escape_row + row + 1);
  for (int32_t e = begin + int32_t(lane); e < end; e += int32_t(kWarpLanes)) {
    const uint32_t col = uint32_t(PYCODEC_LOAD(a.escape_col + e));
    const float value = PYCODEC_LOAD(a.escape_value + 2 * size_t(e));
    const float decoded = PYCODEC_LOAD(a.escape_value + 2 * size_t(e) + 1);
FIXED12_PRAGMA(unroll)
    for (int b = 0; b < B; ++b) {
      if (B == kMaxBatch && b >= int(a.batch)) break;
      const float xv = X::load(a.x, size_t(b) * a.k + col);
      acc[b] = fmaf(value, xv, fmaf(-decoded, xv, acc[b]));
    }
  }
}

// ---------------------------------------------------------------------------- tensor-core GEMV (bf16 x)
//
// With bf16 activations the decoded pairs are already mma.m16n8k16 operands, so a warp multiplies
// 16 rows at a time on tensor cores: ~2.3 lane-instructions a weight at any batch up to 16, where
// the CUDA-core GEMV spends one FMA per weight per batch row. A block of kTileWarps warps owns a
// tile of 16 rows and splits its K among its warps in blocks of 64 columns. In a block, lane
// (g = lane / 4, t = lane % 4) decodes pieces 2t and 2t + 1 (columns 16t .. 16t + 15) of rows
// g and g + 8: 16 weights, the A fragments of the block's four k-steps. Only the tail block (K %
// 64 != 0) tests bounds. The MMA's k order is free
// (the same permutation of a step's 16 columns on both operands gives the same sum), so k-step s
// takes the lane's columns 16t + 4s .. + 3 as fragment columns 2t, 2t + 1, 2t + 8, 2t + 9: two
// decoded pairs, no shuffle. Its B fragment is x's same columns, from one 32-byte read of x row
// g (batch rows 8 .. 15: a second n-tile). The warps' sums meet in shared memory and are added in
// warp order (deterministic); then one thread per (row, batch row) adds the escapes and the bias
// and rounds once.
constexpr uint32_t kTileRows = 16, kTileCols = 64, kTileWarps = 8;
constexpr uint32_t kTilePartials = kTileWarps * kTileRows * kMaxBatch;  // the warps' sums: [warp][row][batch row]
static_assert(kTileWarps * kWarpLanes == kTileRows * kMaxBatch, "one thread per (row, batch row) of a tile's outputs");

// What a lane reads in one 64-column block: its first code word and low bytes in each of its two
// rows, and its first x value in x's row for each n-tile (tile_lane: block 0; tile_advance moves
// it a block on, so a warp's loop only adds to pointers). Rows past N and batch rows past the
// batch read the last ones instead: an MMA's output rows and columns do not mix, and tile_output
// drops theirs.
struct TileLane {
  const uint32_t* codes[2];
  const uint32_t* low[2];
  const uint16_t* x[2];
};

PYCODEC_HD TileLane tile_lane(const GemvArgs& a, uint32_t r0, uint32_t lane) {
  TileLane l;
  const uint32_t g = lane / 4, t = lane % 4, row_pieces = a.k / kPieceWeights;
  for (uint32_t h = 0; h < 2; ++h) {
    const uint32_t row = r0 + g + 8 * h < a.n_rows ? r0 + g + 8 * h : a.n_rows - 1;
    l.codes[h] = a.codes + uint64_t(row) * row_pieces + 2 * t;
    l.low[h] = a.low + 2 * (uint64_t(row) * row_pieces + 2 * t);
  }
  for (uint32_t j = 0; j < 2; ++j) {
    const uint32_t b = 8 * j + g < a.batch ? 8 * j + g : a.batch - 1;
    l.x[j] = static_cast<const uint16_t*>(a.x) + size_t(b) * a.k + 16 * t;
  }
  return l;
}

PYCODEC_HD void tile_advance(TileLane& l, uint32_t blocks) {
  constexpr uint32_t kBlockPieces = kTileCols / kPieceWeights;
  for (uint32_t h = 0; h < 2; ++h) l.codes[h] += size_t(blocks) * kBlockPieces, l.low[h] += 2 * size_t(blocks) * kBlockPieces;
  for (uint32_t j = 0; j < 2; ++j) l.x[j] += size_t(blocks) * kTileCols;
}

// The lane's A fragments of its block: frag[step][4]. kTail: the row's last, partial block, of
// which the lane has `pieces_left` pieces inside the row (its pieces past K read as the weight +0:
// code 0, low 0).
template <bool kTail>
PYCODEC_HD void tile_a_fragments(const TileLane& l, int32_t pieces_left, uint32_t base4, uint32_t frag[4][4]) {
  for (uint32_t h = 0; h < 2; ++h) {
    for (uint32_t q = 0; q < 2; ++q) {
      uint32_t code_word = 0, lo = 0, hi = 0;
      if (!kTail || int32_t(q) < pieces_left) {
        code_word = PYCODEC_LOAD(l.codes[h] + q);
        load_low8(l.low[h], q, lo, hi);
      }
      uint32_t pair[4];
      piece_pairs(code_word, lo, hi, base4, pair);
      frag[2 * q][h] = pair[0];
      frag[2 * q][2 + h] = pair[1];
      frag[2 * q + 1][h] = pair[2];
      frag[2 * q + 1][2 + h] = pair[3];
    }
  }
}

// The lane's B fragments of n-tile j: frag[step][2] (kTail: its x values past K, of which it has
// `pieces_left` pieces of 8 inside the row, read as 0).
template <bool kTail>
PYCODEC_HD void tile_b_fragments(const TileLane& l, uint32_t j, int32_t pieces_left, uint32_t frag[4][2]) {
  uint32_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (uint32_t q = 0; q < 2; ++q) {
    if (!kTail || int32_t(q) < pieces_left) {
#if defined(__CUDA_ARCH__)
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(l.x[j] + 8 * q));
      w[4 * q] = v.x, w[4 * q + 1] = v.y, w[4 * q + 2] = v.z, w[4 * q + 3] = v.w;
#else
      std::memcpy(w + 4 * q, l.x[j] + 8 * q, 16);
#endif
    }
  }
  for (uint32_t s = 0; s < 4; ++s) frag[s][0] = w[2 * s], frag[s][1] = w[2 * s + 1];
}

// The lane's pieces inside the row in the tail block `whole` (K % 64 != 0): at most 2, maybe none.
PYCODEC_HD int32_t tile_tail_pieces(const GemvArgs& a, uint32_t whole, uint32_t lane) {
  return int32_t(a.k / kPieceWeights) - int32_t(whole * (kTileCols / kPieceWeights) + 2 * (lane % 4));
}

// Warp w's 64-column blocks of a row tile: [tile_block_begin(w), tile_block_begin(w + 1)); the
// blocks before a.k / kTileCols are whole, the one after (K % 64 != 0) the tail.
PYCODEC_HD uint32_t tile_block_begin(const GemvArgs& a, uint32_t warp) {
  const uint32_t blocks = (a.k + kTileCols - 1) / kTileCols;
  return uint32_t(uint64_t(blocks) * warp / kTileWarps);
}

// Where a warp leaves lane's accumulator element i of n-tile j in the block's partial sums
// [warp][row 16][batch 16] (C fragment: row g + 8 (i / 2), batch 8j + 2t + i % 2).
PYCODEC_HD uint32_t tile_partial_slot(uint32_t warp, uint32_t j, uint32_t lane, int i) {
  const uint32_t row = lane / 4 + 8 * uint32_t(i / 2), batch = 8 * j + 2 * (lane % 4) + uint32_t(i % 2);
  return (warp * kTileRows + row) * kMaxBatch + batch;
}

// Thread `tid`'s output of the row tile at r0 (tid = batch * 16 + row): the warps' sums in warp order,
// then its row's escapes, the bias and y's one rounding.
template <class X>
PYCODEC_HD void tile_output(const GemvArgs& a, uint32_t r0, uint32_t tid, const float* partial) {
  const uint32_t r = tid % kTileRows, b = tid / kTileRows, row = r0 + r;
  if (row >= a.n_rows || b >= a.batch) return;
  float sum = 0.f;
  for (uint32_t w = 0; w < kTileWarps; ++w) sum += partial[(w * kTileRows + r) * kMaxBatch + b];
  if (a.n_escapes) {
    const int32_t end = PYCODEC_LOAD(a.escape_row + row + 1);
    for (int32_t e = PYCODEC_LOAD(a.escape_row + row); e < end; ++e) {
      const float xv = X::load(a.x, size_t(b) * a.k + uint32_t(PYCODEC_LOAD(a.escape_col + e)));
      sum = fmaf(PYCODEC_LOAD(a.escape_value + 2 * size_t(e)), xv,
                 fmaf(-PYCODEC_LOAD(a.escape_value + 2 * size_t(e) + 1), xv, sum));
    }
  }
  store_output<X>(a, row, int(b), sum);
}

// Whether a GEMV takes the tensor-core kernel: bf16 x and the setting on (batch 1..16 either way).
PYCODEC_HD bool tile_route(const GemvArgs& a, bool tensor_cores) { return tensor_cores && a.x_bf16; }

// Escape lists are checked on the host before they reach a kernel (the Python op builds them):
// offsets ascending within [0, n_escapes], columns inside the row.
inline bool escapes_ok(const GemvArgs& a) {
  if (!a.n_escapes) return true;
  if (a.escape_row[0] != 0 || uint32_t(a.escape_row[a.n_rows]) != a.n_escapes) return false;
  for (uint32_t r = 0; r < a.n_rows; ++r)
    if (a.escape_row[r + 1] < a.escape_row[r]) return false;
  for (uint32_t e = 0; e < a.n_escapes; ++e)
    if (a.escape_col[e] < 0 || uint32_t(a.escape_col[e]) >= a.k) return false;
  return true;
}

}  // namespace fixed12
}  // namespace pycodec
