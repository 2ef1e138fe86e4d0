// pycodec codec core: the CPU's AVX-512 VBMI, found at run time, and the encoder's use of it.
//
// Read me first
// - Chosen at run time where the CPU has AVX-512 F, BW and VBMI and the switch (simd_wanted,
//   the bindings' cpu_simd) is on; tests turn it off to check that the scalar paths give the
//   same bytes. Users: split_vbmi.h (lossless mode's merge), and prefix_code_bits below.
// - prefix_code_bits: the running sum of code lengths over a chunk's symbols, which the
//   windowed encoder places its lanes by (windowed.h, chunk_words). Scalar, every symbol is a
//   dependent add behind a table load (~1.05 cycles a symbol on the 2-core EPYC); here 64
//   lengths come from four byte permutes and each 16 of them are summed by a log-step scan
//   (0.6 cycles a symbol, 2026-11-30).
#pragma once

#include <atomic>
#include <cstdint>

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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

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
    for (int q = 0; q < 4; ++q, lengths = _mm512_alignr_epi32(lengths, lengths, 4)) {  // the next 16 first
      __m512i v = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(lengths));
      v = _mm512_add_epi32(v, _mm512_maskz_permutexvar_epi32(0xFFFE, back_1, v));
      v = _mm512_add_epi32(v, _mm512_maskz_permutexvar_epi32(0xFFFC, back_2, v));
      v = _mm512_add_epi32(v, _mm512_maskz_permutexvar_epi32(0xFFF0, back_4, v));
      v = _mm512_add_epi32(v, _mm512_maskz_permutexvar_epi32(0xFF00, back_8, v));
      v = _mm512_add_epi32(v, base);
      _mm512_storeu_si512(prefix + i + 16 * q + 1, v);
      base = _mm512_permutexvar_epi32(last, v);
    }
  }
  uint32_t sum = prefix[i];
  for (; i < m; ++i) prefix[i + 1] = sum += length[sym[i]];
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace vbmi
}  // namespace pycodec

#endif
