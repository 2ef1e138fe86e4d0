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
// - Rate mode's row statistics (row_median_mad: each row's median and median absolute deviation,
//   by radix selection on order-preserving float keys) and an SQNR's two sums (error_and_signal)
//   live here too: both were passes of torch and numpy temporaries around the C++ quantizer.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// The float at sorted position kth (0-based) of n keys (float_key: unsigned order = float order),
// by radix selection a byte at a time from the top, the candidates compacted in place after
// each, and nth_element once <= 64 are left: about two passes over the row (libstdc++'s
// introselect alone ran ~8.6 ns an element on weights cast from bf16, whose rows repeat few
// values; this ~1.9, 2026-11-30). keys is overwritten; kth < n.
inline uint32_t float_key(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u);
}
inline float key_float(uint32_t key) {
  const uint32_t b = key & 0x80000000u ? key ^ 0x80000000u : ~key;
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}
inline float select_kth(uint32_t* keys, uint64_t n, uint64_t kth) {
  uint32_t found = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    if (n <= 64) {  // few left (after one or two digits, on weights): a selection among them
      std::nth_element(keys, keys + kth, keys + n);
      return key_float(keys[kth]);
    }
    // Four counts a digit, by position mod 4: a row's values share few top bytes, and one count
    // would make every increment wait on the one before it.
    uint32_t counts[4][256] = {};
    uint64_t i = 0;
    for (; i + 4 <= n; i += 4)
      for (int c = 0; c < 4; ++c) ++counts[c][(keys[i + c] >> shift) & 255u];
    for (; i < n; ++i) ++counts[0][(keys[i] >> shift) & 255u];
    uint32_t count[256];
    for (int d = 0; d < 256; ++d) count[d] = counts[0][d] + counts[1][d] + counts[2][d] + counts[3][d];
    uint32_t digit = 0;
    while (kth >= count[digit]) kth -= count[digit++];
    found |= digit << shift;
    uint64_t kept = 0;
    for (uint64_t i = 0; i < n; ++i) {
      const uint32_t key = keys[i];
      keys[kept] = key;
      kept += ((key >> shift) & 255u) == digit;
    }
    n = kept;
  }
  return key_float(found);
}

// Rate mode's robust scale (quant.py, _row_sigma) of one row of k >= 1 finite weights: med =
// its lower median (sorted position (k - 1) / 2) and mad = the lower median of |w[j] - med| (an
// fp32 subtraction): the values numpy's partition gives (a zero median may come out as -0 where
// numpy gives +0 or the reverse, which changes no |w - med|). scratch: k keys. Returns false,
// with med and mad unset, for a row holding a NaN or an infinity (the caller's reference path).
// Why here: the reference copies each row twice for numpy's partition and makes a temporary of
// w - med and of its absolute value: ~30% of SmolLM2's rate-mode compression.
inline bool row_median_mad(const float* w, uint64_t k, float* med, float* mad, uint32_t* scratch) {
  bool finite = true;
  for (uint64_t j = 0; j < k; ++j) {
    scratch[j] = float_key(w[j]);
    finite &= std::isfinite(w[j]);
  }
  if (!finite) return false;
  const uint64_t kth = (k - 1) / 2;
  const float m = select_kth(scratch, k, kth);
  for (uint64_t j = 0; j < k; ++j) scratch[j] = float_key(std::fabs(w[j] - m));
  *med = m;
  *mad = select_kth(scratch, k, kth);
  return true;
}

// sum (a[i] - b[i])^2 and sum a[i]^2 over n floats, in double: the quantization error and signal
// energy of an SQNR in one pass (NaN or infinite where a value is).
// Eight partial sums (element i in sum i % 8, added in a fixed order): a chain per sum, not one
// for all, and the same result on any machine.
inline void error_and_signal(const float* a, const float* b, uint64_t n, double* error, double* signal) {
  constexpr int kSums = 8;
  double e[kSums] = {}, s[kSums] = {};
  uint64_t i = 0;
  for (; i + kSums <= n; i += kSums)
    for (int l = 0; l < kSums; ++l) {
      const double x = a[i + l], d = x - double(b[i + l]);
      e[l] += d * d;
      s[l] += x * x;
    }
  for (int l = 0; i < n; ++i, ++l) {
    const double x = a[i], d = x - double(b[i]);
    e[l] += d * d;
    s[l] += x * x;
  }
  double error_sum = 0, signal_sum = 0;
  for (int l = 0; l < kSums; ++l) error_sum += e[l], signal_sum += s[l];
  *error = error_sum;
  *signal = signal_sum;
}

}  // namespace quantize
}  // namespace pycodec
