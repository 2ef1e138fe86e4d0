// pycodec codec core: rate mode's uniform quantizer on the CPU (quant.py's _rate_quantize).
//
// Read me first
// - q[r, j] = round(w[r, j] / step[r]) + zero as a byte: an fp32 division and a round to
//   nearest even, as the PyTorch reference computes them, so the same symbols. A value that
//   rounds beyond +-max_q is an escape: its symbol is `zero` and its flat index is listed. A NaN
//   quotient (a NaN weight; a zero row whose fp16 step is 0) gives symbol 0 and no escape,
//   which is what the reference's cast of NaN to uint8 gives.
// - Why here: the reference makes five passes over the layer (divide, round, compare, select,
//   cast) and the step search quantizes each layer two to four times.
#pragma once

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

// One row: symbols into q, the number of escapes returned. Selects, not branches, so it
// vectorizes. A level is x clamped to the range (NaN to 0: nothing out of range is converted)
// and rounded by adding and taking away 1.5 * 2^23, which the default rounding mode rounds half
// to even (exact for |x| < 2^22), without a libm call.
inline uint64_t rate_row(const float* w, uint64_t k, float step, int max_q, int zero, uint8_t* q) {
  const float limit = float(max_q), magic = 12582912.0f;  // 1.5 * 2^23
  uint32_t escapes = 0;
  for (uint64_t j = 0; j < k; ++j) {
    const float x = w[j] / step;
    const bool escape = rate_escape(x, max_q), number = x == x;
    float inside = x < -limit ? -limit : x;
    inside = inside > limit ? limit : inside;
    inside = number ? inside : 0.0f;
    int symbol = int((inside + magic) - magic) + zero;
    symbol = escape ? zero : symbol;
    q[j] = uint8_t(number ? symbol : 0);
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
      if (rate_escape(wr[j] / step[r], max_q)) escapes.push_back(int64_t(r * k + j));
  }
}

}  // namespace quantize
}  // namespace pycodec
