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
// - Raw bits: field i (low = width - top bits) at bit offset i * low of a bit string of 32-bit
//   little-endian words, most significant bit first, zero-padded to a whole word: the same
//   convention as a stream payload, so a GPU lane reads both with one kind of bit reader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "huffman.h"
#include "status.h"

namespace pycodec {
namespace split {

constexpr int kMinTop = 8;                 // <= 256 distinct values whatever the data
constexpr int kMaxTop = 12;                // 4096 counters; more top bits stop paying on weights
constexpr uint32_t kMaxValues = 256;       // symbols are bytes
constexpr uint32_t kCounters = 1u << kMaxTop;

struct Plan {
  int width;  // 16 or 32
  int top;
  uint32_t n_values;
  uint32_t values[kMaxValues];  // ascending top values; symbol s decodes to values[s]
  uint64_t estimated_bits;      // Huffman-coded symbols + raw bits + values table
};

inline uint64_t raw_words(uint64_t n, int low) { return (n * uint64_t(low) + 31) / 32; }

template <class T>
inline Status make_plan(const T* bits, uint64_t n, Plan* plan) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "16- or 32-bit floats");
  const int width = 8 * int(sizeof(T));
  std::vector<uint64_t> counts(size_t(kCounters) << 1);
  Plan best{};
  best.estimated_bits = UINT64_MAX;
  for (int top = kMinTop; top <= kMaxTop; ++top) {
    std::fill(counts.begin(), counts.end(), 0);
    const int shift = width - top;
    for (uint64_t i = 0; i < n; ++i) ++counts[bits[i] >> shift];
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
    huffman::Code code;
    if (huffman::build_code(sym_counts, code) != Status::Ok) return Status::BadArgument;
    uint64_t coded = 0;
    for (uint32_t s = 0; s < p.n_values; ++s) coded += sym_counts[s] * code.length[s];
    // The stream's lane padding and index cost about 1% of the coded bits (windowed.h).
    p.estimated_bits = coded + coded / 100 + n * uint64_t(shift) + 32ull * p.n_values;
    if (p.estimated_bits < best.estimated_bits) best = p;
  }
  if (best.estimated_bits == UINT64_MAX) return Status::BadArgument;
  *plan = best;
  return Status::Ok;
}

// symbols[i] = number of bits[i]'s top value; raw gets the low bits (raw_words(n, low) words).
template <class T>
inline void apply_plan(const T* bits, uint64_t n, const Plan& p, uint8_t* symbols, uint32_t* raw) {
  const int low = p.width - p.top;
  std::vector<uint8_t> number(size_t(1) << p.top, 0);
  for (uint32_t s = 0; s < p.n_values; ++s) number[p.values[s]] = uint8_t(s);
  const uint64_t mask = (uint64_t(1) << low) - 1;
  uint64_t acc = 0;
  int pending = 0;
  uint64_t w = 0;
  for (uint64_t i = 0; i < n; ++i) {
    symbols[i] = number[bits[i] >> low];
    acc = (acc << low) | (bits[i] & mask);
    pending += low;
    if (pending >= 32) {
      pending -= 32;
      raw[w++] = uint32_t(acc >> pending);
    }
  }
  if (pending > 0) raw[w++] = uint32_t(acc << (32 - pending));
}

// out[i] = values[symbols[i]] << low | raw field i. Rejects symbols >= n_values and raw
// arrays of the wrong length instead of reading past them.
template <class T>
inline Status merge(const uint8_t* symbols, uint64_t n, const uint32_t* values, uint32_t n_values, int top,
                    const uint32_t* raw, uint64_t n_raw_words, T* out) {
  const int width = 8 * int(sizeof(T));
  if (top < 1 || top > width || n_values == 0 || n_values > kMaxValues) return Status::BadArgument;
  const int low = width - top;
  if (n_raw_words != raw_words(n, low)) return Status::BadArgument;
  T table[kMaxValues] = {0};
  for (uint32_t s = 0; s < n_values; ++s) {
    if (uint64_t(values[s]) >> top) return Status::BadArgument;
    table[s] = T(uint64_t(values[s]) << low);
  }
  uint64_t bad = 0;
  for (uint64_t i = 0; i < n; ++i) bad |= symbols[i] >= n_values;
  if (bad) return Status::BadArgument;
  if (low == 0) {
    for (uint64_t i = 0; i < n; ++i) out[i] = table[symbols[i]];
    return Status::Ok;
  }
  // A 64-bit window over the raw words: refill one word whenever fewer than `low` bits remain.
  uint64_t buf = 0;
  int avail = 0;
  uint64_t next = 0;
  for (uint64_t i = 0; i < n; ++i) {
    if (avail < low) {
      buf |= uint64_t(raw[next++]) << (32 - avail);
      avail += 32;
    }
    out[i] = T(table[symbols[i]] | T(buf >> (64 - low)));
    buf <<= low;
    avail -= low;
  }
  return Status::Ok;
}

}  // namespace split
}  // namespace pycodec
