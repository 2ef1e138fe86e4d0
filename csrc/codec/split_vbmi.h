// pycodec codec core: lossless mode's merge of 16-bit floats, 64 at a time with AVX-512 VBMI.
//
// Read me first
// - What: split.h's merge (out[i] = value[symbol i] << low | raw field i) for bf16/fp16, where
//   the raw fields are low <= 8 bits, over blocks of 64 elements whose raw bits start on a
//   word (the block's first element is a multiple of 64: 64 * low bits).
// - Why: the scalar merge costs ~2 cycles a weight, as much as decoding the symbols. Here a
//   block is ~20 instructions: value bytes by byte permutes of 128-entry tables (two for
//   more than 128 values), the 64 fields from one masked load (8 * low bytes) by a byte
//   permute (byte order to big-endian qwords) and a multishift (each field to a byte).
// - Field j of a qword's 8 sits at big-endian bits [j * low, (j + 1) * low), i.e. little-endian
//   bits from 64 - (j + 1) * low up: the multishift control of byte j.
// - Chosen at run time where the CPU has AVX-512 F, BW and VBMI (and cpu_simd() is on:
//   cpu_vbmi.h).
// - An output larger than half the last-level cache is written by streaming stores
//   (VectorWriter; codec.h, streaming_output_bytes): it would not stay in the cache, and a plain
//   store first reads every line it fills.
#pragma once

#include <cstdint>

#include "cpu_vbmi.h"

namespace pycodec {
namespace split {
namespace vbmi {

constexpr int kBlock = 64;

// The permutes that depend on the raw width, built once per weight (MergeTable): for qword g of
// a block, little-endian byte k takes stream byte low * g + 7 - k (big-endian order), stored at
// that ^ 3 (a word's stream bytes lie reversed); field k of the qword shifts by 64 - (k+1) low.
inline void block_permutes(int low, uint8_t to_qwords[kBlock], uint8_t field_shift[kBlock]) {
  for (int g = 0; g < 8; ++g)
    for (int k = 0; k < 8; ++k) {
      to_qwords[8 * g + k] = uint8_t((low * g + 7 - k) ^ 3);
      field_shift[8 * g + k] = uint8_t(64 - (k + 1) * low);
    }
}

// The split's inverse of to_qwords: qword g of a block holds fields 8g .. 8g + 7 as 8 * low bits,
// the first most significant; stream byte q of the block (g = q / low, j = q % low) is its
// byte low - 1 - j, and lands at byte q ^ 3 of the raw words (a word's stream bytes lie
// reversed). from_qwords[p] gives the source byte of output byte p < 8 * low.
inline void split_permute(int low, uint8_t from_qwords[kBlock]) {
  for (int p = 0; p < kBlock; ++p) {
    const int q = p ^ 3;
    from_qwords[p] = p < 8 * low ? uint8_t(8 * (q / low) + low - 1 - q % low) : 0;
  }
}

// Word i of an output half from (low byte i, high byte i) of the block's two byte vectors.
struct Interleave {
  alignas(64) uint8_t half[2][kBlock];
};
constexpr Interleave make_interleave() {
  Interleave t{};
  for (int i = 0; i < 32; ++i)
    for (int h = 0; h < 2; ++h) {
      t.half[h][2 * i] = uint8_t(32 * h + i);
      t.half[h][2 * i + 1] = uint8_t(64 + 32 * h + i);
    }
  return t;
}
inline constexpr Interleave kInterleave = make_interleave();

}  // namespace vbmi
}  // namespace split
}  // namespace pycodec

#ifdef PYCODEC_HAVE_VBMI
#define PYCODEC_HAVE_VBMI_MERGE 1

namespace pycodec {
namespace split {
namespace vbmi {

PYCODEC_INTRINSICS_BEGIN

// Consecutive 64-byte vectors of 16-bit elements to out on: put(k, v) writes vector k (called
// for k = 0, 1, ... in order), finish() after the last. Plain stores, or streaming
// (non-temporal) ones, which write whole aligned lines only and do not first read the lines
// they fill. Where out is not on a line, each line is joined from two vectors by one word
// permute, and the partial lines at either end get plain masked stores: a neighbouring span's
// writer fills the rest of those lines, so no line is both streamed and stored.
class VectorWriter {
 public:
  __attribute__((target("avx512f,avx512bw"))) VectorWriter(uint16_t* out, bool stream)
      : out_(out), stream_(stream && (reinterpret_cast<uintptr_t>(out) & 1) == 0) {
    lead_ = uint32_t((64 - (reinterpret_cast<uintptr_t>(out) & 63)) & 63) / 2;
    alignas(64) uint16_t join[32];
    for (uint32_t i = 0; i < 32; ++i) join[i] = uint16_t(lead_ + i);  // >= 32: the second vector's
    join_ = _mm512_load_si512(join);
  }
  __attribute__((target("avx512f,avx512bw"))) void put(uint64_t k, __m512i v) {
    if (!stream_) return _mm512_storeu_si512(out_ + 32 * k, v);
    if (!lead_) return _mm512_stream_si512(reinterpret_cast<__m512i*>(out_ + 32 * k), v);
    if (k == 0)
      _mm512_mask_storeu_epi16(out_, (__mmask32(1) << lead_) - 1, v);
    else
      _mm512_stream_si512(reinterpret_cast<__m512i*>(out_ + lead_ + 32 * (k - 1)),
                          _mm512_permutex2var_epi16(last_, join_, v));
    last_ = v;
    written_ = k + 1;
  }
  // Streaming stores are weakly ordered: the fence makes them visible before whatever tells
  // another thread the output is done.
  __attribute__((target("avx512f,avx512bw"))) void finish() {
    if (!stream_) return;
    if (lead_ && written_)
      _mm512_mask_storeu_epi16(out_ + lead_ + 32 * (written_ - 1), (__mmask32(1) << (32 - lead_)) - 1,
                               _mm512_permutex2var_epi16(last_, join_, last_));
    _mm_sfence();
  }

 private:
  uint16_t* out_;
  bool stream_;
  uint32_t lead_;  // words before out's first line boundary (0: out is on one)
  __m512i join_;
  __m512i last_ = _mm512_setzero_si512();
  uint64_t written_ = 0;
};

// blocks * 64 elements: symbols, raw_bytes the raw bit string's bytes from the first block's word
// on (8 * low bytes a block), out 16-bit floats (stream: by streaming stores, VectorWriter).
// to_qwords, field_shift: block_permutes(low), 64-byte aligned. Returns the largest symbol: the
// caller rejects the span (whose values are then garbage) when it is not below n_values, so
// the symbols are read once.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline uint8_t merge_blocks(
    const uint8_t* value_lo, const uint8_t* value_hi, uint32_t n_values, int low, const uint8_t* to_qwords,
    const uint8_t* field_shift, const uint8_t* symbols, uint64_t blocks, const uint8_t* raw_bytes, uint16_t* out,
    bool stream = false) {
  const __m512i lo_a = _mm512_load_si512(value_lo), lo_b = _mm512_load_si512(value_lo + 64);
  const __m512i lo_c = _mm512_load_si512(value_lo + 128), lo_d = _mm512_load_si512(value_lo + 192);
  const __m512i hi_a = _mm512_load_si512(value_hi), hi_b = _mm512_load_si512(value_hi + 64);
  const __m512i hi_c = _mm512_load_si512(value_hi + 128), hi_d = _mm512_load_si512(value_hi + 192);
  const __m512i qwords = _mm512_load_si512(to_qwords), shift = _mm512_load_si512(field_shift);
  const __m512i interleave_0 = _mm512_load_si512(kInterleave.half[0]);
  const __m512i interleave_1 = _mm512_load_si512(kInterleave.half[1]);
  const __m512i field_mask = _mm512_set1_epi8(char((1u << low) - 1));
  const __mmask64 raw_mask = low == 8 ? ~__mmask64(0) : (__mmask64(1) << (8 * low)) - 1;
  const bool wide = n_values > 128;
  __m512i largest = _mm512_setzero_si512();
  VectorWriter writer(out, stream);
  for (uint64_t b = 0; b < blocks; ++b) {
    const __m512i sym = _mm512_loadu_si512(symbols + kBlock * b);
    largest = _mm512_max_epu8(largest, sym);
    __m512i lo = _mm512_permutex2var_epi8(lo_a, sym, lo_b);
    __m512i hi = _mm512_permutex2var_epi8(hi_a, sym, hi_b);
    if (wide) {
      const __mmask64 upper = _mm512_movepi8_mask(sym);
      lo = _mm512_mask_mov_epi8(lo, upper, _mm512_permutex2var_epi8(lo_c, sym, lo_d));
      hi = _mm512_mask_mov_epi8(hi, upper, _mm512_permutex2var_epi8(hi_c, sym, hi_d));
    }
    const __m512i raw = _mm512_maskz_loadu_epi8(raw_mask, raw_bytes + uint64_t(8 * low) * b);
    const __m512i fields =
        _mm512_and_si512(_mm512_multishift_epi64_epi8(shift, _mm512_permutexvar_epi8(qwords, raw)), field_mask);
    lo = _mm512_or_si512(lo, fields);  // value << low has zeros where the field goes
    writer.put(2 * b, _mm512_permutex2var_epi8(lo, interleave_0, hi));
    writer.put(2 * b + 1, _mm512_permutex2var_epi8(lo, interleave_1, hi));
  }
  writer.finish();
  const __m256i half = _mm256_max_epu8(_mm512_castsi512_si256(largest), _mm512_extracti64x4_epi64(largest, 1));
  __m128i q = _mm_max_epu8(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 8));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 4));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 2));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 1));
  return uint8_t(_mm_cvtsi128_si32(q));
}

// The split of blocks * 64 16-bit floats at `low` (1..8) raw bits: symbols[i] = number[bits[i] >>
// low], the raw fields into 2 * low words a block (raw_words' layout; the first block starts on
// a word). number: the 4096-entry value -> symbol table (Numbering), read as 128-entry byte
// tables by permutes, only those in `pairs` (the others hold only zeros: they would give 0,
// the result's start). Fields: bytes, joined by twos, fours and eights in 16-, 32- and 64-bit
// lanes (the first most significant), then one byte permute into the words' byte order.
// ~30 instructions a block where the scalar split took ~7 a float (2026-11-30).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline void split_blocks(
    const uint16_t* bits, uint64_t blocks, int low, const uint8_t* number, const uint8_t* pairs, uint32_t n_pairs,
    const uint8_t* from_qwords, uint8_t* symbols, uint32_t* raw) {
  // Byte 2i of the pair (a, b) of 16-bit vectors: element i's low byte, elements 0..63 in order.
  alignas(64) static constexpr uint8_t kLowBytes[kBlock] = {
      0,   2,   4,   6,   8,   10,  12,  14,  16,  18,  20,  22,  24,  26,  28,  30,  32,  34,  36,  38,  40,  42,
      44,  46,  48,  50,  52,  54,  56,  58,  60,  62,  64,  66,  68,  70,  72,  74,  76,  78,  80,  82,  84,  86,
      88,  90,  92,  94,  96,  98,  100, 102, 104, 106, 108, 110, 112, 114, 116, 118, 120, 122, 124, 126};
  const __m512i low_bytes = _mm512_load_si512(kLowBytes);
  const __m512i permute = _mm512_loadu_si512(from_qwords);
  const __m128i index_shift = _mm_cvtsi32_si128(low), table_shift = _mm_cvtsi32_si128(low + 7);
  const __m512i field_mask = _mm512_set1_epi16(int16_t((1u << low) - 1));
  const __m512i byte_mask = _mm512_set1_epi16(0xFF), word_mask = _mm512_set1_epi32(0xFFFF);
  const __m512i qword_mask = _mm512_set1_epi64(0xFFFFFFFF);
  const __m128i two_fields = _mm_cvtsi32_si128(low), four_fields = _mm_cvtsi32_si128(2 * low);
  const __m128i eight_fields = _mm_cvtsi32_si128(4 * low);
  const __mmask64 raw_mask = low == 8 ? ~__mmask64(0) : (__mmask64(1) << (8 * low)) - 1;
  for (uint64_t b = 0; b < blocks; ++b) {
    const __m512i first = _mm512_loadu_si512(bits + kBlock * b), second = _mm512_loadu_si512(bits + kBlock * b + 32);
    const __m512i index = _mm512_permutex2var_epi8(_mm512_srl_epi16(first, index_shift), low_bytes,
                                                   _mm512_srl_epi16(second, index_shift));
    const __m512i table = _mm512_permutex2var_epi8(_mm512_srl_epi16(first, table_shift), low_bytes,
                                                   _mm512_srl_epi16(second, table_shift));
    __m512i symbol = _mm512_setzero_si512();
    for (uint32_t k = 0; k < n_pairs; ++k) {
      const uint8_t* t = number + 128 * uint32_t(pairs[k]);
      const __m512i looked = _mm512_permutex2var_epi8(_mm512_loadu_si512(t), index, _mm512_loadu_si512(t + 64));
      symbol = _mm512_mask_mov_epi8(symbol, _mm512_cmpeq_epi8_mask(table, _mm512_set1_epi8(char(pairs[k]))), looked);
    }
    _mm512_storeu_si512(symbols + kBlock * b, symbol);
    // Fields as bytes (element i at byte i), then joined: a 16-bit lane's two (the first, its
    // low byte, on top), a 32-bit lane's two pairs, a 64-bit lane's two fours.
    __m512i f = _mm512_permutex2var_epi8(_mm512_and_si512(first, field_mask), low_bytes,
                                         _mm512_and_si512(second, field_mask));
    f = _mm512_or_si512(_mm512_sll_epi16(_mm512_and_si512(f, byte_mask), two_fields), _mm512_srli_epi16(f, 8));
    f = _mm512_or_si512(_mm512_sll_epi32(_mm512_and_si512(f, word_mask), four_fields), _mm512_srli_epi32(f, 16));
    f = _mm512_or_si512(_mm512_sll_epi64(_mm512_and_si512(f, qword_mask), eight_fields), _mm512_srli_epi64(f, 32));
    _mm512_mask_storeu_epi8(raw + 2 * uint64_t(low) * b, raw_mask, _mm512_permutexvar_epi8(permute, f));
  }
}

PYCODEC_INTRINSICS_END

}  // namespace vbmi
}  // namespace split
}  // namespace pycodec

#endif
