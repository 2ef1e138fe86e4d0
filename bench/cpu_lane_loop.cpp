// The CPU decoder's lane step alone (csrc/codec/windowed.h: decode_lanes_lockstep), with N lanes
// in lockstep: how many cycles one table step costs when it is a dependent chain (one lane) and
// when independent chains overlap (the decoder runs eight), with a peek of the stream per step
// or one peek per four steps (what the decoder does: a step is then a shift and a table load).
// Random bits and a random table of 8..12-bit, 2..3-code entries, 16 KiB like the real one: the
// loop's cost, not a stream's.
//
//   g++ -O3 -std=c++17 bench/cpu_lane_loop.cpp -o /tmp/lane_loop && /tmp/lane_loop
//
// Cycles are wall time times the clock measured by a chain of dependent adds (no counters
// in a VM).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr uint64_t kBitsMask = (uint64_t(1) << 25) - 1;  // lanes wrap inside 4 MiB of bits

inline uint64_t peek64(const uint8_t* be, uint64_t pos) {
  uint64_t v;
  std::memcpy(&v, be + (pos >> 3), 8);
  return __builtin_bswap64(v) << (pos & 7);
}

struct Lane {
  uint64_t pos;
  uint8_t* out;
};

template <int N>
__attribute__((noinline)) uint64_t run(const uint8_t* be, const uint32_t* table, uint8_t* scratch, uint64_t steps) {
  Lane l[N];
  for (int j = 0; j < N; ++j) l[j] = {uint64_t(j) << 22, scratch + j * 4096};
  for (uint64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) {
      const uint32_t e = table[peek64(be, l[j].pos & kBitsMask) >> 52];
      std::memcpy(l[j].out, &e, 4);
      l[j].out += (e >> 24) & 15;
      l[j].pos += e >> 28;
    }
    if ((s & 127) == 127)
      for (int j = 0; j < N; ++j) l[j].out = scratch + j * 4096;
  }
  uint64_t r = 0;
  for (int j = 0; j < N; ++j) r += l[j].pos;
  return r;
}

// Refill once per four lookups: a 64-bit peek holds >= 57 bits, four 12-bit lookups need 48.
template <int N>
__attribute__((noinline)) uint64_t run_quad(const uint8_t* be, const uint32_t* table, uint8_t* scratch, uint64_t steps) {
  Lane l[N];
  for (int j = 0; j < N; ++j) l[j] = {uint64_t(j) << 22, scratch + j * 4096};
  for (uint64_t s = 0; s < steps / 4; ++s) {
    uint64_t c[N];
    uint32_t used[N];
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) { c[j] = peek64(be, l[j].pos & kBitsMask); used[j] = 0; }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
#pragma GCC unroll 8
      for (int j = 0; j < N; ++j) {
        const uint32_t e = table[(c[j] << used[j]) >> 52];
        std::memcpy(l[j].out, &e, 4);
        l[j].out += (e >> 24) & 15;
        used[j] += e >> 28;
      }
    }
#pragma GCC unroll 8
    for (int j = 0; j < N; ++j) l[j].pos += used[j];
    if ((s & 31) == 31)
      for (int j = 0; j < N; ++j) l[j].out = scratch + j * 4096;
  }
  uint64_t r = 0;
  for (int j = 0; j < N; ++j) r += l[j].pos;
  return r;
}

double clock_ghz() {
  uint64_t x = 1;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t i = 0; i < 500000000; ++i) asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  return 2.0 / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <int N>
double cycles_per_lane_step(const uint8_t* be, const uint32_t* table, uint8_t* scratch, double ghz, bool quad = false) {
  const uint64_t lane_steps = 16000000, steps = lane_steps / N;
  double best = 1e9;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile uint64_t sink = quad ? run_quad<N>(be, table, scratch, steps) : run<N>(be, table, scratch, steps);
    (void)sink;
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best * ghz * 1e9 / double(steps * N);
}

}  // namespace

int main() {
  std::mt19937 g(1);
  std::vector<uint32_t> table(4096);
  for (auto& e : table) e = ((8 + g() % 5) << 28) | ((2 + g() % 2) << 24) | (g() & 0xFFFFFF);
  std::vector<uint8_t> be((size_t(1) << 22) + 64);
  for (auto& b : be) b = uint8_t(g());
  std::vector<uint8_t> scratch(8 * 4096 + 64);
  const double ghz = clock_ghz();
  std::printf("clock %.2f GHz\n", ghz);
  std::printf("lanes  cycles per lane-step (peek per step / one peek per 4 steps)\n");
  std::printf("%5d  %6.2f  %6.2f\n", 1, cycles_per_lane_step<1>(be.data(), table.data(), scratch.data(), ghz), cycles_per_lane_step<1>(be.data(), table.data(), scratch.data(), ghz, true));
  std::printf("%5d  %6.2f  %6.2f\n", 2, cycles_per_lane_step<2>(be.data(), table.data(), scratch.data(), ghz), cycles_per_lane_step<2>(be.data(), table.data(), scratch.data(), ghz, true));
  std::printf("%5d  %6.2f  %6.2f\n", 4, cycles_per_lane_step<4>(be.data(), table.data(), scratch.data(), ghz), cycles_per_lane_step<4>(be.data(), table.data(), scratch.data(), ghz, true));
  std::printf("%5d  %6.2f  %6.2f\n", 6, cycles_per_lane_step<6>(be.data(), table.data(), scratch.data(), ghz), cycles_per_lane_step<6>(be.data(), table.data(), scratch.data(), ghz, true));
  std::printf("%5d  %6.2f  %6.2f\n", 8, cycles_per_lane_step<8>(be.data(), table.data(), scratch.data(), ghz), cycles_per_lane_step<8>(be.data(), table.data(), scratch.data(), ghz, true));
}
