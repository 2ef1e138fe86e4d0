// pycodec codec core: the CPU quantizers of rate and int modes (quant.py's _rate_quantize and
// quantize_int), the same symbols as their PyTorch references in one pass.
//
// Read me first
// - Both divide in fp32 and round to nearest even, as the references do. The rounding is
//   x + 1.5 * 2^23 - 1.5 * 2^23 in the default rounding mode (exact for |x| < 2^22) on x clamped
//   to the range first: no libm call and no conversion of an out-of-range float, so the loops
//   are selects that vectorize.
// - Rate: q[r, j] = round(w[r, j] / step[r]) + zero. A value that rounds beyond +-max_q, and a
//   NaN weight, is an escape: its symbol is `zero` and its flat index is listed (the caller
//   keeps its value exactly). Any other NaN quotient (0 / 0: a zero row, whose fp16 step is 0)
//   gives symbol 0, as the reference's cast of NaN to uint8 does; it decodes to 0 all the same.
// - Int: q[r, j] = clamp(round(w[r, j] / scale[r, g]) + zero[r, g], 0, qmax), g = j / group_size;
//   NaN gives 0 likewise.
// - Why here: the references make four or five passes over the layer (divide, round, compare or
//   add, select or clamp, cast), and rate mode's step search quantizes each layer two to four times.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace pycodec {
namespace quantize {

// Whether round(x) (half to even) leaves [-max_q, max_q]: |x| past max_q + 0.5, or at that tie
// when max_q is odd (the even neighbour is then max_q + 1). NaN is not an escape. Bitwise, not
// short-circuit, operators: no branch.
inline bool rate_escape(float x, int max_q) {
  const float edge = float(max_q) + 0.5f, ax = std::fabs(x);
  return (ax > edge) | ((ax == edge) & bool(max_q & 1));
}

// Round half to even of x, clamped to [lo, hi] first (NaN -> 0): exact for |lo|, |hi| < 2^22.
inline float round_clamped(float x, float lo, float hi) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  float inside = x < lo ? lo : x;
  inside = inside > hi ? hi : inside;
  inside = x == x ? inside : 0.0f;
  return (inside + kMagic) - kMagic;
}

// One row of rate mode: symbols into q, the number of escapes returned.
inline uint64_t rate_row(const float* w, uint64_t k, float step, int max_q, int zero, uint8_t* q) {
  const float limit = float(max_q);
  uint32_t escapes = 0;
  for (uint64_t j = 0; j < k; ++j) {
    const float x = w[j] / step;
    const bool escape = rate_escape(x, max_q) | (w[j] != w[j]);
    int symbol = int(round_clamped(x, -limit, limit)) + zero;
    symbol = x == x ? symbol : 0;
    q[j] = uint8_t(escape ? zero : symbol);
    escapes += escape;
  }
  return escapes;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PYCODEC_QUANTIZE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYCODEC_QUANTIZE_CLONES
#endif

// rows x k weights, a step per row: symbols into q, flat indices of the escapes into escapes.
PYCODEC_QUANTIZE_CLONES inline void rate_rows(const float* w, uint64_t rows, uint64_t k, const float* step,
                                              int max_q, int zero, uint8_t* q, std::vector<int64_t>& escapes) {
  escapes.clear();
  for (uint64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * k;
    if (!rate_row(wr, k, step[r], max_q, zero, q + r * k)) continue;
    for (uint64_t j = 0; j < k; ++j)  // a row with escapes (few): find them again
      if (rate_escape(wr[j] / step[r], max_q) | (wr[j] != wr[j])) escapes.push_back(int64_t(r * k + j));
  }
}

// Int mode: rows x k weights, groups of group_size along a row (the last may be partial), scale
// and zero fp32 [rows, ceil(k / group_size)]: symbols into q.
PYCODEC_QUANTIZE_CLONES inline void affine_rows(const float* w, uint64_t rows, uint64_t k, const float* scale,
                                                const float* zero, uint64_t group_size, int qmax, uint8_t* q) {
  const uint64_t groups = (k + group_size - 1) / group_size;
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t g = 0; g < groups; ++g) {
      const float s = scale[r * groups + g], z = zero[r * groups + g];
      const uint64_t end = std::min(k, (g + 1) * group_size);
      for (uint64_t j = g * group_size; j < end; ++j) {
        // round(x) + z, clamped to [0, qmax]: round x inside [-z, qmax - z] (z is a whole number
        // in [0, qmax], so the sum stays exact and the clamp is the same).
        const float x = w[r * k + j] / s;
        const int symbol = int(round_clamped(x, -z, float(qmax) - z) + z);
        q[r * k + j] = uint8_t(x == x ? symbol : 0);
      }
    }
}

}  // namespace quantize
}  // namespace pycodec
