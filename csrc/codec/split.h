// pycodec codec core: lossless floats as (entropy-coded top bits, raw low bits).
//
// Read me first
// - A float of `width` bits (16 for bf16/fp16, 32 for fp32) is cut at `top` bits: the top
//   part (sign, exponent, the first mantissa bits) carries almost all of the redundancy, the
//   low width - top mantissa bits are close to uniform. The distinct top values of a tensor
//   (at most kMaxValues) are numbered in ascending order; the numbers are the symbols of a
//   pycodec stream and `values[symbol]` maps them back. The low bits are stored raw.
// - Why not exponent and sign+mantissa byte planes: coding the exponent alone leaves its
//   dependence on the first mantissa bits (density falls within a binade) in the raw plane,
//   and Huffman's integer code lengths cost ~1.5% on a 2.6-bit exponent. Joining sign and
//   two mantissa bits gives a ~4.6-bit symbol that Huffman codes within ~0.7% of its entropy
//   and captures that dependence: SmolLM2 bf16 10.63 bits/weight against 10.68 for Huffman
//   byte planes (bench/bench_lossless.py).
// - `top` is chosen per tensor among kMinTop..kMaxTop (the fewest estimated bits with at most
//   kMaxValues distinct top values); kMinTop = 8 always qualifies.
// - The byte split (plan_from_counts with kByteSplitTop, a caller's choice): top = 8 and every
//   top byte is its own symbol (values[s] = s, all 256 listed, absent ones with count 0). A
//   16-bit float is then its symbol byte and its raw byte, so a GPU kernel builds weights by
//   byte permutes, with no value lookup and no shifts; and ~2.8-bit symbols give ~2.9 codes a
//   12-bit table entry where the smallest split's ~4.6-bit ones give ~2.2: about half the
//   instructions per weight of the lossless kernels (bench/sass_count.py), for ~0.15 bits a
//   weight more (SmolLM2 bf16 10.78 against 10.63, bench/bench_lossless.py).
// - Raw bits: field i (low = width - top bits) at bit offset i * low of a bit string of 32-bit
//   little-endian words, most significant bit first, zero-padded to a whole word: the same
//   convention as a stream payload, so a GPU lane reads both with one kind of bit reader.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "huffman.h"
#include "split_vbmi.h"
#include "status.h"
#include "windowed.h"

namespace pycodec {
namespace split {

constexpr int kMinTop = 8;                 // <= 256 distinct values whatever the data
constexpr int kMaxTop = 12;                // 4096 counters; more top bits stop paying on weights
constexpr uint32_t kMaxValues = 256;       // symbols are bytes
constexpr uint32_t kCounters = 1u << kMaxTop;
constexpr int kByteSplitTop = kMinTop;     // plan_from_counts(..., forced_top): the byte split

struct Plan {
  int width;  // 16 or 32
  int top;
  uint32_t n_values;
  uint32_t values[kMaxValues];  // ascending top values; symbol s decodes to values[s]
  uint64_t counts[kMaxValues];  // symbol s occurs counts[s] times (the planning's count gives them)
  uint64_t estimated_bits;      // Huffman-coded symbols + raw bits + values table
};

inline uint64_t raw_words(uint64_t n, int low) { return (n * uint64_t(low) + 31) / 32; }

// Adds the counts of the top kMaxTop bits of n floats to finest[kCounters], the one pass over
// the data that planning needs (callers may count parts of a tensor in parallel and sum).
template <class T>
inline void count_top_bits(const T* bits, uint64_t n, uint64_t* finest) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit floats");
  constexpr int kShift = 8 * int(sizeof(T)) - kMaxTop;
  // Four histograms, so that runs of one value (the norm in weights) do not chain each count on
  // the one before.
  std::vector<uint32_t> sub(4 * size_t(kCounters), 0);
  uint64_t i = 0;
  while (i + 4 <= n) {
    const uint64_t stop = i + std::min<uint64_t>((n - i) / 4 * 4, uint64_t(1) << 31);  // u32 counts
    for (; i < stop; i += 4)
      for (int h = 0; h < 4; ++h) ++sub[h * size_t(kCounters) + (bits[i + h] >> kShift)];
    for (uint32_t v = 0; v < 4 * kCounters; ++v) finest[v % kCounters] += sub[v];
    std::fill(sub.begin(), sub.end(), 0);
  }
  for (; i < n; ++i) ++finest[bits[i] >> kShift];
}

// The estimated bits of a plan whose values and counts are set: Huffman-coded symbols, the
// stream's lane padding and index (about 1% of the coded bits, windowed.h), raw bits, values.
inline Status estimate_plan_bits(uint64_t n, Plan* p) {
  uint64_t sym_counts[kMaxValues] = {0};
  std::copy(p->counts, p->counts + p->n_values, sym_counts);
  huffman::Code code;
  if (huffman::build_code(sym_counts, code) != Status::Ok) return Status::BadArgument;
  uint64_t coded = 0;
  for (uint32_t s = 0; s < p->n_values; ++s) coded += sym_counts[s] * code.length[s];
  p->estimated_bits = coded + coded / 100 + n * uint64_t(p->width - p->top) + 32ull * p->n_values;
  return Status::Ok;
}

// The byte split's plan (kByteSplitTop, every top byte its own symbol) from the top-bit counts.
inline Status byte_split_plan(const uint64_t* finest, int width, uint64_t n, Plan* plan) {
  Plan p{};
  p.width = width;
  p.top = kByteSplitTop;
  p.n_values = kMaxValues;
  for (uint32_t v = 0; v < kCounters; ++v) p.counts[v >> (kMaxTop - kByteSplitTop)] += finest[v];
  for (uint32_t s = 0; s < kMaxValues; ++s) p.values[s] = s;
  const Status st = estimate_plan_bits(n, &p);
  if (st == Status::Ok) *plan = p;
  return st;
}

// The plan for n floats of `width` bits from their top-bit counts (count_top_bits): the fewest
// estimated bits (forced_top 0) or the byte split (forced_top kByteSplitTop; any other value is
// BadArgument).
inline Status plan_from_counts(const uint64_t* finest, int width, uint64_t n, Plan* plan, int forced_top = 0) {
  if (forced_top == kByteSplitTop) return byte_split_plan(finest, width, n, plan);
  if (forced_top != 0) return Status::BadArgument;
  std::vector<uint64_t> counts(kCounters);
  Plan best{};
  best.estimated_bits = UINT64_MAX;
  for (int top = kMinTop; top <= kMaxTop; ++top) {
    std::fill(counts.begin(), counts.end(), 0);
    for (uint32_t v = 0; v < kCounters; ++v) counts[v >> (kMaxTop - top)] += finest[v];
    Plan p{};
    p.width = width;
    p.top = top;
    uint64_t sym_counts[256] = {0};
    for (uint32_t v = 0; v < (1u << top); ++v) {
      if (!counts[v]) continue;
      if (p.n_values == kMaxValues) {
        p.n_values = kMaxValues + 1;
        break;
      }
      sym_counts[p.n_values] = counts[v];
      p.values[p.n_values++] = v;
    }
    if (p.n_values > kMaxValues) continue;
    std::copy(sym_counts, sym_counts + p.n_values, p.counts);
    if (estimate_plan_bits(n, &p) != Status::Ok) return Status::BadArgument;
    if (p.estimated_bits < best.estimated_bits) best = p;
  }
  if (best.estimated_bits == UINT64_MAX) return Status::BadArgument;
  *plan = best;
  return Status::Ok;
}

template <class T>
inline Status make_plan(const T* bits, uint64_t n, Plan* plan, int forced_top = 0) {
  std::vector<uint64_t> finest(kCounters, 0);
  count_top_bits(bits, n, finest.data());
  return plan_from_counts(finest.data(), 8 * int(sizeof(T)), n, plan, forced_top);
}

// A plan's symbol of each top value (number[top value] = its index in values). For the vector
// split (split_vbmi.h): the 128-value ranges that hold a nonzero number (the others give 0,
// looked up or not; a bf16 weight's values lie in two of eight), and its raw bytes' permute.
struct Numbering {
  uint8_t number[kCounters];
  uint8_t pairs[kCounters / 128];
  uint32_t n_pairs = 0;
  alignas(64) uint8_t from_qwords[vbmi::kBlock];
  explicit Numbering(const Plan& p) {
    std::memset(number, 0, sizeof(number));
    for (uint32_t s = 0; s < p.n_values; ++s) number[p.values[s]] = uint8_t(s);
    for (uint32_t k = 0; k < kCounters / 128; ++k)
      if (std::any_of(number + 128 * k, number + 128 * (k + 1), [](uint8_t x) { return x != 0; }))
        pairs[n_pairs++] = uint8_t(k);
    vbmi::split_permute(p.width - p.top >= 1 && p.width - p.top <= 8 ? p.width - p.top : 8, from_qwords);
  }
};

namespace detail {

// Fields of `low` bits, MSB first, into consecutive 32-bit words.
struct FieldPacker {
  uint32_t* w;
  uint64_t acc = 0;
  int pending = 0;  // bits in acc not yet in a word (< 32 between puts)
  void put(uint64_t field, int low) {
    acc = (acc << low) | field;
    pending += low;
    if (pending >= 32) {
      pending -= 32;
      *w++ = uint32_t(acc >> pending);
    }
  }
  void flush() {  // the last word, zero-padded
    if (pending > 0) *w = uint32_t(acc << (32 - pending));
  }
};

// 32 fields of kLow bits are exactly kLow words: with the count fixed and the loop unrolled,
// where each word ends is known at compile time, so the packing has no branch. (Joining eight
// fields at a time, each shifted on its own, to shorten the accumulator's chain was slower.)
template <int kLow, class T>
inline void split_blocks(const T* bits, uint64_t blocks, const uint8_t* number, uint8_t* symbols, uint32_t* raw) {
  constexpr uint64_t kMask = (uint64_t(1) << kLow) - 1;
  for (uint64_t b = 0; b < blocks; ++b, bits += 32, symbols += 32, raw += kLow) {
    FieldPacker packer{raw};
#pragma GCC unroll 32
    for (int j = 0; j < 32; ++j) {
      symbols[j] = number[bits[j] >> kLow];
      packer.put(bits[j] & kMask, kLow);
    }
  }
}

// The unrolled packings for the raw widths a plan picks: width - kMaxTop .. width - kMinTop.
// False for any other width.
template <class T>
inline bool split_blocks_unrolled(int low, const T* bits, uint64_t blocks, const uint8_t* number, uint8_t* symbols,
                                  uint32_t* raw) {
  constexpr int kMinLow = 8 * int(sizeof(T)) - kMaxTop;
  static_assert(8 * int(sizeof(T)) - kMinTop - kMinLow == 4, "five widths below");
  switch (low - kMinLow) {
    case 0: split_blocks<kMinLow>(bits, blocks, number, symbols, raw); return true;
    case 1: split_blocks<kMinLow + 1>(bits, blocks, number, symbols, raw); return true;
    case 2: split_blocks<kMinLow + 2>(bits, blocks, number, symbols, raw); return true;
    case 3: split_blocks<kMinLow + 3>(bits, blocks, number, symbols, raw); return true;
    case 4: split_blocks<kMinLow + 4>(bits, blocks, number, symbols, raw); return true;
    default: return false;
  }
}

}  // namespace detail

// Elements first .. first + count - 1 of a plan's split: symbols[i - first] and their raw fields
// (raw: the whole tensor's words). The plan's top is at most kMaxTop, as make_plan's are.
// first x low is a multiple of 32, so the span's fields start on a word, and so is count x low
// unless the span ends the tensor; spans split this way may run in parallel (they share no word).
template <class T>
inline void apply_plan_span(const T* bits, uint64_t first, uint64_t count, const Plan& p, const Numbering& num,
                            uint8_t* symbols, uint32_t* raw) {
  const int low = p.width - p.top;
  const uint64_t mask = (uint64_t(1) << low) - 1;
  bits += first;
  raw += first * uint64_t(low) / 32;
  uint64_t done = 0;
#ifdef PYCODEC_HAVE_VBMI_MERGE
  if constexpr (sizeof(T) == 2) {  // 64 16-bit floats at a time where the CPU has AVX-512 VBMI
    if (low >= 1 && low <= 8 && p.top <= kMaxTop && ::pycodec::vbmi::use_vbmi()) {
      done = count / vbmi::kBlock * vbmi::kBlock;
      vbmi::split_blocks(bits, count / vbmi::kBlock, low, num.number, num.pairs, num.n_pairs, num.from_qwords,
                         symbols, raw);
    }
  }
#endif
  // Whole blocks unrolled where the width is one a plan picks; the rest (a caller's own Plan,
  // the tensor's last < 32 elements) one field at a time, the last word zero-padded.
  const uint64_t blocks = (count - done) / 32;
  if (detail::split_blocks_unrolled(low, bits + done, blocks, num.number, symbols + done,
                                    raw + done / 32 * uint64_t(low)))
    done += 32 * blocks;
  detail::FieldPacker packer{raw + done / 32 * uint64_t(low)};
  for (uint64_t i = done; i < count; ++i) {
    symbols[i] = num.number[bits[i] >> low];
    packer.put(bits[i] & mask, low);
  }
  packer.flush();
}

// symbols[i] = number of bits[i]'s top value; raw gets the low bits (raw_words(n, low) words).
template <class T>
inline void apply_plan(const T* bits, uint64_t n, const Plan& p, uint8_t* symbols, uint32_t* raw) {
  apply_plan_span(bits, 0, n, p, Numbering(p), symbols, raw);
}

// The symbol -> top-bits table of a merge, validated once.
template <class T>
struct MergeTable {
  T value[kMaxValues];  // values[s] << low
  uint32_t n_values;
  int low;
  // value[s]'s low and high bytes, for the byte-permute merge of 16-bit floats (split_vbmi.h).
  alignas(64) uint8_t value_lo[kMaxValues];
  alignas(64) uint8_t value_hi[kMaxValues];
  alignas(64) uint8_t to_qwords[vbmi::kBlock];    // vbmi::block_permutes(low), for low <= 8
  alignas(64) uint8_t field_shift[vbmi::kBlock];
};

template <class T>
inline Status make_merge_table(const uint32_t* values, uint32_t n_values, int top, MergeTable<T>* t) {
  const int width = 8 * int(sizeof(T));
  // No values only for no symbols (an empty tensor): every symbol is then refused by the merge.
  if (top < 1 || top > width || n_values > kMaxValues) return Status::BadArgument;
  t->low = width - top;
  t->n_values = n_values;
  for (uint32_t s = 0; s < kMaxValues; ++s) t->value[s] = 0;
  for (uint32_t s = 0; s < n_values; ++s) {
    if (uint64_t(values[s]) >> top) return Status::BadArgument;
    t->value[s] = T(uint64_t(values[s]) << t->low);
  }
  for (uint32_t s = 0; s < kMaxValues; ++s) {
    t->value_lo[s] = uint8_t(t->value[s]);
    t->value_hi[s] = uint8_t(uint64_t(t->value[s]) >> 8);
  }
  if (t->low <= 8) vbmi::block_permutes(t->low, t->to_qwords, t->field_shift);
  return Status::Ok;
}

namespace detail {

inline uint64_t load_be64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}

// Eight fields of kLow <= 8 bits fill exactly kLow bytes: one load gives all eight at fixed
// shifts, so the loop body is a table load, a shift, a mask and an or per value.
template <int kLow, class T>
void merge_groups(const uint8_t* symbols, uint64_t groups, const T* table, const uint8_t* be, T* out) {
  constexpr uint64_t kMask = (uint64_t(1) << kLow) - 1;
  for (uint64_t g = 0; g < groups; ++g) {
    const uint64_t v = load_be64(be + g * kLow);
    const uint8_t* s = symbols + 8 * g;
    T* o = out + 8 * g;
    for (int j = 0; j < 8; ++j) o[j] = T(table[s[j]] | T((v >> (64 - kLow * (j + 1))) & kMask));
  }
}

}  // namespace detail

// Whether the merge may use the CPU's vector extensions (split_vbmi.h) where it has them: on
// by default; tests turn it off (simd_wanted, cpu_vbmi.h) to check the scalar merge gives the same.
inline bool use_vbmi_merge() {
#ifdef PYCODEC_HAVE_VBMI_MERGE
  return ::pycodec::vbmi::use_vbmi();
#else
  return false;
#endif
}

// out[0, count) = the values of elements first .. first + count - 1: symbols[i - first] through
// the table, or'd with raw field i. raw: all n_raw_words words of the tensor's raw bits. Returns
// false for a symbol >= n_values or raw bits too short (out may then hold anything). be:
// scratch, grown to the span's raw bytes: they are copied in stream order (each word
// byte-swapped) once, so a field is one unaligned big-endian load away (the scalar merge).
// stream: the vector merge writes out by streaming stores (split_vbmi.h, VectorWriter), for an
// output too large to stay in cache (codec.h, streaming_output_bytes).
template <class T>
inline bool merge_span(const MergeTable<T>& t, const uint8_t* symbols, uint64_t first, uint64_t count,
                       const uint32_t* raw, uint64_t n_raw_words, T* out, std::vector<uint8_t>& be,
                       bool stream = false) {
  const int low = t.low;
  const uint64_t first_word = first * low / 32, end_word = ((first + count) * low + 31) / 32;
  if (end_word > n_raw_words) return false;
#ifdef PYCODEC_HAVE_VBMI_MERGE
  if constexpr (sizeof(T) == 2) {
    if (low && low <= 8 && use_vbmi_merge()) {
      // Checked as they are merged, so the symbols are read once: a span with a bad symbol gets
      // garbage values (its caller reports it), never a read out of bounds (value[] has every
      // byte's entry, zero past n_values; a byte permute ignores an index's high bits).
      uint8_t largest = 0;
      const auto one = [&](uint64_t i) {
        largest = std::max(largest, symbols[i]);
        out[i] = T(t.value[symbols[i]] | T(windowed::chunk_bits(raw, n_raw_words, (first + i) * uint64_t(low), low)));
      };
      // Blocks start at elements that are multiples of 64: their raw bits start on a word.
      const uint64_t head = std::min(count, (vbmi::kBlock - first % vbmi::kBlock) % vbmi::kBlock);
      uint64_t i = 0;
      for (; i < head; ++i) one(i);
      const uint64_t blocks = (count - i) / vbmi::kBlock;
      const uint64_t word = (first + i) * uint64_t(low) / 32;
      if (blocks)
        largest = std::max(largest, vbmi::merge_blocks(t.value_lo, t.value_hi, t.n_values, low, t.to_qwords,
                                                       t.field_shift, symbols + i, blocks,
                                                       reinterpret_cast<const uint8_t*>(raw + word),
                                                       reinterpret_cast<uint16_t*>(out + i), stream));
      for (i += vbmi::kBlock * blocks; i < count; ++i) one(i);
      return !count || largest < t.n_values;
    }
  }
#endif
  uint8_t largest = 0;  // a max reduction: one unsigned byte max per 16 symbols even in SSE2
  for (uint64_t i = 0; i < count; ++i) largest = std::max(largest, symbols[i]);
  if (count && largest >= t.n_values) return false;
  if (low == 0) {
    for (uint64_t i = 0; i < count; ++i) out[i] = t.value[symbols[i]];
    return true;
  }
  const size_t bytes = 4 * size_t(end_word - first_word);
  if (be.size() < bytes + 8) be.resize(bytes + 8);
  for (size_t w = 0; w < end_word - first_word; ++w) {
    const uint32_t x = __builtin_bswap32(raw[first_word + w]);
    std::memcpy(be.data() + 4 * w, &x, 4);
  }
  std::memset(be.data() + bytes, 0, 8);
  const uint64_t base_bit = 32 * first_word;
  auto general = [&](uint64_t i) {  // any element, any width (low <= 31 here)
    const uint64_t bit = (first + i) * uint64_t(low) - base_bit;
    const uint64_t field = (detail::load_be64(be.data() + (bit >> 3)) << (bit & 7)) >> (64 - low);
    out[i] = T(t.value[symbols[i]] | T(field));
  };
  uint64_t i = 0;
  if (low <= 8) {
    for (; i < count && (first + i) % 8; ++i) general(i);  // to a group boundary: a whole byte
    const uint64_t groups = (count - i) / 8;
    const uint8_t* be_group = be.data() + ((first + i) * uint64_t(low) - base_bit) / 8;
    switch (low) {
#define PYCODEC_MERGE_CASE(L) \
  case L: detail::merge_groups<L>(symbols + i, groups, t.value, be_group, out + i); break;
      PYCODEC_MERGE_CASE(1) PYCODEC_MERGE_CASE(2) PYCODEC_MERGE_CASE(3) PYCODEC_MERGE_CASE(4)
      PYCODEC_MERGE_CASE(5) PYCODEC_MERGE_CASE(6) PYCODEC_MERGE_CASE(7) PYCODEC_MERGE_CASE(8)
#undef PYCODEC_MERGE_CASE
    }
    i += 8 * groups;
  }
  for (; i < count; ++i) general(i);
  return true;
}

// out[i] = values[symbols[i]] << low | raw field i. Rejects symbols >= n_values and raw
// arrays of the wrong length instead of reading past them.
template <class T>
inline Status merge(const uint8_t* symbols, uint64_t n, const uint32_t* values, uint32_t n_values, int top,
                    const uint32_t* raw, uint64_t n_raw_words, T* out) {
  MergeTable<T> t;
  const Status st = make_merge_table(values, n_values, top, &t);
  if (st != Status::Ok) return st;
  if (n_raw_words != raw_words(n, t.low)) return Status::BadArgument;
  constexpr uint64_t kSpan = 1 << 16;  // raw bytes of a span stay in cache between copy and use
  std::vector<uint8_t> be;
  for (uint64_t first = 0; first < n; first += kSpan)
    if (!merge_span(t, symbols + first, first, std::min(kSpan, n - first), raw, n_raw_words, out + first, be))
      return Status::BadArgument;
  return Status::Ok;
}

}  // namespace split
}  // namespace pycodec
