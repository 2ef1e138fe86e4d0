// pycodec codec core: the CPU's AVX-512 VBMI, found at run time, and the encoder's use of it.
//
// Read me first
// - Chosen at run time where the CPU has AVX-512 F, BW and VBMI (hash64_batch: F and DQ) and
//   the switch (simd_wanted, the bindings' cpu_simd) is on; tests turn it off to check that the
//   scalar paths give the same bytes. Users: split_vbmi.h (lossless mode's merge), rans.h, and
//   below: prefix_code_bits and join_codes4 (the windowed encoder), hash64_batch (the chunk
//   checksums of every encode and whole decode, codec.cpp).
// - prefix_code_bits: the running sum of code lengths over a chunk's symbols, which the
//   windowed encoder places its lanes by (windowed.h, chunk_words). Scalar, every symbol is a
//   dependent add behind a table load (~1.05 cycles a symbol on the 2-core EPYC); here 64
//   lengths come from four byte permutes and each 16 of them are summed by a log-step scan
//   (0.6 cycles a symbol, 2026-11-30).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "hash.h"

namespace pycodec {

// Whether the codec may use the CPU's vector extensions where it has them. On by default.
inline std::atomic<bool>& simd_wanted() {
  static std::atomic<bool> wanted{true};
  return wanted;
}

}  // namespace pycodec

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define PYCODEC_HAVE_VBMI 1

#include <immintrin.h>

// Around code with AVX-512 intrinsics: GCC 12 warns inside its own intrinsic headers (their
// _mm512_undefined_* placeholders count as uninitialised reads).
#if defined(__GNUC__) && !defined(__clang__)
#define PYCODEC_INTRINSICS_BEGIN                                  \
  _Pragma("GCC diagnostic push")                                  \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")   \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define PYCODEC_INTRINSICS_END _Pragma("GCC diagnostic pop")
#else
#define PYCODEC_INTRINSICS_BEGIN
#define PYCODEC_INTRINSICS_END
#endif

namespace pycodec {
namespace vbmi {

inline bool cpu_has_vbmi() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vbmi");
}

inline bool use_vbmi() {
  static const bool has = cpu_has_vbmi();
  return has && simd_wanted().load(std::memory_order_relaxed);
}

PYCODEC_INTRINSICS_BEGIN

// prefix[0] = 0, prefix[i + 1] = prefix[i] + length[sym[i]] for i < m (length: 256 entries).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline void prefix_code_bits(const uint8_t* sym, uint32_t m,
                                                                                   const uint8_t* length,
                                                                                   uint32_t* prefix) {
  const __m512i len_a = _mm512_loadu_si512(length), len_b = _mm512_loadu_si512(length + 64);
  const __m512i len_c = _mm512_loadu_si512(length + 128), len_d = _mm512_loadu_si512(length + 192);
  // Lane j of a scan step takes lane j - 1, j - 2, j - 4, j - 8 (none below 0: masked).
  const __m512i back_1 = _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
  const __m512i back_2 = _mm512_set_epi32(13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0);
  const __m512i back_4 = _mm512_set_epi32(11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0, 0);
  const __m512i back_8 = _mm512_set_epi32(7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i last = _mm512_set1_epi32(15);
  __m512i base = _mm512_setzero_si512();  // the sum so far, in every lane
  prefix[0] = 0;
  uint32_t i = 0;
  for (; i + 64 <= m; i += 64) {
    const __m512i s = _mm512_loadu_si512(sym + i);
    __m512i lengths = _mm512_permutex2var_epi8(len_a, s, len_b);
    lengths = _mm512_mask_mov_epi8(lengths, _mm512_movepi8_mask(s), _mm512_permutex2var_epi8(len_c, s, len_d));
    // Four scans of 16, each independent of the sum so far: the only chain from one block of 64
    // to the next is one add (chaining each 16 on the one before cost a permute's latency each).
    __m512i v[4], offset = base;
    for (int q = 0; q < 4; ++q, lengths = _mm512_alignr_epi32(lengths, lengths, 4)) {  // the next 16 first
      v[q] = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(lengths));
      v[q] = _mm512_add_epi32(v[q], _mm512_maskz_permutexvar_epi32(0xFFFE, back_1, v[q]));
      v[q] = _mm512_add_epi32(v[q], _mm512_maskz_permutexvar_epi32(0xFFFC, back_2, v[q]));
      v[q] = _mm512_add_epi32(v[q], _mm512_maskz_permutexvar_epi32(0xFFF0, back_4, v[q]));
      v[q] = _mm512_add_epi32(v[q], _mm512_maskz_permutexvar_epi32(0xFF00, back_8, v[q]));
    }
    const __m512i total_01 = _mm512_add_epi32(_mm512_permutexvar_epi32(last, v[0]), _mm512_permutexvar_epi32(last, v[1]));
    _mm512_storeu_si512(prefix + i + 1, _mm512_add_epi32(v[0], offset));
    _mm512_storeu_si512(prefix + i + 17, _mm512_add_epi32(v[1], _mm512_add_epi32(offset, _mm512_permutexvar_epi32(last, v[0]))));
    offset = _mm512_add_epi32(offset, total_01);
    _mm512_storeu_si512(prefix + i + 33, _mm512_add_epi32(v[2], offset));
    _mm512_storeu_si512(prefix + i + 49, _mm512_add_epi32(v[3], _mm512_add_epi32(offset, _mm512_permutexvar_epi32(last, v[2]))));
    base = _mm512_add_epi32(base, _mm512_add_epi32(total_01, _mm512_add_epi32(_mm512_permutexvar_epi32(last, v[2]),
                                                                                _mm512_permutexvar_epi32(last, v[3]))));
  }
  uint32_t sum = prefix[i];
  for (; i < m; ++i) prefix[i + 1] = sum += length[sym[i]];
}

// A code table as byte tables for permutes: the low and high bytes of each symbol's code and
// its length, 256 entries each, and whether any symbol above 127 has a code (else the permutes
// of the upper half are skipped). Read and written unaligned: a thread_local copy's alignment
// is the dynamic loader's to honour.
struct CodeBytes {
  alignas(64) uint8_t code_lo[256];
  alignas(64) uint8_t code_hi[256];
  alignas(64) uint8_t length[256];
  bool wide;
};

// Built for every chunk an encoder codes (~30 instructions; byte by byte it cost 0.26 cycles a
// symbol of SmolLM2's 2304-symbol chunks).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline void make_code_bytes(const uint16_t* code,
                                                                                  const uint8_t* length,
                                                                                  CodeBytes* t) {
  for (int k = 0; k < 256; k += 32) {
    const __m512i c = _mm512_loadu_si512(code + k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t->code_lo + k), _mm512_cvtepi16_epi8(c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t->code_hi + k), _mm512_cvtepi16_epi8(_mm512_srli_epi16(c, 8)));
  }
  __m512i upper = _mm512_setzero_si512();
  for (int k = 0; k < 256; k += 64) {
    const __m512i l = _mm512_loadu_si512(length + k);
    _mm512_storeu_si512(t->length + k, l);
    if (k >= 128) upper = _mm512_or_si512(upper, l);
  }
  t->wide = _mm512_test_epi8_mask(upper, upper) != 0;
}

// The codes of symbols 4q .. 4q + 3 joined, the first most significant: quad[q] holds them in
// quad_bits[q] (<= 48) bits, for q < m / 4. The windowed encoder then writes four codes a time
// (windowed.h, encode_chunk): a scalar writer adds each code behind the one before, a chain of
// ~9 instructions a symbol; joining them here takes ~1 (2026-11-30).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline void join_codes4(const uint8_t* sym, uint32_t m,
                                                                              const CodeBytes& t, uint64_t* quad,
                                                                              uint8_t* quad_bits) {
  const __m512i lo_a = _mm512_loadu_si512(t.code_lo), lo_b = _mm512_loadu_si512(t.code_lo + 64);
  const __m512i lo_c = _mm512_loadu_si512(t.code_lo + 128), lo_d = _mm512_loadu_si512(t.code_lo + 192);
  const __m512i hi_a = _mm512_loadu_si512(t.code_hi), hi_b = _mm512_loadu_si512(t.code_hi + 64);
  const __m512i hi_c = _mm512_loadu_si512(t.code_hi + 128), hi_d = _mm512_loadu_si512(t.code_hi + 192);
  const __m512i len_a = _mm512_loadu_si512(t.length), len_b = _mm512_loadu_si512(t.length + 64);
  const __m512i len_c = _mm512_loadu_si512(t.length + 128), len_d = _mm512_loadu_si512(t.length + 192);
  // Bytes lo 0..31 / hi 0..31 -> u16 codes of symbols 0..31, and of 32..63.
  alignas(64) static const uint8_t kToWords[2][64] = {
      {0, 64, 1, 65, 2, 66, 3, 67, 4, 68, 5, 69, 6, 70, 7, 71, 8, 72, 9, 73, 10, 74, 11, 75,
       12, 76, 13, 77, 14, 78, 15, 79, 16, 80, 17, 81, 18, 82, 19, 83, 20, 84, 21, 85, 22, 86, 23, 87,
       24, 88, 25, 89, 26, 90, 27, 91, 28, 92, 29, 93, 30, 94, 31, 95},
      {32, 96, 33, 97, 34, 98, 35, 99, 36, 100, 37, 101, 38, 102, 39, 103, 40, 104, 41, 105, 42, 106, 43, 107,
       44, 108, 45, 109, 46, 110, 47, 111, 48, 112, 49, 113, 50, 114, 51, 115, 52, 116, 53, 117, 54, 118, 55, 119,
       56, 120, 57, 121, 58, 122, 59, 123, 60, 124, 61, 125, 62, 126, 63, 127}};
  const __m512i to_words_0 = _mm512_loadu_si512(kToWords[0]), to_words_1 = _mm512_loadu_si512(kToWords[1]);
  const __m512i low16 = _mm512_set1_epi32(0xFFFF);
  const __m512i low32 = _mm512_set1_epi64(0xFFFFFFFF);
  const uint32_t blocks = m / 64;
  for (uint32_t b = 0; b < blocks; ++b) {
    const __m512i s = _mm512_loadu_si512(sym + 64 * b);
    __m512i lo = _mm512_permutex2var_epi8(lo_a, s, lo_b);
    __m512i hi = _mm512_permutex2var_epi8(hi_a, s, hi_b);
    __m512i len = _mm512_permutex2var_epi8(len_a, s, len_b);
    if (t.wide) {
      const __mmask64 upper = _mm512_movepi8_mask(s);
      lo = _mm512_mask_mov_epi8(lo, upper, _mm512_permutex2var_epi8(lo_c, s, lo_d));
      hi = _mm512_mask_mov_epi8(hi, upper, _mm512_permutex2var_epi8(hi_c, s, hi_d));
      len = _mm512_mask_mov_epi8(len, upper, _mm512_permutex2var_epi8(len_c, s, len_d));
    }
    for (int h = 0; h < 2; ++h) {  // symbols 32h .. 32h + 31: 8 quads
      const __m512i code = _mm512_permutex2var_epi8(lo, h ? to_words_1 : to_words_0, hi);  // u16 a symbol
      const __m512i bits = _mm512_cvtepu8_epi16(h ? _mm512_extracti64x4_epi64(len, 1) : _mm512_castsi512_si256(len));
      // Pairs in u32 lanes: the even symbol's code above the odd one's.
      const __m512i pair = _mm512_or_si512(_mm512_sllv_epi32(_mm512_and_si512(code, low16), _mm512_srli_epi32(bits, 16)),
                                           _mm512_srli_epi32(code, 16));
      const __m512i pair_bits = _mm512_add_epi32(_mm512_and_si512(bits, low16), _mm512_srli_epi32(bits, 16));
      // Quads in u64 lanes: the even pair above the odd one.
      const __m512i q = _mm512_or_si512(_mm512_sllv_epi64(_mm512_and_si512(pair, low32), _mm512_srli_epi64(pair_bits, 32)),
                                        _mm512_srli_epi64(pair, 32));
      const __m512i q_bits = _mm512_add_epi64(_mm512_and_si512(pair_bits, low32), _mm512_srli_epi64(pair_bits, 32));
      _mm512_storeu_si512(quad + 16 * b + 8 * h, q);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(quad_bits + 16 * b + 8 * h), _mm512_cvtepi64_epi8(q_bits));
    }
  }
  for (uint32_t q = 16 * blocks; q < m / 4; ++q) {  // the rest, one quad at a time
    uint64_t v = 0;
    uint32_t n = 0;
    for (int k = 0; k < 4; ++k) {
      const uint8_t x = sym[4 * q + k];
      const uint32_t l = t.length[x];
      v = v << l | (uint32_t(t.code_lo[x]) | uint32_t(t.code_hi[x]) << 8);
      n += l;
    }
    quad[q] = v;
    quad_bits[q] = uint8_t(n);
  }
}

// hash64 (hash.h) of up to kHashBatch buffers of n bytes each, at once: out[k] = hash64(data[k],
// n). One buffer's hash is four chains of multiplies, ~6 cycles each per 32 bytes (21 GB/s on
// the 2-core EPYC); here two buffers' lanes share a vector and four vectors run side by side:
// 8 buffers of 4 KiB 74 GB/s, 4 51, 2 33 (2026-11-30). The codec hashes each chunk's symbols
// (every encode and whole decode), ~8% of a decode's time one chunk at a time.
constexpr uint32_t kHashBatch = 8;

inline bool cpu_has_avx512dq() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}

inline bool use_hash_batch() {
  static const bool has = cpu_has_avx512dq();
  return has && simd_wanted().load(std::memory_order_relaxed);
}

__attribute__((target("avx512f,avx512dq"))) inline void hash64_batch(const uint8_t* const data[], uint32_t count,
                                                                     size_t n, uint64_t out[]) {
  constexpr uint32_t kPairs = kHashBatch / 2;
  const uint8_t* buffer[kHashBatch];
  for (uint32_t k = 0; k < kHashBatch; ++k) buffer[k] = data[k < count ? k : 0];  // idle slots rehash the first
  const uint32_t pairs = (count + 1) / 2;
  uint64_t start[kHashLanes];
  hash64_init(start);
  const __m512i init = _mm512_set_epi64(int64_t(start[3]), int64_t(start[2]), int64_t(start[1]), int64_t(start[0]),
                                        int64_t(start[3]), int64_t(start[2]), int64_t(start[1]), int64_t(start[0]));
  const __m512i mul = _mm512_set1_epi64(int64_t(kHashMulB));
  __m512i lane[kPairs];  // pair p: buffer 2p's four lanes, then buffer 2p + 1's
  for (uint32_t p = 0; p < kPairs; ++p) lane[p] = init;
  size_t pos = 0;
  for (; pos + kHashBlockBytes <= n; pos += kHashBlockBytes)
    for (uint32_t p = 0; p < kPairs; ++p) {
      if (p >= pairs) break;
      const __m256i first = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buffer[2 * p] + pos));
      const __m256i second = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buffer[2 * p + 1] + pos));
      const __m512i t = _mm512_mullo_epi64(
          _mm512_xor_si512(lane[p], _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1)), mul);
      lane[p] = _mm512_xor_si512(t, _mm512_srli_epi64(t, 29));
    }
  for (uint32_t k = 0; k < count; ++k) {
    alignas(64) uint64_t lanes[8];
    _mm512_store_si512(reinterpret_cast<__m512i*>(lanes), lane[k / 2]);
    out[k] = hash64_finish(lanes + kHashLanes * (k % 2), buffer[k], n, pos);
  }
}

PYCODEC_INTRINSICS_END

}  // namespace vbmi
}  // namespace pycodec

#endif
