// pycodec codec core: 32-lane interleaved rANS with 16-bit renormalisation.
//
// Read me first
// - rANS is last-in first-out: the encoder walks the chunk BACKWARDS (rounds in
//   reverse, lanes 31..0) and its output words are reversed, so the decoder walks
//   forwards. The decoder's initial states are the encoder's final states; they
//   are stored at the head of each chunk.
// - Symbol i of a chunk belongs to lane i % kLanes and is its (i / kLanes)-th symbol:
//   one state per CUDA warp lane, each with a fixed output position; a round of 32
//   lanes writes 32 contiguous bytes.
// - State x lives in [kStateLow, 2^32). Decoding one symbol shrinks x by at most
//   kProbBits bits; one 16-bit read restores the interval, so a lane reads at most
//   one word per symbol and a warp finds its readers with one ballot + popc.
// - Words of all lanes share one stream, in the order the decoder reads them:
//   round by round, lane 0 first.
// - Integrity for free: the encoder starts every lane at kStateLow, so a correct
//   decode ends with every state equal to kStateLow and every word consumed.
//
// Chunk payload (32-bit words):
//   [kLanes x uint32 initial decoder states][uint16 words in read order][uint16 0 pad if odd]
//   (the uint16 stream is little-endian: word 2k is the low half of 32-bit word k)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_vbmi.h"
#include "huffman.h"  // kLanes
#include "status.h"

namespace pycodec {
namespace rans {

constexpr int kAlphabet = 256;
constexpr int kProbBits = 12;                      // 4096-slot table (16 KiB): L1 on CPU, cheap in smem
constexpr uint32_t kProbScale = 1u << kProbBits;
constexpr int kWordBits = 16;                      // renormalisation unit
constexpr uint32_t kStateLow = 1u << 16;           // L: states live in [L, L << 16) = [2^16, 2^32)
constexpr uint64_t kStateHigh = uint64_t(kStateLow) << kWordBits;

static_assert(kStateLow % kProbScale == 0, "rANS needs L to be a multiple of the probability scale");
static_assert(kStateHigh == (uint64_t(1) << 32), "state must fill a uint32 exactly");
static_assert(kProbBits <= kWordBits, "a single 16-bit read must renormalise after any symbol");
static_assert(kAlphabet <= int(kProbScale), "every present symbol needs frequency >= 1");

PYCODEC_HD uint32_t rounds_of_lane(uint32_t n, uint32_t lane) { return lane < n ? (n - lane + kLanes - 1) / kLanes : 0; }
PYCODEC_HD uint32_t rounds_of(uint32_t n) { return rounds_of_lane(n, 0); }

// Decode table entry, 32 bits:  [31:20] slot - start   [19:8] freq - 1   [7:0] symbol
PYCODEC_HD uint32_t make_slot(uint32_t symbol, uint32_t freq, uint32_t offset) {
  return (offset << 20) | ((freq - 1) << 8) | symbol;
}

// Serialized table: 32-byte bitmap of present symbols (bit s%8 of byte s/8), then one
// little-endian uint16 frequency per present symbol in symbol order. Frequencies sum
// to kProbScale exactly.
constexpr uint32_t kBitmapBytes = kAlphabet / 8;

struct Model {
  uint32_t freq[kAlphabet];
  uint32_t start[kAlphabet];
};

// Quantizes counts to frequencies summing to kProbScale, every present symbol >= 1.
// Proportional rounding first, then the remaining difference is settled one unit at a
// time where it costs the fewest coded bits (count * log2 change), which keeps the
// loss against the empirical entropy to a few hundredths of a percent.
inline void normalize(const uint64_t counts[kAlphabet], Model& m) {
  uint64_t total = 0;
  for (int s = 0; s < kAlphabet; ++s) total += counts[s];
  std::memset(&m, 0, sizeof(m));
  if (total == 0) {
    m.freq[0] = kProbScale;
  } else {
    int64_t sum = 0;
    for (int s = 0; s < kAlphabet; ++s) {
      if (!counts[s]) continue;
      const double ideal = double(counts[s]) * kProbScale / double(total);
      m.freq[s] = std::max<uint32_t>(1, uint32_t(std::llround(ideal)));
      sum += m.freq[s];
    }
    while (sum != kProbScale) {
      int best = -1;
      double best_cost = 0;
      for (int s = 0; s < kAlphabet; ++s) {
        if (!counts[s]) continue;
        const double f = m.freq[s];
        double cost;
        if (sum > kProbScale) {
          if (m.freq[s] <= 1) continue;
          cost = double(counts[s]) * std::log2(f / (f - 1));  // bits gained by removing a unit
        } else {
          cost = -double(counts[s]) * std::log2((f + 1) / f);  // bits saved by adding one
        }
        if (best < 0 || cost < best_cost) best = s, best_cost = cost;
      }
      if (sum > kProbScale) --m.freq[best], --sum;
      else ++m.freq[best], ++sum;
    }
  }
  uint32_t acc = 0;
  for (int s = 0; s < kAlphabet; ++s) m.start[s] = acc, acc += m.freq[s];
}

inline void write_table(const Model& m, std::vector<uint8_t>& out) {
  uint8_t bitmap[kBitmapBytes] = {0};
  for (int s = 0; s < kAlphabet; ++s)
    if (m.freq[s]) bitmap[s / 8] |= uint8_t(1u << (s % 8));
  out.insert(out.end(), bitmap, bitmap + kBitmapBytes);
  for (int s = 0; s < kAlphabet; ++s) {
    if (!m.freq[s]) continue;
    out.push_back(uint8_t(m.freq[s] & 0xFF));
    out.push_back(uint8_t(m.freq[s] >> 8));
  }
}

inline Status read_table(const uint8_t* p, uint32_t n_bytes, Model& m) {
  std::memset(&m, 0, sizeof(m));
  if (n_bytes < kBitmapBytes) return Status::BadTable;
  uint32_t pos = kBitmapBytes, sum = 0;
  for (int s = 0; s < kAlphabet; ++s) {
    if (!(p[s / 8] >> (s % 8) & 1)) continue;
    if (pos + 2 > n_bytes) return Status::BadTable;
    const uint32_t f = uint32_t(p[pos]) | (uint32_t(p[pos + 1]) << 8);
    pos += 2;
    if (f == 0 || f > kProbScale) return Status::BadTable;
    m.freq[s] = f;
    sum += f;
  }
  if (pos != n_bytes || sum != kProbScale) return Status::BadTable;
  uint32_t acc = 0;
  for (int s = 0; s < kAlphabet; ++s) m.start[s] = acc, acc += m.freq[s];
  return Status::Ok;
}

inline void build_decode_table(const Model& m, uint32_t table[kProbScale]) {
  for (int s = 0; s < kAlphabet; ++s)
    for (uint32_t k = 0; k < m.freq[s]; ++k) table[m.start[s] + k] = make_slot(s, m.freq[s], k);
}

// x / f for every 32-bit x by a multiply and shifts (Granlund-Montgomery, rounding up): with
// l = ceil(log2 f) and m = ceil(2^(32 + l) / f) < 2^33, floor(x * m / 2^(32 + l)) = floor(x / f).
// m's low 32 bits and its bit 32 are kept apart, so the 65-bit product needs no 128-bit type.
struct Reciprocal {
  uint32_t low;   // m mod 2^32
  uint32_t high;  // m >> 32: 0 or 1
  uint32_t shift; // l
};

inline Reciprocal reciprocal_of(uint32_t f) {  // 1 <= f <= kProbScale
  uint32_t l = 0;
  while ((uint32_t(1) << l) < f) ++l;
  // ceil(2^(32 + l) / f) < 2^45: 64-bit arithmetic suffices for l <= 12.
  const uint64_t m = ((uint64_t(1) << (32 + l)) + f - 1) / f;
  return {uint32_t(m), uint32_t(m >> 32), l};
}

PYCODEC_HD uint32_t divide(uint32_t x, const Reciprocal& r) {
  // (x * m) >> 32 = ((x * low) >> 32) + x * high: x * high * 2^32 has no bits below 2^32.
  const uint64_t high_part = ((uint64_t(x) * r.low) >> 32) + (uint64_t(x) & (0 - uint64_t(r.high)));
  return uint32_t(high_part >> r.shift);
}

#ifdef PYCODEC_HAVE_VBMI
PYCODEC_INTRINSICS_BEGIN
// encode_chunk's whole rounds r = rounds - 1 .. 0, 16 lanes a vector (AVX-512; where the CPU has
// VBMI). Vectors hold lanes in descending order (31..16, then 15..0), the order the scalar
// encoder codes them in, so a round's renormalisation words leave by a compress store in the
// same order. x / f as in divide(), in 32-bit lanes: m = 2^32 + low for every f, so
// x * m >> 32 = x + t with t = (x * low) >> 32, and q = (t + ((x - t) >> 1)) >> (l - 1) keeps
// the 33-bit sum out of the lanes (l = 0, f = 1: q = x). words: room for 16 past the last kept.
// Two gathers a vector fetch each symbol's constants. A whole encode of 16M symbols on one
// thread of the 2-core EPYC: 0.44 GB/s scalar, 0.76 vectorised (2026-11-30).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline void encode_rounds_avx512(
    const uint8_t* sym, uint32_t rounds, const uint32_t* rcp_low, const uint32_t* packed, uint32_t state[kLanes],
    uint16_t* words, size_t* n_words_io) {
  const __m512i reverse = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i freq_mask = _mm512_set1_epi32(0x1FFF), start_mask = _mm512_set1_epi32(0xFFF);
  const __m512i four_bits = _mm512_set1_epi32(0xF), one = _mm512_set1_epi32(1);
  // x[0]: lanes 31..16, x[1]: lanes 15..0.
  __m512i x[2] = {_mm512_permutexvar_epi32(reverse, _mm512_loadu_si512(state + 16)),
                  _mm512_permutexvar_epi32(reverse, _mm512_loadu_si512(state))};
  size_t n_words = *n_words_io;
  for (uint32_t r = rounds; r-- > 0;) {
    for (int h = 0; h < 2; ++h) {
      const uint8_t* s16 = sym + size_t(r) * kLanes + (h == 0 ? 16 : 0);
      const __m512i s = _mm512_permutexvar_epi32(
          reverse, _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s16))));
      const __m512i low = _mm512_i32gather_epi32(s, rcp_low, 4);
      const __m512i k = _mm512_i32gather_epi32(s, packed, 4);
      const __m512i freq = _mm512_and_si512(k, freq_mask);
      const __m512i start = _mm512_and_si512(_mm512_srli_epi32(k, 13), start_mask);
      const __m512i l = _mm512_and_si512(_mm512_srli_epi32(k, 25), four_bits);
      // Emit when x >= f << 20 (x_max; f = 4096 gives 2^32, which wraps to 0: x > 2^32 - 1 never).
      const __m512i x_max_less_one = _mm512_sub_epi32(_mm512_slli_epi32(freq, 20), one);
      const __mmask16 emit = _mm512_cmpgt_epu32_mask(x[h], x_max_less_one);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(words + n_words),
                          _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(emit, x[h])));
      n_words += size_t(__builtin_popcount(emit));
      const __m512i v = _mm512_mask_srli_epi32(x[h], emit, x[h], kWordBits);
      // t = (v * low) >> 32 per lane: even lanes by one 32x32->64 multiply, odd ones by another.
      const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(v, low), 32);
      const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(v, 32), _mm512_srli_epi64(low, 32));
      const __m512i t = _mm512_mask_blend_epi32(0xAAAA, even, odd);
      const __m512i q_shifted =
          _mm512_srlv_epi32(_mm512_add_epi32(t, _mm512_srli_epi32(_mm512_sub_epi32(v, t), 1)),
                            _mm512_sub_epi32(l, one));
      const __m512i q = _mm512_mask_mov_epi32(q_shifted, _mm512_cmpeq_epi32_mask(l, _mm512_setzero_si512()), v);
      const __m512i rem = _mm512_sub_epi32(v, _mm512_mullo_epi32(q, freq));
      x[h] = _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(q, kProbBits), rem), start);
    }
  }
  _mm512_storeu_si512(state + 16, _mm512_permutexvar_epi32(reverse, x[0]));
  _mm512_storeu_si512(state, _mm512_permutexvar_epi32(reverse, x[1]));
  *n_words_io = n_words;
}
PYCODEC_INTRINSICS_END
#endif

// Encodes one chunk and appends its 32-bit words to `out`. Returns the number of words.
// No division and no branch a symbol: x / f by a reciprocal (the divide took ~12 cycles of a
// ~17-cycle symbol on the 2-core EPYC), and the renormalisation word is always stored and
// kept by moving the position on only when the state is too large (a quarter of the symbols,
// at random: a branch on it was mispredicted).
inline size_t encode_chunk(const uint8_t* sym, uint32_t n, const Model& m, std::vector<uint32_t>& out) {
  struct SymbolCoder {
    uint64_t x_max;  // ((L >> kProbBits) << kWordBits) * f: 64-bit, f = kProbScale gives 2^32
    Reciprocal rcp;
    uint32_t freq, start;
  };
  SymbolCoder coder[kAlphabet];
  for (int s = 0; s < kAlphabet; ++s) {
    const uint32_t f = std::max<uint32_t>(m.freq[s], 1);  // absent symbols never occur
    coder[s] = {(uint64_t(kStateLow >> kProbBits) << kWordBits) * f, reciprocal_of(f), f, m.start[s]};
  }
  uint32_t state[kLanes];
  for (int l = 0; l < kLanes; ++l) state[l] = kStateLow;
  thread_local std::vector<uint16_t> reversed;  // per thread: at most one word a symbol, + 16 stored past
  if (reversed.size() < size_t(n) + 16) reversed.resize(size_t(n) + 16);
  uint16_t* const words = reversed.data();
  size_t n_words = 0;
  const auto step = [&](uint32_t l, uint32_t s) {
    const SymbolCoder& c = coder[s];
    uint32_t x = state[l];
    const uint32_t emit = uint64_t(x) >= c.x_max;
    words[n_words] = uint16_t(x & 0xFFFF);
    n_words += emit;
    x >>= kWordBits & (0u - emit);  // a shift by 0 or 16: compilers made a select a branch
    const uint32_t q = divide(x, c.rcp);
    state[l] = (q << kProbBits) + (x - q * c.freq) + c.start;
  };
  const uint32_t rounds = rounds_of(n);
  const uint32_t full_rounds = n / kLanes;
  for (uint32_t r = rounds; r-- > full_rounds;)  // the last round, not whole
    for (int l = kLanes - 1; l >= 0; --l)
      if (r < rounds_of_lane(n, uint32_t(l))) step(uint32_t(l), sym[size_t(r) * kLanes + l]);
#ifdef PYCODEC_HAVE_VBMI
  if (vbmi::use_vbmi() && full_rounds) {
    uint32_t rcp_low[kAlphabet], packed[kAlphabet];  // for the gathers: divide()'s low, f | start | l
    for (int s = 0; s < kAlphabet; ++s) {
      rcp_low[s] = coder[s].rcp.low;
      packed[s] = coder[s].freq | (coder[s].start << 13) | (coder[s].rcp.shift << 25);
    }
    encode_rounds_avx512(sym, full_rounds, rcp_low, packed, state, words, &n_words);
  } else
#endif
  {
    for (uint32_t r = full_rounds; r-- > 0;) {
      const uint8_t* round = sym + size_t(r) * kLanes;
      for (int l = kLanes - 1; l >= 0; --l) step(uint32_t(l), round[l]);
    }
  }
  const size_t start = out.size();
  out.resize(start + kLanes + (n_words + 1) / 2);
  std::copy(state, state + kLanes, out.begin() + start);
  uint32_t* o = out.data() + start + kLanes;
  for (size_t k = n_words; k > 0; k -= std::min<size_t>(k, 2)) {
    const uint32_t lo = words[k - 1];
    const uint32_t hi = k >= 2 ? words[k - 2] : 0;
    *o++ = lo | (hi << 16);
  }
  return out.size() - start;
}

#ifdef PYCODEC_HAVE_VBMI
PYCODEC_INTRINSICS_BEGIN
static_assert(kLanes == 32, "two vectors of 16 lanes");

// decode_chunk's whole rounds, 16 lanes a vector (AVX-512; taken where the CPU has VBMI, the
// codec's one switch, cpu_vbmi.h): a gather looks up 16 states' slots, and a lane that needs a
// word takes the next one by an expand, lanes in order, as the scalar refill does. A whole
// decode, checksum included: 0.49 -> 1.73 GB/s of symbols on one thread of the 2-core EPYC
// (2026-11-30). Runs while a round's 32 words are in the stream; returns the rounds done.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline uint32_t decode_rounds_avx512(
    const uint32_t* table, uint32_t state[kLanes], const uint8_t* stream, size_t n16, size_t* pos_io, uint8_t* out,
    uint32_t rounds) {
  const __m512i slot_mask = _mm512_set1_epi32(int(kProbScale - 1)), freq_mask = _mm512_set1_epi32(0xFFF);
  const __m512i one = _mm512_set1_epi32(1), low = _mm512_set1_epi32(int(kStateLow));
  __m512i x[2] = {_mm512_loadu_si512(state), _mm512_loadu_si512(state + 16)};
  size_t pos = *pos_io;
  uint32_t r = 0;
  for (; r < rounds && n16 - pos >= size_t(kLanes); ++r) {
    for (int h = 0; h < 2; ++h) {
      const __m512i e = _mm512_i32gather_epi32(_mm512_and_si512(x[h], slot_mask), table, 4);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + size_t(r) * kLanes + 16 * h), _mm512_cvtepi32_epi8(e));
      const __m512i freq = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(e, 8), freq_mask), one);
      x[h] = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(x[h], kProbBits)), _mm512_srli_epi32(e, 20));
    }
    for (int h = 0; h < 2; ++h) {  // lanes 0..15 read first, then 16..31
      const __mmask16 need = _mm512_cmplt_epu32_mask(x[h], low);
      const __m512i words =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(stream + 2 * pos)));
      x[h] = _mm512_mask_or_epi32(x[h], need, _mm512_slli_epi32(x[h], kWordBits), _mm512_maskz_expand_epi32(need, words));
      pos += size_t(__builtin_popcount(need));
    }
  }
  _mm512_storeu_si512(state, x[0]);
  _mm512_storeu_si512(state + 16, x[1]);
  *pos_io = pos;
  return r;
}

PYCODEC_INTRINSICS_END
#endif

// Decodes one chunk of n symbols from exactly n_words 32-bit words.
// Never reads outside words[0, n_words) nor writes outside out[0, n).
inline Status decode_chunk(const uint32_t* table, const uint32_t* words, size_t n_words, uint8_t* out,
                           uint32_t n) {
  if (n_words < size_t(kLanes)) return Status::CorruptPayload;
  uint32_t state[kLanes];
  std::memcpy(state, words, sizeof(state));
  const uint8_t* stream = reinterpret_cast<const uint8_t*>(words + kLanes);
  const size_t n16 = (n_words - kLanes) * 2;
  auto read16 = [stream](size_t i) { return uint32_t(stream[2 * i]) | (uint32_t(stream[2 * i + 1]) << 8); };
  size_t pos = 0;
  const uint32_t full_rounds = n / kLanes;
  uint32_t r = 0;
#ifdef PYCODEC_HAVE_VBMI
  if (vbmi::use_vbmi()) r = decode_rounds_avx512(table, state, stream, n16, &pos, out, full_rounds);
#endif
  // Fast path: a round reads at most kLanes words. Two passes per round: decoding is
  // independent per lane; only the refill pass chains lanes (through the word position),
  // and that chain is one add per lane instead of a whole decode.
  for (; r < full_rounds && n16 - pos >= size_t(kLanes); ++r) {
    uint8_t* o = out + size_t(r) * kLanes;
    for (int l = 0; l < kLanes; ++l) {
      const uint32_t x = state[l];
      const uint32_t e = table[x & (kProbScale - 1)];
      state[l] = (((e >> 8) & 0xFFF) + 1) * (x >> kProbBits) + (e >> 20);
      o[l] = uint8_t(e);
    }
    for (int l = 0; l < kLanes; ++l) {
      // Masked, not branched: a refill happens on about a quarter of the symbols, at random.
      const uint32_t x = state[l];
      const uint32_t need = uint32_t(x < kStateLow);
      const uint32_t mask = 0u - need;
      state[l] = (x & ~mask) | (((x << kWordBits) | read16(pos)) & mask);
      pos += need;
    }
  }
  const uint32_t rounds = rounds_of(n);
  for (; r < rounds; ++r) {
    for (uint32_t l = 0; l < kLanes; ++l) {
      if (r >= rounds_of_lane(n, l)) continue;
      uint32_t x = state[l];
      const uint32_t e = table[x & (kProbScale - 1)];
      x = (((e >> 8) & 0xFFF) + 1) * (x >> kProbBits) + (e >> 20);
      if (x < kStateLow) {
        if (pos >= n16) return Status::CorruptPayload;
        x = (x << kWordBits) | read16(pos++);
      }
      out[size_t(r) * kLanes + l] = uint8_t(e);
      state[l] = x;
    }
  }
  for (int l = 0; l < kLanes; ++l)
    if (state[l] != kStateLow) return Status::CorruptPayload;
  const bool exact = pos == n16 || (pos + 1 == n16 && read16(pos) == 0);
  return exact ? Status::Ok : Status::CorruptPayload;
}

}  // namespace rans
}  // namespace pycodec
