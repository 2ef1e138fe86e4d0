// pycodec codec core: the checksum of decoded symbols.
//
// Read me first
// - Purpose: detect corruption and decoder bugs, not adversaries. It is not cryptographic.
// - Four independent 64-bit accumulators consume 32-byte blocks so that the multiply
//   latency of one accumulator overlaps the others (21 GB/s on one core of the 2-core EPYC
//   VM, so hashing costs ~10% of the CPU decoder's ~2 GB/s of symbols). A buffer's four chains
//   are its limit: the CPU codec hashes several chunks at once to go faster (cpu_vbmi.h,
//   hash64_batch: 8 chunks, 74 GB/s).
// - A stream's checksum is hash64 over the little-endian array of its per-chunk hashes.
//   Chunks therefore hash independently (one thread or one GPU block per chunk) and the
//   combine step touches 8 bytes per chunk.
// - The exact definition is normative: docs/FORMAT.md describes the same steps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "status.h"

namespace pycodec {

// Odd constants with well-mixed bits (golden ratio and two 64-bit primes).
constexpr uint64_t kHashMulA = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kHashMulB = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kHashMulC = 0x165667B19E3779F9ull;
constexpr int kHashLanes = 4;
constexpr size_t kHashBlockBytes = kHashLanes * sizeof(uint64_t);

PYCODEC_HD uint64_t hash_mix_word(uint64_t acc, uint64_t word) {
  acc = (acc ^ word) * kHashMulB;
  return acc ^ (acc >> 29);
}

PYCODEC_HD uint64_t hash_avalanche(uint64_t h) {
  h ^= h >> 33;
  h *= kHashMulC;
  h ^= h >> 29;
  h *= kHashMulA;
  return h ^ (h >> 32);
}

PYCODEC_HD uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

inline void hash64_init(uint64_t lane[kHashLanes], uint64_t seed = 0) {
  for (int i = 0; i < kHashLanes; ++i) lane[i] = seed + kHashMulA * uint64_t(i + 1);
}

// hash64's last steps, once its lanes have taken every whole block: data[pos, n) is what is left
// (pos = n / 32 * 32). Shared with the CPU's several-buffers-at-once form (cpu_vbmi.h).
inline uint64_t hash64_finish(const uint64_t lane[kHashLanes], const uint8_t* data, size_t n, size_t pos) {
  uint64_t h = uint64_t(n) * kHashMulC;
  for (int i = 0; i < kHashLanes; ++i) h = hash_mix_word(h, lane[i]);
  for (; pos + 8 <= n; pos += 8) h = hash_mix_word(h, load_le64(data + pos));
  uint64_t tail = 0;
  for (size_t k = 0; pos + k < n; ++k) tail |= uint64_t(data[pos + k]) << (8 * k);
  h = hash_mix_word(h, tail ^ (uint64_t(n - pos) << 56));
  return hash_avalanche(h);
}

inline uint64_t hash64(const uint8_t* data, size_t n, uint64_t seed = 0) {
  uint64_t lane[kHashLanes];
  hash64_init(lane, seed);
  size_t pos = 0;
  for (; pos + kHashBlockBytes <= n; pos += kHashBlockBytes) {
    for (int i = 0; i < kHashLanes; ++i) {
      uint64_t w;
      std::memcpy(&w, data + pos + 8 * i, 8);  // little-endian hosts only (see format.h)
      lane[i] = hash_mix_word(lane[i], w);
    }
  }
  return hash64_finish(lane, data, n, pos);
}

}  // namespace pycodec
