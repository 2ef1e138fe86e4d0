// pycodec codec core: one lane's share of the fused decode + GEMV kernels, for format-v2
// (windowed-lane Huffman) weights. The CUDA kernels (csrc/cuda/windowed_cuda.cu) and the CPU
// emulation (windowed_emulate.h) run exactly this code, so a GPU-less machine tests the
// kernels' arithmetic, bit for bit, against references.
//
// Read me first
// - A warp owns one chunk, and a chunk is whole rows of the weight (chunk_symbols % K == 0).
//   Lane l decodes the symbols [start_l, start_l + count_l) of its chunk (windowed.h gives
//   the counts), i.e. columns col.. of row start_l / K onwards, and accumulates
//   sum_k x[b, k] * w[k] for the rows it touches into its own slots of a per-warp table
//   slots[row][b][lane]. The warp then sums every (row, b) over the 32 lanes with a fixed
//   butterfly, so results are deterministic (no atomics) and equal in the emulation.
// - Entries hand a lane up to 3 symbols at consecutive columns. The fast path multiplies all 3
//   slots (absent symbols are 0 in the table, so they add x * 0) and needs no branch on the
//   count; an entry that crosses a segment boundary (a group's end, a row's end) goes symbol
//   by symbol. x therefore carries 3 zero rows of padding past column K-1. (An infinite x in
//   the two columns after a lane's last symbol would turn into NaN through x * 0: inputs with
//   inf are out of contract, as they are for any quantized GEMV.)
// - Affine (int / rate) weights, w = (q - z_g) * s_g: the zero point is folded out of the inner
//   loop, sum_k x w = sum_g s_g (sum_{k in g} x q - z_g sum_{k in g} x), with the x sums taken
//   from prefix sums of x prepared once per call. Per symbol the inner loop does: the symbol's
//   float (one byte permute + one add), one load of x per batch row, one FMA per batch row.
// - Lossless split weights (split.h; bf16 only on this path): w's bits are
//   (value(top) << low | raw field) << 16. Value entries (windowed.h) carry each symbol's
//   value bits; the raw fields are read by a second LaneReader at bit (position * low).
// - All arithmetic is written out as fmaf and plain adds (no expression the compiler could
//   contract differently on host and device).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "windowed.h"

#if defined(__CUDA_ARCH__)
#define PYCODEC_LOAD(p) __ldg(p)
#else
#define PYCODEC_LOAD(p) (*(p))
#endif

namespace pycodec {
namespace windowed {

constexpr int kGemvMaxBatch = 16;
constexpr uint32_t kGemvMaxSlots = 32;  // rows per chunk x batch rows: the per-warp partial sums
constexpr uint32_t kXPadRows = 3;       // x rows past K read (as zeros) by an entry's absent slots
constexpr uint32_t kFloatOne = 0x4B000000u;  // 2^23: with a byte in its low bits, the float 2^23 + byte

PYCODEC_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// fp16 bits to float, exactly (every fp16 value is an fp32 value).
PYCODEC_HD float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1F) return bits_float(sign | 0x7F800000u | (man << 13));
  if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (man << 13));
  // subnormal: man * 2^-24, exact in fp32
  const float f = float(man) * 5.9604644775390625e-8f;
  return sign ? -f : f;
}

// Symbol i of an entry as a float: 2^23 + byte is exact in fp32, and so is subtracting 2^23.
PYCODEC_HD float symbol_value(uint32_t e, int i) {
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __byte_perm(e, kFloatOne, 0x7440u + uint32_t(i));  // [0x4B, 0, 0, byte i]
#else
  const uint32_t bits = kFloatOne | ((e >> (8 * i)) & 0xFFu);
#endif
  return bits_float(bits) - 8388608.0f;
}

// A v2 stream's pieces as the kernels see them (device pointers, or host pointers in the
// emulation). super / sizes are the blob's chunk index (format.h), payload its words.
struct StreamView {
  const uint32_t* super;
  const uint16_t* sizes;
  const uint32_t* payload;
  uint64_t payload_words;
  uint64_t n_symbols;
  uint32_t chunk_symbols;
  uint64_t n_chunks;
  uint32_t lanes;
};

struct ChunkView {
  const uint32_t* words;
  uint32_t n_words;
  uint32_t m;      // symbols
  uint64_t first;  // position of the chunk's first symbol in the tensor
};

// Chunk c's words: one stored offset per 16 chunks plus at most 15 sizes (warp-uniform loads),
// clamped to the payload so a damaged index cannot move reads outside it.
PYCODEC_HD ChunkView chunk_view(const StreamView& s, uint64_t c) {
  uint64_t begin = PYCODEC_LOAD(s.super + c / kSuperChunks);
  for (uint64_t i = c & ~uint64_t(kSuperChunks - 1); i < c; ++i) begin += PYCODEC_LOAD(s.sizes + i);
  uint64_t end = begin + PYCODEC_LOAD(s.sizes + c);
  if (begin > s.payload_words) begin = s.payload_words;
  if (end > s.payload_words) end = s.payload_words;
  ChunkView v;
  v.words = s.payload + begin;
  v.n_words = uint32_t(end - begin);
  v.first = c * s.chunk_symbols;
  const uint64_t left = s.n_symbols - v.first;
  v.m = uint32_t(left < s.chunk_symbols ? left : s.chunk_symbols);
  return v;
}

// ---------------------------------------------------------------------------- affine sink

struct AffineArgs {
  const float* x;         // [k + kXPadRows][batch] fp32: x transposed, zero rows past k
  const float* prefix;    // [k + 1][batch] fp32: prefix[j][b] = x[b][0] + ... + x[b][j-1]
  const uint16_t* scale;  // fp16 bits [n_rows][n_groups]
  const uint16_t* zero;   // fp16 bits [n_rows][n_groups], or a single value when zero_broadcast
  uint32_t n_rows, k, group_size, n_groups;
  bool zero_broadcast;
  float* y;               // [batch][n_rows] fp32
};

template <int B>
struct AffineSink {
  const AffineArgs* a;
  float* slots;  // this warp's [rows][B][32] partial sums
  uint32_t lane, rows, first_row;
  uint32_t row, col, group, seg_start, seg_end;  // seg: the columns of the current (row, group)
  float acc[B];   // sum x q over the current segment
  float part[B];  // sum over the closed segments of the current row

  PYCODEC_HD void begin(const AffineArgs& args, float* warp_slots, uint32_t l, const ChunkView& v, uint32_t start) {
    a = &args;
    slots = warp_slots;
    lane = l;
    rows = v.m / a->k;
    first_row = uint32_t(v.first / a->k);
    row = start / a->k;
    col = start % a->k;
    group = col / a->group_size;
    seg_start = col;
    seg_end = segment_end();
    for (int b = 0; b < B; ++b) acc[b] = part[b] = 0.f;
  }
  PYCODEC_HD uint32_t segment_end() const {
    const uint32_t e = (group + 1) * a->group_size;
    return e < a->k ? e : a->k;
  }
  PYCODEC_HD void mac(float w, uint32_t c) {
    const float* xp = a->x + size_t(c) * B;
    for (int b = 0; b < B; ++b) acc[b] = fmaf(PYCODEC_LOAD(xp + b), w, acc[b]);
  }
  // Folds the segment [seg_start, col) into part: s * (sum x q - z * sum x).
  PYCODEC_HD void close_segment() {
    const size_t gi = size_t(first_row + row) * a->n_groups + group;
    const float s = half_to_float(PYCODEC_LOAD(a->scale + gi));
    const float z = half_to_float(PYCODEC_LOAD(a->zero + (a->zero_broadcast ? 0 : gi)));
    const float* p1 = a->prefix + size_t(col) * B;
    const float* p0 = a->prefix + size_t(seg_start) * B;
    for (int b = 0; b < B; ++b) {
      const float sum_x = PYCODEC_LOAD(p1 + b) - PYCODEC_LOAD(p0 + b);
      part[b] = fmaf(s, fmaf(-z, sum_x, acc[b]), part[b]);
      acc[b] = 0.f;
    }
  }
  PYCODEC_HD void store_row() {
    if (row < rows)
      for (int b = 0; b < B; ++b) slots[(row * B + b) * 32 + lane] = part[b];
    for (int b = 0; b < B; ++b) part[b] = 0.f;
  }
  PYCODEC_HD void next_segment() {  // col == seg_end
    close_segment();
    if (col == a->k) {
      store_row();
      ++row;
      col = 0;
      group = 0;
    } else {
      ++group;
    }
    seg_start = col;
    seg_end = segment_end();
  }
  PYCODEC_HD void put(uint32_t e, uint32_t) {
    const uint32_t n = entry_count(e);
    if (col + n <= seg_end) {  // the whole entry inside the segment: 3 slots, no branch on n
      const float w0 = symbol_value(e, 0), w1 = symbol_value(e, 1), w2 = symbol_value(e, 2);
      const float* xp = a->x + size_t(col) * B;
      for (int b = 0; b < B; ++b) {
        acc[b] = fmaf(PYCODEC_LOAD(xp + b), w0, acc[b]);
        acc[b] = fmaf(PYCODEC_LOAD(xp + B + b), w1, acc[b]);
        acc[b] = fmaf(PYCODEC_LOAD(xp + 2 * B + b), w2, acc[b]);
      }
      col += n;
      return;
    }
    for (uint32_t i = 0; i < n; ++i) {
      if (col == seg_end) next_segment();
      mac(symbol_value(e, int(i)), col);
      ++col;
    }
  }
  PYCODEC_HD void finish() {
    if (col != seg_start) close_segment();
    store_row();
  }
};

// ---------------------------------------------------------------------------- lossless split sink

struct SplitArgs {
  const float* x;       // as AffineArgs::x
  const uint32_t* raw;  // the low bits (split.h), raw_words words
  uint64_t raw_words;
  uint32_t n_rows, k, low;  // low = 16 - top
  float* y;             // [batch][n_rows] fp32
};

template <int B>
struct SplitSink {
  const SplitArgs* a;
  float* slots;
  uint32_t lane, rows, row, col, mask;
  LaneReader raw;
  float acc[B];

  PYCODEC_HD void begin(const SplitArgs& args, float* warp_slots, uint32_t l, const ChunkView& v, uint32_t start) {
    a = &args;
    slots = warp_slots;
    lane = l;
    rows = v.m / a->k;
    row = start / a->k;
    col = start % a->k;
    mask = (1u << a->low) - 1u;
    const uint64_t words = a->raw_words < 0xFFFFFFFFull ? a->raw_words : 0xFFFFFFFFull;
    raw.init(a->raw, uint32_t(words), (v.first + start) * a->low);
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
  }
  PYCODEC_HD void store_row() {
    if (row < rows)
      for (int b = 0; b < B; ++b) slots[(row * B + b) * 32 + lane] = acc[b];
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
  }
  // Weight i of an entry whose raw fields are the top bits of `fields` (3 * low <= 24 <= 32).
  PYCODEC_HD float weight(uint64_t e, uint32_t fields, int i, uint32_t n) const {
    const uint32_t f = uint32_t(i) < n ? (fields >> (32 - a->low * uint32_t(i + 1))) & mask : 0u;
    return bits_float((entry_value(e, i) | f) << 16);
  }
  PYCODEC_HD void put(uint64_t e, uint32_t) {
    const uint32_t n = entry_count(e);
    const uint32_t fields = uint32_t(raw.buf >> 32);
    if (col + n <= a->k) {
      const float w0 = weight(e, fields, 0, n), w1 = weight(e, fields, 1, n), w2 = weight(e, fields, 2, n);
      const float* xp = a->x + size_t(col) * B;
      for (int b = 0; b < B; ++b) {
        acc[b] = fmaf(PYCODEC_LOAD(xp + b), w0, acc[b]);
        acc[b] = fmaf(PYCODEC_LOAD(xp + B + b), w1, acc[b]);
        acc[b] = fmaf(PYCODEC_LOAD(xp + 2 * B + b), w2, acc[b]);
      }
      col += n;
    } else {
      for (uint32_t i = 0; i < n; ++i) {
        if (col == a->k) {
          store_row();
          ++row;
          col = 0;
        }
        const float w = weight(e, fields, int(i), n);
        const float* xp = a->x + size_t(col) * B;
        for (int b = 0; b < B; ++b) acc[b] = fmaf(PYCODEC_LOAD(xp + b), w, acc[b]);
        ++col;
      }
    }
    raw.skip(n * a->low);
  }
  PYCODEC_HD void finish() { store_row(); }
};

// The lane-order butterfly a warp's __shfl_xor_sync reduction computes: every lane ends with
// the same sum, and the emulation adds in exactly this order.
inline float butterfly_sum(float v[32]) {
  for (int off = 16; off > 0; off /= 2) {
    float t[32];
    for (int l = 0; l < 32; ++l) t[l] = v[l] + v[l ^ off];
    for (int l = 0; l < 32; ++l) v[l] = t[l];
  }
  return v[0];
}

}  // namespace windowed
}  // namespace pycodec
