// pycodec codec core: affine dequantization on the CPU (quant.py's affine layout).
//
// Read me first
// - w[r, j] = (float(q[r, j]) - zero[r, g]) * scale[r, g], g = j / group_size: in fp32, one
//   subtraction then one multiplication, as the PyTorch reference (quant.dequantize_affine)
//   computes it, so the fp32 result is the same bits; a bf16 result is that value rounded to
//   nearest even, as torch casts fp32 to bf16. Escapes are the caller's (a few scattered writes).
// - Why here: a CPU forward that does not keep decoded weights dequantizes every call; the
//   reference makes an fp32 copy, two in-place passes and a cast to the activations' dtype. One
//   pass writing the dtype the matmul wants is about half the memory traffic.
// - scale and zero are fp32, [rows, groups] (the caller widens the stored fp16 and expands a
//   broadcast zero); groups = ceil(k / group_size), the last group may be partial.
#pragma once

#include <cstdint>
#include <cstring>

namespace pycodec {
namespace dequant {

// fp32 -> bf16 bits, round to nearest even; NaN -> the quiet NaN torch writes. Branch-free, so
// the loops below vectorize.
inline uint16_t bf16_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  const int32_t magnitude = int32_t(b & 0x7FFFFFFFu);  // signed compare: SSE2 has no unsigned one
  return uint16_t(magnitude > 0x7F800000 ? 0x7FC0u : rounded);
}

inline void store(float* out, float v) { *out = v; }
inline void store(uint16_t* out, float v) { *out = bf16_bits(v); }

// Out: float (fp32) or uint16_t (bf16 bits).
template <class Out>
inline void affine(const uint8_t* q, uint64_t rows, uint64_t k, const float* scale, const float* zero,
                   uint64_t group_size, Out* out) {
  const uint64_t groups = (k + group_size - 1) / group_size;
  for (uint64_t r = 0; r < rows; ++r) {
    const uint8_t* qr = q + r * k;
    Out* o = out + r * k;
    for (uint64_t g = 0; g < groups; ++g) {
      const float s = scale[r * groups + g], z = zero[r * groups + g];
      const uint64_t end = g + 1 == groups ? k : (g + 1) * group_size;
      for (uint64_t j = g * group_size; j < end; ++j) store(o + j, (float(qr[j]) - z) * s);
    }
  }
}

// The entry points, compiled for x86-64-v4 (AVX-512) and v3 (AVX2) besides the baseline (the loader picks per
// CPU): the conversion to bf16 packs 32-bit lanes to 16, which SSE2 alone does slowly.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define PYCODEC_DEQUANT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYCODEC_DEQUANT_CLONES
#endif

PYCODEC_DEQUANT_CLONES inline void affine_fp32(const uint8_t* q, uint64_t rows, uint64_t k, const float* scale,
                                               const float* zero, uint64_t group_size, float* out) {
  affine(q, rows, k, scale, zero, group_size, out);
}

PYCODEC_DEQUANT_CLONES inline void affine_bf16(const uint8_t* q, uint64_t rows, uint64_t k, const float* scale,
                                               const float* zero, uint64_t group_size, uint16_t* out) {
  affine(q, rows, k, scale, zero, group_size, out);
}

// out[b * out_stride] = sum_j x[b * k + j] * w[j] for b < batch, in fp32: products summed into 64
// partial sums (by j mod 64: four AVX-512 registers, so four chains of adds run at once, not one
// waiting on the last) that are then added in a fixed order. One result per build (the AVX
// builds contract to FMA), the same for any thread count.
PYCODEC_DEQUANT_CLONES inline void dot_batch(const float* w, uint64_t k, const float* x, uint32_t batch, float* out,
                                             uint64_t out_stride) {
  constexpr int kPartial = 64;
  for (uint32_t b = 0; b < batch; ++b) {
    const float* xb = x + uint64_t(b) * k;
    float partial[kPartial] = {};
    uint64_t j = 0;
    for (; j + kPartial <= k; j += kPartial)
      for (int l = 0; l < kPartial; ++l) partial[l] += xb[j + l] * w[j + l];
    for (int l = 0; j < k; ++j, ++l) partial[l] += xb[j] * w[j];
    for (int l = 0; l < 32; ++l) partial[l] += partial[l + 32];  // whole vectors
    for (int l = 0; l < 16; ++l) partial[l] += partial[l + 16];
    float sum = 0;
    for (int l = 0; l < 16; ++l) sum += partial[l];
    out[uint64_t(b) * out_stride] = sum;
  }
}

// dot_batch of one affine row and one row of x without writing the row: out = sum_j x[j] *
// ((q[j] - zero[g]) * scale[g]), g = j / group_size, each weight rounded as affine_fp32 rounds
// it and summed into the same 64 partial sums in the same order as dot_batch, so the result is
// affine_fp32 then dot_batch's bit for bit. For rows whose 64-weight blocks each lie in one
// group (one group a row, or group_size a multiple of 64). The CPU matvec's batch-1 rows
// without escapes: one pass, no store and load of the row.
PYCODEC_DEQUANT_CLONES inline float affine_dot(const uint8_t* q, uint64_t k, const float* scale, const float* zero,
                                               uint64_t group_size, const float* x) {
  constexpr int kPartial = 64;
  float partial[kPartial] = {};
  uint64_t j = 0;
  for (; j + kPartial <= k; j += kPartial) {
    const float s = scale[j / group_size], z = zero[j / group_size];
    for (int l = 0; l < kPartial; ++l) partial[l] += x[j + l] * ((float(q[j + l]) - z) * s);
  }
  if (j < k) {
    const float s = scale[j / group_size], z = zero[j / group_size];
    for (int l = 0; j < k; ++j, ++l) partial[l] += x[j] * ((float(q[j]) - z) * s);
  }
  for (int l = 0; l < 32; ++l) partial[l] += partial[l + 32];
  for (int l = 0; l < 16; ++l) partial[l] += partial[l + 16];
  float sum = 0;
  for (int l = 0; l < 16; ++l) sum += partial[l];
  return sum;
}

}  // namespace dequant
}  // namespace pycodec
