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
// - The kernels decode through value entries (windowed.h): each symbol's weight value as 16 bits
//   beside the codes, so a weight is one byte permute away from a float. A lane walks its range
//   segment by segment (a segment = the columns of one (row, group)), decoding exactly the
//   segment's symbols (decode_count), so entries never straddle a segment and the inner loop
//   has no boundary test. Each entry's 3 slots are always multiplied (absent symbols have value
//   0, adding x * 0): no branch on the count; x therefore carries kXPadRows zero rows past
//   column K-1. (An infinite x in the two columns after a segment would turn into NaN through
//   x * 0: inputs with inf are out of contract, as for any quantized GEMV.)
// - Affine (int / rate) weights, w = (q - z_g) * s_g: values are bf16(q - zc) for a constant zc
//   (the broadcast zero of rate mode when it is an integer, else 0; exact, |q - zc| <= 255), and
//   the rest of the zero point is folded out of the inner loop:
//   sum_k x w = sum_g s_g (sum_{k in g} x (q - zc) - (z_g - zc) sum_{k in g} x), with the x sums
//   from prefix sums of x prepared once per call. Per symbol the inner loop does one byte
//   permute, one load of x and one FMA per batch row.
// - Lossless split weights (split.h; bf16 only on this path): w's bits are
//   (value << low | raw field) << 16, value entries carry value << low, and a second reader
//   fetches the raw fields at bit (position * low).
// - Reads: the kernels' readers do not test bounds (windowed.h, kSlackWords): the host gives
//   payload and raw bits kSlackWords readable words of slack, and a lane whose pass-2 range
//   could read past them (only a corrupt stream: counts that do not match the bits) decodes
//   nothing.
// - All arithmetic is written out as fmaf and plain adds (no expression the compiler could
//   contract differently on host and device).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "windowed.h"

#if defined(__CUDA_ARCH__)
#define PYCODEC_LOAD(p) __ldg(p)
#else
#define PYCODEC_LOAD(p) (*(p))
#endif

namespace pycodec {
namespace windowed {

constexpr int kGemvMaxBatch = 16;
constexpr uint32_t kGemvMaxSlots = 64;  // rows per chunk x batch rows: the per-warp partial sums (8 KiB)
constexpr uint32_t kXPadRows = 3;       // x rows past K read (as zeros) by an entry's absent slots

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

// A v2 stream's pieces as the kernels see them (device pointers, or host pointers in the
// emulation). super / sizes are the blob's chunk index (format.h), payload its words.
struct StreamView {
  const uint32_t* super;
  const uint16_t* sizes;
  const uint32_t* payload;  // payload_words words, then kSlackWords readable words
  uint64_t payload_words;
  uint64_t n_symbols;
  uint32_t chunk_symbols;
  uint64_t n_chunks;
  uint32_t lanes;
  bool constant_code;       // one distinct symbol: zero-bit codes, one lane (the kernels go by the table)
  // The stream's lane start bytes (windowed.h; [n_chunks][lanes]), or null: then pass 1 counts
  // every lane's codes to find where it starts.
  const uint8_t* lane_starts = nullptr;
  uint32_t max_chunk_words = 0;  // the longest chunk's words: what a warp's stream stage holds
};

struct ChunkView {
  const uint32_t* words;
  uint32_t n_words;
  uint32_t m;      // symbols
  uint64_t first;  // position of the chunk's first symbol in the tensor
  uint64_t index;  // the chunk's number
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
  v.index = c;
  const uint64_t left = s.n_symbols - v.first;
  v.m = uint32_t(left < s.chunk_symbols ? left : s.chunk_symbols);
  return v;
}

// Whether the fused GEMV takes this weight and batch: chunks of whole rows (chunk_symbols % k
// == 0), n_symbols == n_rows * k, 1 <= batch <= 16, and rows per chunk x batch (9..15 count
// as 16, the kernels' instantiation) within kGemvMaxSlots.
inline bool gemv_supported(uint64_t n_symbols, uint32_t chunk_symbols, uint32_t n_rows, uint32_t k, uint32_t batch) {
  if (k == 0 || n_symbols != uint64_t(n_rows) * k || chunk_symbols % k != 0) return false;
  const uint32_t padded = batch <= 8 ? batch : 16;
  return batch >= 1 && batch <= uint32_t(kGemvMaxBatch) && uint64_t(chunk_symbols / k) * padded <= kGemvMaxSlots;
}

// What a lane decodes in pass 2, from its pass-1 window count and the warp's scan of them.
struct LaneRange {
  uint32_t start, count;
  bool overrun;  // the last lane needs more codes than its window holds: a corrupt chunk
};

// window_count: this lane's count_window (every lane below `lanes` runs pass 1, the last one
// too, so that its count can be bounded); before / through: the sum of the counts of the lanes
// before it / up to it, excluding the last lane's (the warp's prefix sum).
PYCODEC_HD LaneRange lane_range(uint32_t lane, uint32_t lanes, uint32_t m, uint32_t window_count, uint32_t before,
                                uint32_t through) {
  LaneRange r{m, 0, false};
  if (lane >= lanes) return r;
  r.start = before < m ? before : m;
  const uint32_t end = lane + 1 < lanes ? (through < m ? through : m) : m;
  r.count = end - r.start;
  if (r.count > window_count) {  // lanes before the last cannot: their count is clamped below it
    r.overrun = true;
    r.count = 0;
  }
  return r;
}

// A table of zero-bit entries: a constant code (one symbol, no bits to read).
template <class Entry>
PYCODEC_HD bool constant_table(const Entry* table) {
  return entry_bits(table[0]) == 0;
}

// Whether decoding `count` codes from the start of lane `lane`'s window reads only the payload
// and its slack, whatever the codes: a code takes at most kPeekBits bits, and a reader loads at
// most 3 words past the bits it has taken (FastReader: two in buf, one pending), so its loads
// stay below word (bit0 + kPeekBits count + 96) / 32 <= payload_words + 3 < payload_words +
// kSlackWords.
PYCODEC_HD bool lane_reads_bounded(const StreamView& s, const ChunkView& v, uint32_t lane, uint32_t count) {
  const uint64_t bit0 = uint64_t(v.words - s.payload) * 32u + lane * lane_window_bits(v.n_words, s.lanes);
  return bit0 + uint64_t(kPeekBits) * count <= 32u * s.payload_words;
}

// Pass 1 of one lane: its window count (the whole chunk for a constant code). Constant-ness is
// the table's, not the view's flag: a flag that disagreed could otherwise send count decoding
// of real codes past the chunk.
template <class Entry>
PYCODEC_HD uint32_t lane_window_count(const ChunkView& v, const StreamView& s, const uint8_t* count,
                                      const Entry* table, const uint8_t* length, uint32_t lane) {
  if (lane >= s.lanes) return 0;
  if (constant_table(table)) return v.m;
  const uint64_t window = lane_window_bits(v.n_words, s.lanes);
  FastReader r;
  r.init(v.words, 0, lane * window);
  uint32_t used;
  return count_window(count, table, length, r, uint32_t(window), &used);
}

// A warp's stream stage (the decode and GEMV kernels copy their chunk's words into shared memory,
// StageReader): the longest chunk and the readable slack after it, in whole 16-byte pieces. A
// chunk's copy is its words and slack, cut to the stage (max_chunk_words comes from the host's
// index: a wrong one garbles, never overflows).
PYCODEC_HD uint32_t stream_stage_words(const StreamView& s) {
  return (s.max_chunk_words + kSlackWords + 3u) & ~3u;
}
PYCODEC_HD uint32_t chunk_stage_words(const ChunkView& v, uint32_t stage_words) {
  const uint32_t n = v.n_words + kSlackWords;
  return n < stage_words ? n : stage_words;
}

// Lane l's count from its lane start byte: the byte's count for lanes before the last, 0 for
// the last (its range ends at m). start_byte_escapes: whether lane l's byte marks its chunk as
// one that no byte holds (the kernels then count the chunk).
PYCODEC_HD uint32_t lane_count_from_start_byte(uint8_t b, uint32_t lane, uint32_t lanes, uint32_t m) {
  return lane + 1 < lanes ? lane_count_of_byte(b, m, lanes) : 0u;
}
PYCODEC_HD bool start_byte_escapes(uint8_t b, uint32_t lane, uint32_t lanes) {
  return lane + 1 < lanes && b == kLaneCountEscape;
}

// A lane's pass-2 range from the lane starts instead of pass 1: [start, next), the running sums
// of the counts of the lanes before it and through it (the last lane's range ends at m). Sums
// past m make the lane refuse (overrun). Starts are trusted no further than memory safety needs:
// a lane whose codes could read past the payload's slack (lane_reads_bounded; a valid stream's
// last few lanes) counts its window as pass 1 would and refuses a range longer than that. So a
// wrong byte can garble the output but never make a kernel read or write out of bounds. For a
// valid stream's starts the ranges are exactly lane_range's.
template <class Entry>
PYCODEC_HD LaneRange lane_range_from_starts(const ChunkView& v, const StreamView& s, const uint8_t* count,
                                            const Entry* table, const uint8_t* length, uint32_t lane, uint32_t start,
                                            uint32_t next) {
  LaneRange r{v.m, 0, false};
  if (lane >= s.lanes) return r;
  if (lane + 1 == s.lanes) next = v.m;
  if (start > next || next > v.m) {  // start > next: the last lane, whose range ends at m, past m
    r.overrun = true;
    return r;
  }
  r.start = start;
  r.count = next - start;
  if (!lane_reads_bounded(s, v, lane, r.count) && r.count > lane_window_count(v, s, count, table, length, lane)) {
    r.overrun = true;
    r.count = 0;
  }
  return r;
}

// The weight in value slot i of an entry (bf16 bits in 16 bits, here as a float).
// Value slot i of an entry in the top half of a word (bits << 16).
PYCODEC_HD uint32_t value_bits(uint64_t e, int i) {
#if defined(__CUDA_ARCH__)
  const uint32_t half = i < 2 ? uint32_t(e) : uint32_t(e >> 32);
  return i == 1 ? half & 0xFFFF0000u : __byte_perm(half, 0, 0x1044u);
#else
  return entry_value(e, i) << 16;
#endif
}
PYCODEC_HD float value_weight(uint64_t e, int i) { return bits_float(value_bits(e, i)); }


// A segment-walking lane: the sink says where its current segment ends, the lane decodes up
// to there and closes it.
template <class Entry, class Reader, class Sink>
PYCODEC_HD void gemv_lane(const Entry* table, const uint8_t* length, Reader& r, uint32_t count, Sink& sink) {
  uint32_t done = 0;
  while (done < count) {
    const uint32_t n = sink.segment_left(count - done);
    decode_count(table, length, r, n, sink);
    sink.close_segment(n);
    done += n;
  }
  sink.finish();
}

// ---------------------------------------------------------------------------- affine sink

struct AffineArgs {
  const float* x;         // [k + kXPadRows][batch] fp32: x transposed, zero rows past k
  const float* prefix;    // [k + 1][batch] fp32: prefix[j][b] = x[b][0] + ... + x[b][j-1]; null where
                          // the zero point is folded whole into the values (zero_broadcast and equal to
                          // zero_in_values, rate mode's 128): then no term needs sums of x
  const uint16_t* scale;  // fp16 bits [n_rows][n_groups]
  const uint16_t* zero;   // fp16 bits [n_rows][n_groups], or a single value when zero_broadcast
  uint32_t n_rows, k, group_size, n_groups;
  bool zero_broadcast;
  float zero_in_values;   // zc: the table's values are q - zc
  // Escapes (weights kept exactly; their symbol is the zero point, so they decode to 0): CSR by
  // row, added in the epilogue. escape_row: [n_rows + 1], escape_col / escape_value: one per escape.
  const int32_t* escape_row;  // null: no escapes
  const int32_t* escape_col;
  const float* escape_value;
  uint32_t n_escapes;         // entries of escape_col / escape_value: row pointers are clamped to it
  float* y;               // [batch][n_rows] fp32
};

// y's final value for (row, b): the warp's sum plus the row's escapes, in index order.
// Row pointers and columns are clamped to the escape list and to K, so a damaged list cannot
// make the epilogue read outside its buffers.
template <int B>
PYCODEC_HD float with_escapes(const AffineArgs& a, uint32_t row, int b, float sum) {
  if (!a.escape_row) return sum;
  const int64_t first = PYCODEC_LOAD(a.escape_row + row), last = PYCODEC_LOAD(a.escape_row + row + 1);
  const int64_t end = last < int64_t(a.n_escapes) ? last : int64_t(a.n_escapes);
  for (int64_t e = first > 0 ? first : 0; e < end; ++e) {
    const uint32_t col = uint32_t(PYCODEC_LOAD(a.escape_col + e));
    if (col < a.k) sum = fmaf(PYCODEC_LOAD(a.x + size_t(col) * B + b), PYCODEC_LOAD(a.escape_value + e), sum);
  }
  return sum;
}

// zc of AffineArgs: the broadcast zero point when it is an integer 0..255 (rate mode's 128),
// else 0. Host and emulation agree on it through this one function.
inline float affine_zero_in_values(bool zero_broadcast, uint16_t zero_half) {
  if (!zero_broadcast) return 0.f;
  const float z = half_to_float(zero_half);
  return z >= 0.f && z <= 255.f && float(int(z)) == z ? z : 0.f;
}

// The 16-bit value of every symbol for affine weights: bf16(q - zc), exact for |q - zc| <= 255.
inline void affine_values(float zc, uint16_t value[256]) {
  for (int q = 0; q < 256; ++q) {
    const float f = float(q) - zc;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    value[q] = uint16_t(u >> 16);  // exact: at most 8 significant bits
  }
}

// Where a sink reads x: XGlobal through the read-only cache, XShared with plain loads from a
// block's copy in shared memory (windowed_cuda.cu: kXShared), where __ldg does not apply.
// load4: four floats from a 16-byte aligned address, one vector load on a GPU.
struct XGlobal {
  PYCODEC_HD static float load(const float* p) { return PYCODEC_LOAD(p); }
  PYCODEC_HD static void load4(const float* p, float out[4]) {
#if defined(__CUDA_ARCH__)
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
#else
    std::memcpy(out, p, 16);
#endif
  }
};
struct XShared {
  PYCODEC_HD static float load(const float* p) { return *p; }
  PYCODEC_HD static void load4(const float* p, float out[4]) {
#if defined(__CUDA_ARCH__)
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
#else
    std::memcpy(out, p, 16);
#endif
  }
};

template <int B, class X>
struct AffineSink {
  const AffineArgs* a;
  float* slots;  // this warp's [rows][B][32] partial sums
  uint32_t lane, rows, first_row;
  uint32_t row, col, group, seg_end;  // the current segment: columns [col, seg_end) of (row, group)
  const float* xp;  // x at the next symbol's column (the inner loop only moves this)
  float acc[B];     // sum x (q - zc) over the current segment
  float part[B];    // sum over the closed segments of the current row

  PYCODEC_HD void begin(const AffineArgs& args, float* warp_slots, uint32_t l, const ChunkView& v, uint32_t start) {
    a = &args;
    slots = warp_slots;
    lane = l;
    rows = v.m / a->k;
    first_row = uint32_t(v.first / a->k);
    row = start / a->k;
    col = start % a->k;
    group = col / a->group_size;
    seg_end = segment_end();
    xp = a->x + size_t(col) * B;
    for (int b = 0; b < B; ++b) acc[b] = part[b] = 0.f;
  }
  PYCODEC_HD uint32_t segment_end() const {
    const uint32_t e = (group + 1) * a->group_size;
    return e < a->k ? e : a->k;
  }
  PYCODEC_HD uint32_t segment_left(uint32_t left) const { return seg_end - col < left ? seg_end - col : left; }
  PYCODEC_HD void put(uint64_t e, uint32_t) {
    const float w0 = value_weight(e, 0), w1 = value_weight(e, 1), w2 = value_weight(e, 2);
    for (int b = 0; b < B; ++b) {
      acc[b] = fmaf(X::load(xp + b), w0, acc[b]);
      acc[b] = fmaf(X::load(xp + B + b), w1, acc[b]);
      acc[b] = fmaf(X::load(xp + 2 * B + b), w2, acc[b]);
    }
    xp += entry_count(e) * B;
  }
  // Folds the n symbols decoded since [col, ...) into part: s * (sum x (q - zc) - (z - zc) *
  // sum x); at the segment's end moves on to the next group, or stores the row and moves on.
  PYCODEC_HD void close_segment(uint32_t n) {
    const size_t gi = size_t(first_row + row) * a->n_groups + group;
    const float s = half_to_float(PYCODEC_LOAD(a->scale + gi));
    if (a->prefix) {
      const float z = half_to_float(PYCODEC_LOAD(a->zero + (a->zero_broadcast ? 0 : gi))) - a->zero_in_values;
      const float* p1 = a->prefix + size_t(col + n) * B;
      const float* p0 = a->prefix + size_t(col) * B;
      for (int b = 0; b < B; ++b) {
        const float sum_x = PYCODEC_LOAD(p1 + b) - PYCODEC_LOAD(p0 + b);
        part[b] = fmaf(s, fmaf(-z, sum_x, acc[b]), part[b]);
        acc[b] = 0.f;
      }
    } else {  // the zero point is in the values: s * sum x (q - zc) is the segment's whole part
      for (int b = 0; b < B; ++b) {
        part[b] = fmaf(s, acc[b], part[b]);
        acc[b] = 0.f;
      }
    }
    col += n;
    if (col == a->k) {
      store_row();
      ++row;
      col = 0;
      group = 0;
      xp = a->x;
    } else if (col == seg_end) {
      ++group;
    }
    seg_end = segment_end();
  }
  PYCODEC_HD void store_row() {
    if (row < rows)
      for (int b = 0; b < B; ++b) slots[(row * B + b) * 32 + lane] = part[b];
    for (int b = 0; b < B; ++b) part[b] = 0.f;
  }
  PYCODEC_HD void finish() { store_row(); }
};

// ---------------------------------------------------------------------------- lossless split sink

struct SplitArgs {
  const float* x;       // as AffineArgs::x
  const uint32_t* raw;  // the low bits (split.h), raw_words words and kSlackWords readable past them
  uint64_t raw_words;
  uint32_t n_rows, k, low;  // low = 16 - top
  float* y;             // [batch][n_rows] fp32
};

template <int B>
PYCODEC_HD float with_escapes(const SplitArgs&, uint32_t, int, float sum) {
  return sum;
}

template <int B, class X>
struct SplitSink {
  const SplitArgs* a;
  float* slots;
  uint32_t lane, rows, row, col, low;
  const float* xp;
  FastReader raw;
  float acc[B];

  PYCODEC_HD void begin(const SplitArgs& args, float* warp_slots, uint32_t l, const ChunkView& v, uint32_t start) {
    a = &args;
    slots = warp_slots;
    lane = l;
    rows = v.m / a->k;
    row = start / a->k;
    col = start % a->k;
    low = a->low;
    xp = a->x + size_t(col) * B;
    raw.init(a->raw, 0, (v.first + start) * low);
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
  }
  PYCODEC_HD uint32_t segment_left(uint32_t left) const { return a->k - col < left ? a->k - col : left; }
  // Weight i of an entry whose n raw fields are the top bits of `fields`, those of absent slots
  // cleared (3 * low <= 24): field i shifted to bits 16.. and the bits below masked off in one
  // step, beside the value's bits (value << low, so its low bits are free). An absent slot's
  // weight is exactly 0. One mask per entry instead of a compare and select per slot: 6 fewer
  // instructions per entry in the lossless GEMV loop (bench/sass_count.py).
  PYCODEC_HD float weight(uint64_t e, uint32_t fields, int i) const {
    return bits_float(value_bits(e, i) | (((fields << (low * uint32_t(i))) >> (16 - low)) & 0xFFFF0000u));
  }
  PYCODEC_HD void put(uint64_t e, uint32_t) {
    const uint32_t n = entry_count(e);
    const uint32_t fields = uint32_t(raw.buf >> 32) & ~(0xFFFFFFFFu >> (n * low));
    const float w0 = weight(e, fields, 0), w1 = weight(e, fields, 1), w2 = weight(e, fields, 2);
    for (int b = 0; b < B; ++b) {
      acc[b] = fmaf(X::load(xp + b), w0, acc[b]);
      acc[b] = fmaf(X::load(xp + B + b), w1, acc[b]);
      acc[b] = fmaf(X::load(xp + 2 * B + b), w2, acc[b]);
    }
    xp += n * B;
    raw.skip(n * low);
  }
  PYCODEC_HD void close_segment(uint32_t n) {
    col += n;
    if (col == a->k) {
      store_row();
      ++row;
      col = 0;
      xp = a->x;
    }
  }
  PYCODEC_HD void store_row() {
    if (row < rows)
      for (int b = 0; b < B; ++b) slots[(row * B + b) * 32 + lane] = acc[b];
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
  }
  PYCODEC_HD void finish() { store_row(); }
};

// ---------------------------------------------------------------------------- lossless split decode

// windowed_decode_split: a lossless split weight's 16-bit float bits, value[symbol] | raw field,
// in one kernel. A warp decodes its chunk's symbols into a stage (shared memory), as the decode
// kernel stages them, then all 32 lanes write the chunk out together: lane j takes pieces j,
// j + 32, ... of kSplitPiece weights, one 16-byte store each. So a warp's stores and its raw-bit
// loads are contiguous, where the lanes' own runs of the chunk lie ~m/32 apart; and no symbol
// crosses global memory (decode + split_merge wrote each as a byte and read it back).
struct SplitDecodeArgs {
  const uint16_t* value;  // [256]: values[s] << low (split_values); the kernel copies it to shared memory
  const uint32_t* raw;    // raw_words words of low bits, kSlackWords readable words past them
  uint64_t raw_words;
  uint32_t low;           // 1..8
  uint16_t* out;          // [n_symbols] 16-bit float bits, 2-byte aligned
};

constexpr uint32_t kSplitPiece = 8;  // weights a lane writes per step: 16 bytes

// Two 16-bit floats in one word, lo in the low half (lo, hi < 2^16).
PYCODEC_HD uint32_t pack_halves(uint32_t lo, uint32_t hi) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(lo, hi, 0x5410u);
#else
  return lo | (hi << 16);
#endif
}

// The byte split (split.h: kByteSplitTop): every top byte is its own symbol, so symbol s's
// 16-bit value is s << 8 and a weight's bits are its symbol byte and its raw byte (low = 8). The
// kernels learn it from the values they are given (byte_split_value for every symbol), not from
// a flag that could disagree with them, and then build weights by byte permutes: no value
// lookup, no shifts (bench/sass_count.py: the "byte split" rows).
PYCODEC_HD bool byte_split_value(uint32_t symbol, uint16_t value) { return value == uint16_t(symbol << 8); }

// CUDA's __byte_perm (default mode), and its host twin, so that the selectors below are the
// kernels' on both: byte n of the result is byte (s >> 4n) & 7 of y:x (x bytes 0-3, y bytes 4-7).
PYCODEC_HD uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);
#else
  const uint64_t both = uint64_t(y) << 32 | x;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= uint32_t(both >> (8 * ((s >> (4 * n)) & 7u)) & 0xFFu) << (8 * n);
  return r;
#endif
}

// Four weights' 16-bit bits, two to a word (pair[0] = w1 << 16 | w0, pair[1] = w3 << 16 | w2),
// from their symbols (sym4: little-endian bytes, the first lowest) and their raw bytes (fields4:
// most significant first, as raw_fields8 gives them): w_i = s_i << 8 | f_i, one byte permute a pair.
PYCODEC_HD void byte_split_pairs(uint32_t sym4, uint32_t fields4, uint32_t pair[2]) {
  pair[0] = byte_perm(sym4, fields4, 0x1607u);  // s1 f1 s0 f0, from the top byte down
  pair[1] = byte_perm(sym4, fields4, 0x3425u);  // s3 f3 s2 f2
}

// The 8 weights of a piece as four words of two 16-bit floats (byte_split_pairs), from its 8
// symbols (stage_symbols8's order) and raw bytes (raw_fields8 at low = 8).
PYCODEC_HD void byte_split_piece(uint64_t sym, uint64_t fields, uint32_t w[4]) {
  byte_split_pairs(uint32_t(sym), uint32_t(fields >> 32), w);
  byte_split_pairs(uint32_t(sym >> 32), uint32_t(fields), w + 2);
}

// The raw fields of kSplitPiece weights, left-aligned in 64 bits: 8 * low <= 64 bits from bit
// `bit` of raw (bit < 32 + 2^20: chunk-relative, see write_split_chunk), three words, the last
// at most 2 past the raw bits' end (inside the slack).
PYCODEC_HD uint64_t raw_fields8(const uint32_t* raw, uint32_t bit) {
  const uint32_t* p = raw + (bit >> 5);
  const uint32_t off = bit & 31u;
  const uint64_t head = (uint64_t(PYCODEC_LOAD(p)) << 32) | PYCODEC_LOAD(p + 1);
  return (head << off) | ((uint64_t(PYCODEC_LOAD(p + 2)) << off) >> 32);
}

// One weight's bits from its symbol and its field at bit `bit` of raw (the head and tail of a
// chunk's output).
PYCODEC_HD uint16_t split_weight(const uint16_t* value, uint8_t symbol, const uint32_t* raw, uint32_t bit,
                                 uint32_t low) {
  const uint32_t* p = raw + (bit >> 5);
  const uint64_t both = (uint64_t(PYCODEC_LOAD(p)) << 32) | PYCODEC_LOAD(p + 1);
  return uint16_t(value[symbol] | uint32_t((both << (bit & 31u)) >> (64 - low)));
}

// Weights j .. j + 7 of a chunk from their 8 symbols (sym: little-endian, the first in the low
// byte) and their fields (raw_fields8) as four words of two 16-bit floats, for one 16-byte store.
// kLow is a template argument so that every shift and mask is an immediate: with `low` in a
// register, nvcc recomputed most of the eight shift amounts in every iteration.
template <uint32_t kLow>
PYCODEC_HD void split_piece(const uint16_t* value, uint64_t sym, uint64_t fields, uint32_t w[4]) {
  constexpr uint32_t kMask = (1u << kLow) - 1u;
  for (int k = 0; k < 4; ++k) {
    const uint32_t lo = value[uint8_t(sym >> (16 * k))] | (uint32_t(fields >> (64 - kLow * (2 * k + 1))) & kMask);
    const uint32_t hi = value[uint8_t(sym >> (16 * k + 8))] | (uint32_t(fields >> (64 - kLow * (2 * k + 2))) & kMask);
    w[k] = pack_halves(lo, hi);
  }
}

// The whole pieces of a chunk's output, lane j taking pieces j, j + 32, ...: stage + lead and
// out + lead are where they start, raw the word holding the chunk's first field and `bit` that
// field's bit in it. kAligned: the pieces fall on 8-byte boundaries of the stage (lead == 0; the
// stage is 16-byte aligned), so 8 symbols are one 8-byte load. kBytes: a byte split's (kLow = 8),
// whose weights are byte permutes of symbols and raw bytes. One loop per (kAligned, kLow, kBytes),
// so that none carries another's loads or computes its shifts.
template <bool kAligned, uint32_t kLow, bool kBytes = false>
PYCODEC_HD void write_split_pieces(const uint16_t* value, const uint8_t* stage, const uint32_t* raw, uint32_t bit,
                                   uint16_t* out, uint32_t lead, uint32_t pieces, uint32_t lane) {
  for (uint32_t p = lane; p < pieces; p += 32) {
    const uint32_t j = lead + p * kSplitPiece;
    uint64_t sym = 0;
    if (kAligned) {
#if defined(__CUDA_ARCH__)
      const uint2 pair = *reinterpret_cast<const uint2*>(stage + j);
      sym = (uint64_t(pair.y) << 32) | pair.x;
#else
      std::memcpy(&sym, stage + j, 8);  // little-endian hosts only, as the whole codec
#endif
    } else {
      for (int b = 0; b < 8; ++b) sym |= uint64_t(stage[j + b]) << (8 * b);
    }
    uint32_t w[4];
    if (kBytes)
      byte_split_piece(sym, raw_fields8(raw, bit + j * 8u), w);
    else
      split_piece<kLow>(value, sym, raw_fields8(raw, bit + j * kLow), w);
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<uint4*>(out + j) = make_uint4(w[0], w[1], w[2], w[3]);
#else
    std::memcpy(out + j, w, 16);
#endif
  }
}

template <bool kAligned>
PYCODEC_HD void write_split_pieces(const uint16_t* value, const uint8_t* stage, const uint32_t* raw, uint32_t bit,
                                   uint32_t low, bool bytes, uint16_t* out, uint32_t lead, uint32_t pieces,
                                   uint32_t lane) {
  if (bytes) return write_split_pieces<kAligned, 8, true>(value, stage, raw, bit, out, lead, pieces, lane);
  switch (low) {  // 16-bit floats cut at split::kMinTop..kMaxTop = 8..12 top bits; 1..3 for other cuts
    case 1: return write_split_pieces<kAligned, 1>(value, stage, raw, bit, out, lead, pieces, lane);
    case 2: return write_split_pieces<kAligned, 2>(value, stage, raw, bit, out, lead, pieces, lane);
    case 3: return write_split_pieces<kAligned, 3>(value, stage, raw, bit, out, lead, pieces, lane);
    case 4: return write_split_pieces<kAligned, 4>(value, stage, raw, bit, out, lead, pieces, lane);
    case 5: return write_split_pieces<kAligned, 5>(value, stage, raw, bit, out, lead, pieces, lane);
    case 6: return write_split_pieces<kAligned, 6>(value, stage, raw, bit, out, lead, pieces, lane);
    case 7: return write_split_pieces<kAligned, 7>(value, stage, raw, bit, out, lead, pieces, lane);
    default: return write_split_pieces<kAligned, 8>(value, stage, raw, bit, out, lead, pieces, lane);  // checked: <= 8
  }
}

// Lane `lane`'s share of writing a chunk out: stage[0, m) are the symbols of weights first ..
// first + m - 1. The weights before the output's first 16-byte boundary and those after the
// whole pieces go one per lane. Field positions are chunk-relative 32-bit bit offsets (m <= 2^17
// weights of <= 8 bits), so the loop does no 64-bit multiply. bytes: a.low is 8 and every
// value[s] is byte_split_value's (the caller checks all 256), so the pieces are byte permutes.
PYCODEC_HD void write_split_chunk(const SplitDecodeArgs& a, const uint16_t* value, const uint8_t* stage,
                                  uint64_t first, uint32_t m, uint32_t lane, bool bytes) {
  uint16_t* out = a.out + first;
  const uint64_t first_bit = first * a.low;
  const uint32_t* raw = a.raw + (first_bit >> 5);
  const uint32_t bit = uint32_t(first_bit & 31u), low = a.low;
  const uint32_t head = uint32_t((16u - (reinterpret_cast<uintptr_t>(out) & 15u)) & 15u) / 2;
  const uint32_t lead = head < m ? head : m;
  const uint32_t pieces = (m - lead) / kSplitPiece;
  if (lane < lead) out[lane] = split_weight(value, stage[lane], raw, bit + lane * low, low);
  if (lead == 0)
    write_split_pieces<true>(value, stage, raw, bit, low, bytes, out, lead, pieces, lane);
  else
    write_split_pieces<false>(value, stage, raw, bit, low, bytes, out, lead, pieces, lane);
  for (uint32_t j = lead + pieces * kSplitPiece + lane; j < m; j += 32)
    out[j] = split_weight(value, stage[j], raw, bit + j * low, low);
}

// ---------------------------------------------------------------------------- lossless GEMV, staged

// The lossless GEMV's staged route (windowed_cuda.cu: staged_gemv_kernel). The fused route
// (SplitSink) multiplies each weight where its lane decodes it, so a warp's loads of x and of the
// raw bits touch ~32 cache lines (lanes hold runs ~K/32 apart; ncu on an H200: most stall cycles
// waited on L1). Here the warp decodes its chunk's symbols into a stage in shared memory (the
// decode kernel's pass 2, RunByteSink), then lane j takes pieces j, j + 32, ... of 8 columns of
// each row: value[symbol] | raw field, as floats, times x. A warp's raw loads and x loads are
// then contiguous. The tables are the multi-symbol table (16 KiB, not the 32 KiB of value
// entries) and each symbol's 16-bit value (split_value_of_entry), in shared memory.
constexpr uint32_t kStagedGemvMaxChunk = 16384;  // symbols: a stage any sm_80+ block can hold

// Whether a lossless GEMV may take the staged route: rows of whole pieces (K % 8 == 0, so every
// piece lies in one row, 8-byte aligned in the stage) and chunks of at most kStagedGemvMaxChunk
// symbols. It depends on the weight only, so the emulation takes the route the kernel takes.
PYCODEC_HD bool split_gemv_stages(uint32_t k, uint32_t chunk_symbols) {
  return k % kSplitPiece == 0 && chunk_symbols <= kStagedGemvMaxChunk;
}

// value[s] from table entry i: an entry's first slot holds its first code's symbol (multi-symbol
// table) and that symbol's value (value entries). Every symbol of the code is some entry's first.
PYCODEC_HD void split_value_of_entry(const uint32_t* multi, const uint64_t* values, uint32_t i, uint16_t* value) {
  value[entry_symbol(multi[i], 0)] = uint16_t(PYCODEC_LOAD(values + i));
}

// 8 symbols of the stage from an 8-byte aligned place, the first in the low byte.
PYCODEC_HD uint64_t stage_symbols8(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  const uint2 pair = *reinterpret_cast<const uint2*>(p);
  return (uint64_t(pair.y) << 32) | pair.x;
#else
  uint64_t v;
  std::memcpy(&v, p, 8);  // little-endian hosts only, as the whole codec
  return v;
#endif
}

// x[column][0 .. B) into out; kVec: x is 16-byte aligned, so rows of 4, 8 or 16 floats are
// vector loads (the values, and so the sums, are the same either way).
template <int B, class X, bool kVec>
PYCODEC_HD void load_x_column(const float* p, float out[B]) {
  if (kVec && B % 4 == 0) {
    for (int q = 0; q < B / 4; ++q) X::load4(p + 4 * q, out + 4 * q);
  } else {
    for (int b = 0; b < B; ++b) out[b] = X::load(p + b);
  }
}

// The staged GEMVs' step: acc[b] += x[c + i][b] * weight(i) for the 8 columns of a piece, in
// column order; xp is x at its first column (at B = 1, two vector loads where kVec).
template <int B, class X, bool kVec, class Weight>
PYCODEC_HD void piece_dot(const float* xp, Weight weight, float acc[B]) {
  float xs8[kSplitPiece];
  if (B == 1) {
    if (kVec) {
      X::load4(xp, xs8);
      X::load4(xp + 4, xs8 + 4);
    } else {
      for (uint32_t i = 0; i < kSplitPiece; ++i) xs8[i] = X::load(xp + i);
    }
  }
  for (uint32_t i = 0; i < kSplitPiece; ++i) {
    const float w = weight(i);
    if (B == 1) {
      acc[0] = fmaf(xs8[i], w, acc[0]);
    } else {
      float xb[B];
      load_x_column<B, X, kVec>(xp + i * B, xb);
      for (int b = 0; b < B; ++b) acc[b] = fmaf(xb[b], w, acc[b]);
    }
  }
}

// A byte split's staged lane at B > 1: lane j takes columns j, j + 32, ... of each row, one at a
// time, where pieces of 8 would put a warp's x loads on the same banks. x's rows are B floats,
// so a piece's lanes sit 32 B x B apart: at B = 4 every lane's 16-byte load of a column falls on
// the same four banks (32 wavefronts where 4 carry the warp's 512 bytes) or, from global
// memory, on 32 lines. Here a warp's loads of a column step are contiguous: its symbols (32
// bytes), its raw bytes (raw field i is byte i ^ 3 of the raw words: most significant first in
// little-endian words) and x (32 x B floats). Weights in column order per lane, as the emulation.
template <int B, class X, bool kVec>
PYCODEC_HD void staged_byte_columns_lane(const SplitArgs& a, const uint8_t* stage, const float* x, uint64_t first,
                                         uint32_t rows, float* slots, uint32_t lane) {
  const uint8_t* raw_bytes = reinterpret_cast<const uint8_t*>(a.raw);
  for (uint32_t r = 0; r < rows; ++r) {
    float acc[B];
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
    const uint8_t* row_symbols = stage + size_t(r) * a.k;
    const uint64_t row_first = first + uint64_t(r) * a.k;
    for (uint32_t c = lane; c < a.k; c += 32) {
      const uint32_t symbol = row_symbols[c], field = PYCODEC_LOAD(raw_bytes + ((row_first + c) ^ 3u));
      const float w = bits_float(symbol << 24 | field << 16);
      float xb[B];
      load_x_column<B, X, kVec>(x + size_t(c) * B, xb);
      for (int b = 0; b < B; ++b) acc[b] = fmaf(xb[b], w, acc[b]);
    }
    for (int b = 0; b < B; ++b) slots[(r * B + b) * 32 + lane] = acc[b];
  }
}

// Pieces of a staged chunk (staged_split_lane): per piece, 8 symbols in one load, their raw
// fields in at most three, the 8 weights built as in write_split_chunk (kBytes: a byte split's
// at batch 1, by byte permutes, the same weights; its pieces' raw bytes are two whole words, so
// it needs first % 4 == 0: staged_lane_bytes), then 8 multiply-adds per batch row in column order.
template <int B, class X, bool kVec, bool kBytes>
PYCODEC_HD void staged_split_pieces_lane(const SplitArgs& a, const uint16_t* value, const uint8_t* stage,
                                         const float* x, uint64_t first, uint32_t rows, float* slots, uint32_t lane) {
  const uint32_t low = kBytes ? 8u : a.low, mask = (1u << low) - 1u;
  const uint64_t first_bit = first * low;
  const uint32_t* raw = a.raw + (first_bit >> 5);
  const uint32_t bit0 = uint32_t(first_bit & 31u);
  const uint32_t pieces = a.k / kSplitPiece;
  for (uint32_t r = 0; r < rows; ++r) {
    float acc[B];
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
    // kBytes: the piece's raw bytes are two whole words, walked by a pointer (no 64-bit index math)
    const uint32_t* piece_raw = raw + (r * a.k + lane * kSplitPiece) / 4;
    for (uint32_t p = lane; p < pieces; p += 32, piece_raw += 32 * kSplitPiece / 4) {
      const uint32_t c = p * kSplitPiece, j = r * a.k + c;
      const uint64_t sym = stage_symbols8(stage + j);
      const uint64_t fields = kBytes ? uint64_t(PYCODEC_LOAD(piece_raw)) << 32 | PYCODEC_LOAD(piece_raw + 1)
                                     : raw_fields8(raw, bit0 + j * low);
      uint32_t pairs[4];  // kBytes: the piece's weights two to a word
      if (kBytes) byte_split_piece(sym, fields, pairs);
      piece_dot<B, X, kVec>(x + size_t(c) * B, [&](uint32_t i) {
        return kBytes ? bits_float(i % 2 ? pairs[i / 2] & 0xFFFF0000u : pairs[i / 2] << 16)
                      : bits_float((value[uint8_t(sym >> (8 * i))] | (uint32_t(fields >> (64 - low * (i + 1))) & mask))
                                   << 16);
      }, acc);
    }
    for (int b = 0; b < B; ++b) slots[(r * B + b) * 32 + lane] = acc[b];
  }
}

// One lane's share of a staged chunk: the chunk's `rows` rows are stage[0, rows * K) (weights
// from tensor position `first`); its partial sums of each (row, b) go to slots[row][b][lane],
// as SplitSink's do, for the same butterfly. A byte split (kBytes) above batch 1 goes a column
// at a time (staged_byte_columns_lane), anything else by pieces of 8 columns.
template <int B, class X, bool kVec, bool kBytes>
PYCODEC_HD void staged_split_lane(const SplitArgs& a, const uint16_t* value, const uint8_t* stage, const float* x,
                                  uint64_t first, uint32_t rows, float* slots, uint32_t lane) {
  if constexpr (kBytes && B > 1)
    staged_byte_columns_lane<B, X, kVec>(a, stage, x, first, rows, slots, lane);
  else
    staged_split_pieces_lane<B, X, kVec, kBytes>(a, value, stage, x, first, rows, slots, lane);
}

// Whether a staged lossless GEMV's weight is a byte split: low 8 and, for each of the table's
// entries, its first symbol's value byte_split_value's (split_value_of_entry's values; every
// symbol a chunk can decode is some entry's first). The kernel checks its share of the entries
// and takes a block vote.
PYCODEC_HD bool entry_is_byte_split(const uint32_t* multi, const uint64_t* values, uint32_t i) {
  return byte_split_value(entry_symbol(multi[i], 0), uint16_t(PYCODEC_LOAD(values + i)));
}

// Whether a staged GEMV's lanes take a chunk's byte-split instance: a byte split (the block's
// vote) whose chunk starts on a raw word, as every chunk of whole rows of K % 8 == 0 does.
PYCODEC_HD bool staged_lane_bytes(bool byte_split, uint64_t first) { return byte_split && first % 4 == 0; }

// Whether the split decode writes a byte split's pieces: low 8 and all 256 values byte_split_value's
// (the kernel's vote over its threads' shares of them).
inline bool split_decode_bytes(const SplitDecodeArgs& a, const uint16_t* value) {
  bool bytes = a.low == 8;
  for (uint32_t sym = 0; sym < 256; ++sym) bytes = bytes && byte_split_value(sym, value[sym]);
  return bytes;
}

// ---------------------------------------------------------------------------- affine GEMV, staged

// The rate GEMV's staged route (windowed_cuda.cu: staged_gemv_kernel with AffineArgs), beside the
// fused one (AffineSink). The fused GEMV loads x three times a table entry at banks that lanes
// share (their runs lie ~K/32 apart), and a 64-bit value entry: ~17 shared-memory wavefronts an
// entry against ~7 cycles of issue (an estimate, not a measurement). Here a warp decodes its
// chunk's symbols into a stage (the decode kernel's pass 2), then lane j multiplies pieces j, j +
// 32, ... of 8 columns: 8 symbols in one load, x in two vector loads, contiguous across the warp.
// Only for weights whose zero point lies whole in the values (no prefix sums: rate mode's
// broadcast 128) and one group a row (rate mode's one step a row), so a row's sum is s * sum x (q - zc);
// and at batch 1: with B > 1, x's rows of B floats put the 8-column pieces of a warp's lanes 32 B
// x B apart, on the same banks (B = 4: each 16-byte load of a column ~32 wavefronts, an estimate),
// where the fused GEMV's x loads are not so aligned.
PYCODEC_HD bool affine_gemv_stages(const AffineArgs& a, uint32_t chunk_symbols, uint32_t batch) {
  return batch == 1 && !a.prefix && a.n_groups == 1 && a.k % kSplitPiece == 0 && chunk_symbols <= kStagedGemvMaxChunk;
}

// q - zc as a float, exactly, from symbol byte i of sym4: 0x4B0000qq is 2^23 + q, and `offset`
// is 2^23 + zc (zc an integer 0..255: affine_zero_in_values), so one exact subtraction.
PYCODEC_HD float affine_stage_value(uint32_t sym4, uint32_t i, float offset) {
  return bits_float(byte_perm(sym4, 0x4B000000u, 0x7540u | i)) - offset;
}

// One lane's share of a staged affine chunk (affine_gemv_stages): its pieces of every row, summed
// in column order per batch row, times the row's scale, into slots[row][b][lane] (AffineSink's
// slots, for the same butterfly and escapes).
template <int B, class X, bool kVec>
PYCODEC_HD void staged_affine_lane(const AffineArgs& a, const uint8_t* stage, const float* x, uint64_t first,
                                   uint32_t rows, float* slots, uint32_t lane) {
  const float offset = 8388608.f + a.zero_in_values;
  const uint32_t pieces = a.k / kSplitPiece, first_row = uint32_t(first / a.k);
  for (uint32_t r = 0; r < rows; ++r) {
    float acc[B];
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
    for (uint32_t p = lane; p < pieces; p += 32) {
      const uint32_t c = p * kSplitPiece;
      const uint64_t sym = stage_symbols8(stage + r * a.k + c);
      piece_dot<B, X, kVec>(x + size_t(c) * B, [&](uint32_t i) {
        return affine_stage_value(uint32_t(sym >> (32 * (i / 4))), i % 4, offset);
      }, acc);
    }
    const float s = half_to_float(PYCODEC_LOAD(a.scale + size_t(first_row + r) * a.n_groups));
    for (int b = 0; b < B; ++b) slots[(r * B + b) * 32 + lane] = s * acc[b];
  }
}

// ---------------------------------------------------------------------------- launch arguments

// One set of checks for the CUDA entry points and their host twins (emulate.h: host::), so the
// CPU tests refuse exactly what a launch refuses. Addresses are checked for presence and the
// alignment of the loads that read them; that they point into memory of the right size is the
// caller's contract (the Python ops size every buffer from the same layout).
inline bool misaligned(const void* p, uintptr_t align) { return (reinterpret_cast<uintptr_t>(p) & (align - 1)) != 0; }

inline Status check_view(const StreamView& s, const void* table) {
  if (s.lanes < 1 || s.lanes > 32 || s.chunk_symbols < 1 || s.chunk_symbols > kMaxChunkSymbols ||
      (s.constant_code && s.lanes != 1))
    return Status::BadArgument;
  if (s.n_chunks != (s.n_symbols + s.chunk_symbols - 1) / s.chunk_symbols) return Status::BadArgument;
  // Lanes load their first words even from an empty chunk: the payload's slack must be there.
  if (s.n_chunks && (!s.super || !s.sizes || !table || !s.payload)) return Status::BadArgument;
  if (s.payload_words > 0xFFFFFFFFull) return Status::TooLarge;  // lanes address payload words in 32 bits
  if (misaligned(s.super, 4) || misaligned(s.payload, 4) || misaligned(s.sizes, 2) || misaligned(table, 16))
    return Status::BadArgument;
  return Status::Ok;
}

inline Status check_decode(const StreamView& s, const void* table, const void* out, const void* status) {
  const Status st = check_view(s, table);
  if (st != Status::Ok) return st;
  return s.n_chunks && (!out || !status || misaligned(status, 4)) ? Status::BadArgument : Status::Ok;
}

// Whether an entry and its count byte let every decoding loop make progress and stay in its
// range: each entry holds 1..kMaxPerEntry codes (decode_count's steps take at most that many from
// what is left; a larger count would wrap it and send the writes past the lane's range), and
// outside a constant table each entry and count byte consumes bits. The kernels check every
// entry of their tables once per block (the host twins once per call), so a table that did not
// come from the stream's code (kernel_tables) can garble the output but never hang a loop nor
// move a write or a read of x outside its buffer.
template <class Entry>
PYCODEC_HD bool table_entry_ok(Entry e, bool constant) {
  return entry_count(e) >= 1 && entry_count(e) <= uint32_t(kMaxPerEntry) && (constant || entry_bits(e) >= 1);
}
PYCODEC_HD bool count_byte_ok(uint8_t c, bool constant) { return constant || count_bits(c) >= 1; }

template <class Entry>
inline bool tables_ok(const Entry* table, const uint8_t* count) {
  const bool constant = constant_table(table);
  for (uint32_t v = 0; v < kTableSize; ++v)
    if (!table_entry_ok(table[v], constant) || !count_byte_ok(count[v], constant)) return false;
  return true;
}

// The batch sizes the GEMV kernels are instantiated for: 1..8 and 16 (callers pad 9..15 to 16).
inline bool batch_instantiated(uint32_t batch) { return (batch >= 1 && batch <= 8) || batch == 16; }

// fn(std::integral_constant<int, B>{}) for B = batch, one of batch_instantiated's sizes: the one
// list that the kernels' launches and their emulation instantiate. `other` for any other batch.
template <class Result, class Fn>
inline Result with_batch(uint32_t batch, Result other, Fn fn) {
  switch (batch) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    case 8: return fn(std::integral_constant<int, 8>{});
    case 16: return fn(std::integral_constant<int, 16>{});
    default: return other;
  }
}

// The buffers of an affine launch (AffineArgs, TileArgs: the same names): present where there
// is work, aligned for their loads (x to x_align bytes), escapes complete when there are any.
template <class Args>
inline bool affine_buffers_ok(const StreamView& s, const Args& a, uintptr_t x_align) {
  // prefix may be null only with a broadcast zero (AffineArgs::prefix)
  if (s.n_chunks && (!a.x || (!a.prefix && !a.zero_broadcast) || !a.scale || !a.zero || !a.y ||
                     misaligned(a.x, x_align) || misaligned(a.prefix, 4) || misaligned(a.y, 4) ||
                     misaligned(a.scale, 2) || misaligned(a.zero, 2)))
    return false;
  return !(a.escape_row && a.n_escapes && (!a.escape_col || !a.escape_value || misaligned(a.escape_row, 4) ||
                                           misaligned(a.escape_col, 4) || misaligned(a.escape_value, 4)));
}

inline Status check_affine(const StreamView& s, const void* value_table, const void* table, const AffineArgs& a,
                           uint32_t batch) {
  const Status st = check_view(s, value_table);
  if (st != Status::Ok) return st;
  if (!batch_instantiated(batch) || !gemv_supported(s.n_symbols, s.chunk_symbols, a.n_rows, a.k, batch) ||
      a.group_size == 0 || a.n_groups != (uint64_t(a.k) + a.group_size - 1) / a.group_size || !table ||
      misaligned(table, 16))
    return Status::BadArgument;
  return affine_buffers_ok(s, a, 4) ? Status::Ok : Status::BadArgument;
}

inline Status check_split(const StreamView& s, const void* value_table, const void* table, const SplitArgs& a,
                          uint32_t batch) {
  const Status st = check_view(s, value_table);
  if (st != Status::Ok) return st;
  if (!batch_instantiated(batch) || !gemv_supported(s.n_symbols, s.chunk_symbols, a.n_rows, a.k, batch) ||
      a.low < 1 || a.low > 8 || !table || misaligned(table, 16) || a.raw_words != (s.n_symbols * a.low + 31) / 32)
    return Status::BadArgument;
  if (s.n_chunks && (!a.x || !a.y || (a.raw_words && !a.raw) || misaligned(a.x, 4) || misaligned(a.raw, 4) ||
                     misaligned(a.y, 4)))
    return Status::BadArgument;
  return Status::Ok;
}

inline Status check_merge(const void* symbols, uint64_t n, const void* values, const void* raw, uint64_t raw_words,
                          uint32_t low, const void* out) {
  if (low > 16 || (n * low + 31) / 32 != raw_words) return Status::BadArgument;
  if (n && (!symbols || !values || !out || (low && !raw) || misaligned(values, 2) || misaligned(raw, 4) ||
            misaligned(out, 2)))
    return Status::BadArgument;
  return Status::Ok;
}

inline Status check_split_decode(const StreamView& s, const void* table, const SplitDecodeArgs& a,
                                 const void* status) {
  const Status st = check_decode(s, table, a.out, status);
  if (st != Status::Ok) return st;
  if (a.low < 1 || a.low > 8 || a.raw_words != (s.n_symbols * a.low + 31) / 32) return Status::BadArgument;
  if (s.n_chunks && (!a.value || (a.raw_words && !a.raw) || misaligned(a.value, 2) || misaligned(a.raw, 4) ||
                     misaligned(a.out, 2)))
    return Status::BadArgument;
  return Status::Ok;
}

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
