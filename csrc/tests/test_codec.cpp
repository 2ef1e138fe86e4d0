// C++ unit tests of the torch-free codec core. Built by CMake (target pycodec_core_tests),
// run by ctest and by tests/test_cpp_core.py, also under AddressSanitizer + UBSan.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../codec/codec.h"
#include "../codec/hash.h"
#include "../codec/huffman.h"
#include "../codec/rans.h"

using namespace pycodec;

static int g_failures = 0;
static int g_checks = 0;
#define CHECK(cond)                                                            \
  do {                                                                         \
    ++g_checks;                                                                \
    if (!(cond)) {                                                             \
      ++g_failures;                                                            \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                          \
  } while (0)

static std::vector<uint8_t> gaussian_symbols(size_t n, double sigma, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g(0.0, sigma);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = uint8_t(std::max(0.0, std::min(255.0, std::round(128 + g(rng)))));
  return v;
}

static double entropy_bits(const std::vector<uint8_t>& v) {
  double counts[256] = {0};
  for (uint8_t x : v) counts[x] += 1;
  double h = 0;
  for (double c : counts)
    if (c > 0) h -= c * std::log2(c / v.size());
  return h;
}

static void roundtrip(const std::vector<uint8_t>& v, Coder coder, uint32_t chunk, const char* what) {
  std::vector<uint8_t> blob;
  const uint64_t shape[1] = {v.size()};
  EncodeOptions opt;
  opt.coder = coder;
  opt.chunk_symbols = chunk;
  opt.threads = 2;
  CHECK(encode(v.data(), shape, 1, opt, &blob) == Status::Ok);
  std::vector<uint8_t> out(v.size() + 1, 0xAB);  // canary after the output
  const Status st = decode(blob.data(), blob.size(), out.data(), v.size(), 1);
  if (st != Status::Ok) std::fprintf(stderr, "roundtrip %s: %s\n", what, status_message(st));
  CHECK(st == Status::Ok);
  CHECK(std::equal(v.begin(), v.end(), out.begin()));
  CHECK(out[v.size()] == 0xAB);
}

static void test_package_merge_limits_lengths() {
  uint64_t counts[256] = {0};
  // Fibonacci weights force an unlimited Huffman code far deeper than 12 bits.
  uint64_t a = 1, b = 1;
  for (int s = 0; s < 40; ++s) {
    counts[s] = a;
    const uint64_t c = a + b;
    a = b;
    b = c;
  }
  huffman::Code code;
  CHECK(huffman::build_code(counts, code) == Status::Ok);
  uint32_t kraft = 0;
  for (int s = 0; s < 40; ++s) {
    CHECK(code.length[s] >= 1 && code.length[s] <= huffman::kMaxCodeLength);
    kraft += 1u << (huffman::kMaxCodeLength - code.length[s]);
  }
  CHECK(kraft == huffman::kTableSize);
  // More frequent symbols never get longer codes.
  for (int s = 1; s < 40; ++s) CHECK(code.length[s] <= code.length[s - 1]);
}

static void test_package_merge_optimal_on_dyadic() {
  uint64_t counts[256] = {0};
  counts[0] = 8, counts[1] = 4, counts[2] = 2, counts[3] = 1, counts[4] = 1;
  huffman::Code code;
  CHECK(huffman::build_code(counts, code) == Status::Ok);
  CHECK(code.length[0] == 1 && code.length[1] == 2 && code.length[2] == 3);
  CHECK(code.length[3] == 4 && code.length[4] == 4);
}

static void test_rans_normalize() {
  uint64_t counts[256] = {0};
  counts[3] = 1000000, counts[7] = 1, counts[200] = 5;
  rans::Model m;
  rans::normalize(counts, m);
  uint32_t sum = 0;
  for (int s = 0; s < 256; ++s) sum += m.freq[s];
  CHECK(sum == rans::kProbScale);
  CHECK(m.freq[7] >= 1 && m.freq[200] >= 1 && m.freq[4] == 0);
}

static void test_roundtrips() {
  for (Coder coder : {Coder::Huffman, Coder::Rans}) {
    roundtrip({}, coder, 0, "empty");
    roundtrip({42}, coder, 0, "one symbol");
    roundtrip(std::vector<uint8_t>(100000, 7), coder, 0, "constant");
    std::vector<uint8_t> all(256 * 37);
    for (size_t i = 0; i < all.size(); ++i) all[i] = uint8_t(i * 131);
    roundtrip(all, coder, 0, "all 256 values");
    for (uint32_t chunk : {32u, 64u, 96u, 4096u, 1u << 20})
      for (size_t n : {1u, 31u, 33u, 95u, 1000u, 70001u}) roundtrip(gaussian_symbols(n, 3.0, uint32_t(n)), coder, chunk, "gauss");
    std::vector<uint8_t> skew(200000, 0);
    std::mt19937 rng(1);
    for (auto& x : skew) x = (rng() % 1000 == 0) ? uint8_t(rng() % 256) : 0;
    roundtrip(skew, coder, 0, "skewed");
    std::vector<uint8_t> uni(100000);
    for (auto& x : uni) x = uint8_t(rng());
    roundtrip(uni, coder, 0, "uniform");
  }
}

static void test_efficiency() {
  const auto v = gaussian_symbols(1 << 20, 4.0, 7);
  const double h = entropy_bits(v) / 8.0;  // bytes
  for (Coder coder : {Coder::Huffman, Coder::Rans}) {
    std::vector<uint8_t> blob;
    const uint64_t shape[1] = {v.size()};
    EncodeOptions opt;
    opt.coder = coder;
    CHECK(encode(v.data(), shape, 1, opt, &blob) == Status::Ok);
    const double ratio = blob.size() / h;
    std::printf("efficiency %s: %.4f x entropy\n", coder == Coder::Huffman ? "huffman" : "rans", ratio);
    CHECK(ratio < (coder == Coder::Huffman ? 1.04 : 1.01));
  }
}

static void test_corruption_never_crashes() {
  const auto v = gaussian_symbols(20000, 2.0, 3);
  std::mt19937 rng(5);
  for (Coder coder : {Coder::Huffman, Coder::Rans}) {
    std::vector<uint8_t> blob;
    const uint64_t shape[2] = {100, 200};
    EncodeOptions opt;
    opt.coder = coder;
    opt.chunk_symbols = 1024;
    CHECK(encode(v.data(), shape, 2, opt, &blob) == Status::Ok);
    std::vector<uint8_t> out(v.size());
    int rejected = 0, mutated = 0;
    for (int trial = 0; trial < 3000; ++trial) {
      std::vector<uint8_t> bad = blob;
      const int kind = trial % 3;
      if (kind == 0) bad[rng() % bad.size()] ^= uint8_t(1u << (rng() % 8));
      else if (kind == 1) bad.resize(rng() % bad.size());
      else for (int k = 0; k < 8; ++k) bad[rng() % bad.size()] = uint8_t(rng());
      // A truncated blob must not be read past its end: give the decoder an exact-size copy.
      std::vector<uint8_t> exact(bad.begin(), bad.end());
      const Status st = decode(exact.data(), exact.size(), out.data(), out.size(), 1);
      if (bad == blob) continue;  // an overwrite may rewrite every byte to its own value
      ++mutated;
      rejected += st != Status::Ok;
    }
    CHECK(mutated > 2900 && rejected == mutated);
  }
}

static void test_hash_sensitivity() {
  std::vector<uint8_t> a(1000, 1);
  const uint64_t h = hash64(a.data(), a.size());
  for (size_t i = 0; i < a.size(); i += 37) {
    a[i] ^= 4;
    CHECK(hash64(a.data(), a.size()) != h);
    a[i] ^= 4;
  }
  CHECK(hash64(a.data(), 999) != hash64(a.data(), 1000));
}

int main() {
  test_package_merge_limits_lengths();
  test_package_merge_optimal_on_dyadic();
  test_rans_normalize();
  test_roundtrips();
  test_efficiency();
  test_corruption_never_crashes();
  test_hash_sensitivity();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
