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

// blocks * 64 elements: symbols, raw_bytes the raw bit string's bytes from the first block's word
// on (8 * low bytes a block), out 16-bit floats. to_qwords, field_shift: block_permutes(low),
// 64-byte aligned. Returns the largest symbol: the caller rejects the span (whose values are
// then garbage) when it is not below n_values, so the symbols are read once.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline uint8_t merge_blocks(
    const uint8_t* value_lo, const uint8_t* value_hi, uint32_t n_values, int low, const uint8_t* to_qwords,
    const uint8_t* field_shift, const uint8_t* symbols, uint64_t blocks, const uint8_t* raw_bytes, uint16_t* out) {
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
    _mm512_storeu_si512(out + kBlock * b, _mm512_permutex2var_epi8(lo, interleave_0, hi));
    _mm512_storeu_si512(out + kBlock * b + 32, _mm512_permutex2var_epi8(lo, interleave_1, hi));
  }
  const __m256i half = _mm256_max_epu8(_mm512_castsi512_si256(largest), _mm512_extracti64x4_epi64(largest, 1));
  __m128i q = _mm_max_epu8(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 8));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 4));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 2));
  q = _mm_max_epu8(q, _mm_srli_si128(q, 1));
  return uint8_t(_mm_cvtsi128_si32(q));
}

PYCODEC_INTRINSICS_END

}  // namespace vbmi
}  // namespace split
}  // namespace pycodec

#endif
