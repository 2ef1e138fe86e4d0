// C++ unit tests of the torch-free codec core. Built by CMake (target pycodec_core_tests),
// run by ctest and by tests/test_cpp_core.py, also under AddressSanitizer + UBSan.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../codec/codec.h"
#include "../codec/cpu_vbmi.h"
#include "../codec/dequant.h"
#include "../codec/emulate.h"
#include "../codec/fixed12.h"
#include "../codec/hash.h"
#include "../codec/huffman.h"
#include "../codec/quantize.h"
#include "../codec/rans.h"
#include "../codec/split.h"
#include "../codec/windowed.h"
#include "../codec/windowed_emulate.h"

using namespace pycodec;

// Every stream kind the core writes: v2 windowed Huffman (the default), v1 rANS, v1 Huffman.
struct Kind {
  Coder coder;
  uint16_t version;
  const char* name;
};
static const Kind kKinds[] = {{Coder::Huffman, 2, "huffman v2"}, {Coder::Rans, 1, "rans"}, {Coder::Huffman, 1, "huffman v1"}};

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

// n symbols drawn from a normal distribution, rounded and clipped to [0, top].
static std::vector<uint8_t> rounded_normal(size_t n, double mean, double sd, double top, std::mt19937& rng) {
  std::vector<uint8_t> sym(n);
  std::normal_distribution<double> g(mean, sd);
  for (auto& v : sym) v = uint8_t(std::min(top, std::max(0.0, std::round(g(rng)))));
  return sym;
}

// A blob copied as the kernels read it (word-aligned, exactly kSlackWords readable words after
// it) and its kernel view, the stream stage sized to its longest chunk.
struct KernelStream {
  std::vector<uint32_t> words;
  windowed::StreamView view;
};
static void kernel_stream(const std::vector<uint8_t>& blob, const StreamInfo& info, KernelStream* ks) {
  ks->words.assign((blob.size() + 3) / 4 + windowed::kSlackWords, 0);
  std::memcpy(ks->words.data(), blob.data(), blob.size());
  const uint8_t* base = reinterpret_cast<const uint8_t*>(ks->words.data());
  ks->view = windowed::StreamView{reinterpret_cast<const uint32_t*>(base + info.index_offset),
                                  reinterpret_cast<const uint16_t*>(base + info.sizes_offset),
                                  reinterpret_cast<const uint32_t*>(base + info.payload_offset), info.payload_words,
                                  info.n_symbols, info.chunk_symbols, info.n_chunks, info.lanes, false};
  ks->view.max_chunk_words = max_chunk_words(base, info);
}

// A 1 x n stream of `sym` in chunks of `chunk` symbols and `lanes` lanes, with its header and the
// decode tables the kernels take (multi-symbol entries, code lengths, count table).
struct LaneStream {
  std::vector<uint8_t> blob;
  StreamInfo info;
  alignas(16) uint32_t table[kDecodeTableEntries + 64 + kDecodeTableEntries / 4];
  const uint8_t* lengths() const { return reinterpret_cast<const uint8_t*>(table + kDecodeTableEntries); }
  const uint8_t* count() const { return lengths() + 256; }
};
static void lane_stream(const std::vector<uint8_t>& sym, uint32_t lanes, uint32_t chunk, LaneStream* ls) {
  const uint64_t shape[2] = {1, sym.size()};
  EncodeOptions opt;
  opt.lanes = lanes;
  opt.chunk_symbols = chunk;
  CHECK(encode(sym.data(), shape, 2, opt, &ls->blob) == Status::Ok);
  CHECK(parse_header(ls->blob.data(), ls->blob.size(), &ls->info) == Status::Ok);
  uint8_t* lengths = reinterpret_cast<uint8_t*>(ls->table + kDecodeTableEntries);
  CHECK(build_decode_table(ls->blob.data(), ls->blob.size(), ls->table, lengths, lengths + 256) == Status::Ok);
}

// x as the GEMV kernels read it ([k + kXPadRows][batch], zero rows past k), uniform in [-1, 1).
static std::vector<float> kernel_x(uint32_t k, uint32_t batch, std::mt19937& rng) {
  std::vector<float> x((k + windowed::kXPadRows) * batch, 0.f);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (uint32_t i = 0; i < k * batch; ++i) x[i] = u(rng);
  return x;
}

static double entropy_bits(const std::vector<uint8_t>& v) {
  double counts[256] = {0};
  for (uint8_t x : v) counts[x] += 1;
  double h = 0;
  for (double c : counts)
    if (c > 0) h -= c * std::log2(c / v.size());
  return h;
}

static void roundtrip(const std::vector<uint8_t>& v, const Kind& kind, uint32_t chunk, const char* what,
                      uint32_t lanes = 0) {
  std::vector<uint8_t> blob;
  const uint64_t shape[1] = {v.size()};
  EncodeOptions opt;
  opt.coder = kind.coder;
  opt.format_version = kind.version;
  opt.chunk_symbols = chunk;
  opt.lanes = lanes;
  opt.threads = 2;
  const Status enc = encode(v.data(), shape, 1, opt, &blob);
  if (enc != Status::Ok) std::fprintf(stderr, "roundtrip %s (%s): encode: %s\n", what, kind.name, status_message(enc));
  CHECK(enc == Status::Ok);
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

// The package-merge selection as the textbook walks it: every selected item of the top level,
// a package expanding into its pair below, each leaf reached adding one to its length. The
// codec counts the selection level by level instead (huffman.h); both must agree exactly (the
// lengths are the stream's bytes), ties included.
static void walked_package_merge(const uint64_t counts[256], uint8_t lengths[256]) {
  struct Item {
    uint64_t weight;
    int leaf;  // symbol, or -1 for a package of items 2 * pkg, 2 * pkg + 1 below
    int pkg;
  };
  std::memset(lengths, 0, 256);
  std::vector<int> present;
  for (int s = 0; s < 256; ++s)
    if (counts[s]) present.push_back(s);
  const int n = int(present.size());
  if (n < 2) return;
  std::stable_sort(present.begin(), present.end(), [&](int a, int b) { return counts[a] < counts[b]; });
  const int L = huffman::kMaxCodeLength;
  std::vector<std::vector<Item>> level(L);
  for (int d = L - 1; d >= 0; --d) {
    const int n_pkg = d + 1 < L ? int(level[d + 1].size()) / 2 : 0;
    int leaf = 0, pkg = 0;
    while (leaf < n || pkg < n_pkg) {
      const uint64_t pw = pkg < n_pkg ? level[d + 1][2 * pkg].weight + level[d + 1][2 * pkg + 1].weight : 0;
      if (pkg == n_pkg || (leaf < n && counts[present[leaf]] <= pw)) {
        level[d].push_back({counts[present[leaf]], present[leaf], -1});
        ++leaf;
      } else {
        level[d].push_back({pw, -1, pkg++});
      }
    }
  }
  std::vector<std::pair<int, int>> todo;
  for (int i = 0; i < 2 * n - 2; ++i) todo.push_back({0, i});
  while (!todo.empty()) {
    const auto [d, i] = todo.back();
    todo.pop_back();
    const Item& it = level[d][i];
    if (it.leaf >= 0) {
      ++lengths[it.leaf];
    } else {
      todo.push_back({d + 1, 2 * it.pkg});
      todo.push_back({d + 1, 2 * it.pkg + 1});
    }
  }
}

static void test_package_merge_counts_what_the_walk_selects() {
  std::mt19937_64 rng(37);
  int differ = 0;
  for (int t = 0; t < 20000; ++t) {
    uint64_t counts[256] = {0};
    const int present = 1 + int(rng() % 256);
    for (int i = 0; i < present; ++i) {
      const uint64_t r = rng();
      // Small counts (many ties), powers of two (exact ties between leaves and packages), wide
      // ranges (codes hitting the length limit).
      counts[rng() % 256] = t % 4 == 0 ? 1 + r % 1000 : t % 4 == 1 ? uint64_t(1) << (r % 40)
                          : t % 4 == 2 ? 1 + r % 3 : 1 + r % (uint64_t(1) << 40);
    }
    uint8_t counted[256], walked[256];
    huffman::build_code_lengths(counts, counted);
    walked_package_merge(counts, walked);
    differ += std::memcmp(counted, walked, 256) != 0;
  }
  CHECK(differ == 0);
}

// The encoder's vector helpers (cpu_vbmi.h) against scalar references, for every chunk length
// up to a few blocks (ASan sees a write past prefix[m] or the last four) and symbols over all
// 256 bytes or the lower 128 only: the running sum of code lengths, and codes joined by fours.
static void test_encoder_vector_helpers() {
#ifdef PYCODEC_HAVE_VBMI
  if (!vbmi::cpu_has_vbmi()) return;
  std::mt19937 rng(41);
  for (int alphabet : {256, 128, 7}) {
    uint8_t length[256] = {0};
    uint16_t code[256] = {0};
    for (int s = 0; s < alphabet; ++s) {
      length[s] = uint8_t(1 + rng() % huffman::kMaxCodeLength);
      code[s] = uint16_t(rng() & ((1u << length[s]) - 1));
    }
    vbmi::CodeBytes table;
    vbmi::make_code_bytes(code, length, &table);
    CHECK(table.wide == (alphabet > 128));
    for (uint32_t m = 0; m <= 300; ++m) {
      std::vector<uint8_t> sym(m);
      for (auto& s : sym) s = uint8_t(rng() % alphabet);
      std::vector<uint32_t> want(m + 1), got(m + 1);
      want[0] = 0;
      for (uint32_t i = 0; i < m; ++i) want[i + 1] = want[i] + length[sym[i]];
      vbmi::prefix_code_bits(sym.data(), m, length, got.data());
      CHECK(got == want);
      std::vector<uint64_t> quad(m / 4);
      std::vector<uint8_t> quad_bits(m / 4);
      vbmi::join_codes4(sym.data(), m, table, quad.data(), quad_bits.data());
      bool same = true;
      for (uint32_t q = 0; q < m / 4; ++q) {
        uint64_t v = 0;
        for (uint32_t k = 4 * q; k < 4 * q + 4; ++k) v = v << length[sym[k]] | code[sym[k]];
        same &= quad[q] == v && quad_bits[q] == want[4 * q + 4] - want[4 * q];
      }
      CHECK(same);
    }
  }
#endif
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

// The rANS encoder divides by a reciprocal (rans.h): equal to x / f for every frequency and
// for states at the edges (0, multiples of f and their neighbours, the top of the range) and
// at random.
static void test_rans_reciprocal_division() {
  std::mt19937 rng(43);
  int wrong = 0;
  for (uint32_t f = 1; f <= rans::kProbScale; ++f) {
    const rans::Reciprocal r = rans::reciprocal_of(f);
    wrong += r.high != 1;  // m in [2^32, 2^33): the vector encoder counts on it
    for (uint32_t x : {0u, 1u, f - 1, f, f + 1, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFEu, 0xFFFFFFFFu})
      wrong += rans::divide(x, r) != x / f;
    for (int k = 0; k < 200; ++k) {
      const uint32_t x = uint32_t(rng()), y = x / f * f;
      wrong += rans::divide(x, r) != x / f;
      wrong += rans::divide(y, r) != y / f;
      wrong += y && rans::divide(y - 1, r) != (y - 1) / f;
    }
  }
  CHECK(wrong == 0);
}

static void test_roundtrips() {
  for (const Kind& kind : kKinds) {
    roundtrip({}, kind, 0, "empty");
    roundtrip({42}, kind, 0, "one symbol");
    roundtrip(std::vector<uint8_t>(100000, 7), kind, 0, "constant");
    std::vector<uint8_t> all(256 * 37);
    for (size_t i = 0; i < all.size(); ++i) all[i] = uint8_t(i * 131);
    roundtrip(all, kind, 0, "all 256 values");
    const uint32_t big = kind.version == 2 ? windowed::kMaxChunkSymbols : kMaxChunkSymbols;
    for (uint32_t chunk : {32u, 64u, 96u, 4096u, big})
      for (size_t n : {1u, 31u, 33u, 95u, 1000u, 70001u}) roundtrip(gaussian_symbols(n, 3.0, uint32_t(n)), kind, chunk, "gauss");
    std::vector<uint8_t> skew(200000, 0);
    std::mt19937 rng(1);
    for (auto& x : skew) x = (rng() % 1000 == 0) ? uint8_t(rng() % 256) : 0;
    roundtrip(skew, kind, 0, "skewed");
    std::vector<uint8_t> uni(100000);
    for (auto& x : uni) x = uint8_t(rng());
    roundtrip(uni, kind, 0, "uniform");
  }
  // v2: every lane count, odd chunk sizes, chunks shorter than a lane's window.
  const Kind& v2 = kKinds[0];
  for (uint32_t lanes = 1; lanes <= 32; ++lanes)
    for (uint32_t chunk : {1u, 7u, 100u, 577u, 5000u})
      roundtrip(gaussian_symbols(chunk * 3 + 1, 1.5 + lanes % 7, lanes * chunk), v2, chunk, "lanes", lanes);
}

// Lanes of one chunk that move at very different speeds: runs of a 1-bit code (three codes a
// table step) beside runs of long codes (one a step). The CPU decoder's lanes then cross their
// windows' ends rounds apart, past what its unchecked overrun allows, and it finishes them from
// the tail tables (windowed.h: decode_lanes_lockstep); evenly mixed runs take the overrun.
static void test_uneven_lanes() {
  const Kind& v2 = kKinds[0];
  std::mt19937 rng(29);
  for (uint32_t run : {8u, 64u, 300u, 2048u, 20000u}) {
    std::vector<uint8_t> v(40000);
    for (size_t i = 0; i < v.size(); ++i) v[i] = (i / run) % 2 ? uint8_t(1 + rng() % 255) : 0;
    for (uint32_t chunk : {0u, 512u, 4096u}) roundtrip(v, v2, chunk, "uneven lanes");
    roundtrip(v, v2, 4096, "uneven lanes, 8 lanes", 8);
  }
}

static void test_efficiency() {
  const auto v = gaussian_symbols(1 << 20, 4.0, 7);
  const double h = entropy_bits(v) / 8.0;  // bytes
  for (const Kind& kind : kKinds) {
    std::vector<uint8_t> blob;
    const uint64_t shape[1] = {v.size()};
    EncodeOptions opt;
    opt.coder = kind.coder;
    opt.format_version = kind.version;
    CHECK(encode(v.data(), shape, 1, opt, &blob) == Status::Ok);
    const double ratio = blob.size() / h;
    std::printf("efficiency %s: %.4f x entropy\n", kind.name, ratio);
    CHECK(ratio < (kind.coder == Coder::Huffman ? 1.04 : 1.01));
  }
}

// The multi-symbol table decodes exactly what single-code decoding gives, and never trusts
// bits past the 12 it was indexed with.
static void test_multi_table_matches_single_codes() {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    uint64_t counts[256] = {0};
    const int k = 2 + int(rng() % 200);
    for (int i = 0; i < k; ++i) counts[rng() % 256] += 1 + (rng() % (1u << (rng() % 20)));
    huffman::Code code;
    CHECK(huffman::build_code(counts, code) == Status::Ok);
    if (code.constant) continue;
    windowed::MultiTable t;
    windowed::build_multi_table(code, t);
    for (uint32_t v = 0; v < windowed::kTableSize; ++v) {
      const uint32_t e = t.entry[v];
      uint32_t pos = 0, n = windowed::entry_count(e);
      CHECK(n >= 1 && n <= 3 && windowed::entry_bits(e) <= 12);
      for (uint32_t i = 0; i < n; ++i) {
        const int sym = int(windowed::entry_symbol(e, int(i)));
        const uint32_t len = code.length[sym];
        CHECK(len >= 1 && pos + len <= 12);
        CHECK(((v << pos) & 0xFFF) >> (12 - len) == code.code[sym]);
        pos += len;
      }
      CHECK(pos == windowed::entry_bits(e));
      for (uint32_t i = n; i < 3; ++i) CHECK(windowed::entry_symbol(e, int(i)) == 0);
      if (n < 3) {  // the next code did not fit: its length exceeds the bits left
        const uint32_t rest = (v << pos) & 0xFFF;
        bool fits = false;
        for (int s = 0; s < 256; ++s)
          if (code.length[s] && code.length[s] <= 12 - pos && rest >> (12 - code.length[s]) == code.code[s]) fits = true;
        CHECK(!fits);
      }
    }
    // The tail tables: with w < 12 bits of window left, the codes that end inside those w bits
    // (up to 3), the same codes the whole entry starts with.
    for (uint32_t w = 0; w < 12; ++w)
      for (uint32_t u = 0; u < (1u << w); ++u) {
        const uint32_t e = t.tail[(1u << w) - 1 + u];
        const uint32_t whole = t.entry[u << (12 - w)];
        uint32_t bits = 0, n = 0;
        while (n < windowed::entry_count(whole)) {
          const uint32_t len = code.length[windowed::entry_symbol(whole, int(n))];
          if (bits + len > w) break;
          bits += len;
          ++n;
        }
        CHECK(windowed::entry_count(e) == n && windowed::entry_bits(e) == bits);
        CHECK((e & 0xFFFFFFu) == (whole & ((1u << (8 * n)) - 1)));
        if (n == 0) CHECK(e == 0);
      }
  }
}

// A lane's symbols into out[0, limit), written only there, any write past it flagged: the plain
// reference for the decode kernels' RunByteSink (windowed.h), which writes whole entries.
struct CheckedByteSink {
  uint8_t* out;
  uint32_t limit;
  bool overflow = false;
  void put(uint32_t e, uint32_t at) {
    const uint32_t n = windowed::entry_count(e);
    if (at + n > limit) {
      overflow = true;
      return;
    }
    for (uint32_t k = 0; k < n; ++k) out[at + k] = uint8_t(windowed::entry_symbol(e, int(k)));
  }
};

// The per-lane primitives a GPU warp runs (count pass, prefix sum, count decode) rebuild
// exactly what decode_chunk gives: the CPU emulation of the kernels' bit schedule.
static void test_lane_primitives_match_chunk_decoder() {
  const auto v = gaussian_symbols(30000, 3.0, 17);
  for (uint32_t lanes : {1u, 5u, 8u, 32u}) {
    std::vector<uint8_t> blob;
    const uint64_t shape[2] = {30, 1000};
    EncodeOptions opt;
    opt.lanes = lanes;
    opt.chunk_symbols = 1000;
    CHECK(encode(v.data(), shape, 2, opt, &blob) == Status::Ok);
    StreamInfo s;
    CHECK(parse_header(blob.data(), blob.size(), &s) == Status::Ok);
    if (!(s.version == 2 && s.lanes == lanes && s.chunk_symbols == 1000)) {
      CHECK(false);
      continue;
    }
    huffman::Code code;
    CHECK(huffman::read_table(blob.data() + s.table_offset, s.table_bytes, code) == Status::Ok);
    windowed::MultiTable t;
    windowed::build_multi_table(code, t);
    const std::vector<uint64_t> off = chunk_offsets(blob.data(), s);
    const uint32_t* payload = reinterpret_cast<const uint32_t*>(blob.data() + s.payload_offset);
    std::vector<uint8_t> out(v.size(), 0);
    for (uint64_t c = 0; c < s.n_chunks; ++c) {
      const uint32_t* w = payload + off[c];
      const uint32_t n_words = uint32_t(off[c + 1] - off[c]);
      const uint64_t window = windowed::lane_window_bits(n_words, lanes);
      uint32_t start[33] = {0};
      for (uint32_t l = 0; l + 1 < lanes; ++l) {  // pass 1
        windowed::LaneReader r;
        r.init(w, n_words, l * window);
        windowed::NullSink null;
        uint32_t used;
        const uint32_t count = windowed::decode_window(t.entry, t.length, r, uint32_t(window), null, &used);
        start[l + 1] = windowed::next_lane_start(start[l], count, 1000);
      }
      start[lanes] = 1000;
      for (uint32_t l = 0; l < lanes; ++l) {  // pass 2
        windowed::LaneReader r;
        r.init(w, n_words, l * window);
        CheckedByteSink sink{out.data() + c * 1000 + start[l], start[l + 1] - start[l]};
        windowed::decode_count(t.entry, t.length, r, start[l + 1] - start[l], sink);
        CHECK(!sink.overflow);
        // The kernels' sink writes whole entries while >= 6 symbols are left (put_run): its writes
        // must stay inside the lane's range (on a GPU the next lane writes beside it at once).
        const uint32_t count = start[l + 1] - start[l];
        std::vector<uint8_t> run(count + 6, 0xAB);  // 3 canaries each side
        windowed::LaneReader again;
        again.init(w, n_words, l * window);
        windowed::RunByteSink run_sink{run.data() + 3};
        windowed::decode_count(t.entry, t.length, again, count, run_sink);
        CHECK(std::equal(run.begin() + 3, run.end() - 3, out.begin() + c * 1000 + start[l]));
        CHECK(run[0] == 0xAB && run[1] == 0xAB && run[2] == 0xAB && run[count + 3] == 0xAB &&
              run[count + 4] == 0xAB && run[count + 5] == 0xAB);
      }
    }
    CHECK(out == v);
  }
}

// An empty blob anywhere (at an odd address: the decoders copy a misaligned blob to read it as
// words; or null) is refused by every entry point, with nothing read or copied (UBSan: no
// memcpy from it).
static void test_empty_blob_at_any_address() {
  alignas(8) static const uint8_t storage[8] = {0};
  for (const uint8_t* blob : {storage, storage + 1}) {
    uint8_t out8[4];
    uint16_t out16[4];
    uint64_t counts[256];
    const uint64_t chunk = 0;
    const uint32_t values[1] = {0}, raw[1] = {0};
    static uint32_t table[kDecodeTableEntries];
    CHECK(decode(blob, 0, out8, 0, 1) != Status::Ok);
    CHECK(histogram(blob, 0, counts, 1) != Status::Ok);
    CHECK(build_decode_table(blob, 0, table) != Status::Ok);
    CHECK(decode_chunks(blob, 0, &chunk, 1, out8, 4, 1) != Status::Ok);
    CHECK(decode_split(blob, 0, values, 1, 10, raw, 1, out16, 0, 1) != Status::Ok);
    CHECK(decode_split_chunks(blob, 0, &chunk, 1, values, 1, 10, raw, 1, out16, 4, 1) != Status::Ok);
    CHECK(emulate_decode(blob, 0, out8, 0) != Status::Ok);
  }
  uint8_t out[1];
  CHECK(emulate_decode(nullptr, 0, out, 0) != Status::Ok);  // the kernels' emulation copies the blob too
}

static void test_corruption_never_crashes() {
  const auto v = gaussian_symbols(20000, 2.0, 3);
  std::mt19937 rng(5);
  for (const Kind& kind : kKinds) {
    std::vector<uint8_t> blob;
    const uint64_t shape[2] = {100, 200};
    EncodeOptions opt;
    opt.coder = kind.coder;
    opt.format_version = kind.version;
    opt.chunk_symbols = 1024;
    CHECK(encode(v.data(), shape, 2, opt, &blob) == Status::Ok);
    std::vector<uint8_t> out(v.size());
    int rejected = 0, mutated = 0;
    for (int trial = 0; trial < 3000; ++trial) {
      std::vector<uint8_t> bad = blob;
      const int k = trial % 3;
      if (k == 0) bad[rng() % bad.size()] ^= uint8_t(1u << (rng() % 8));
      else if (k == 1) bad.resize(rng() % bad.size());
      else for (int j = 0; j < 8; ++j) bad[rng() % bad.size()] = uint8_t(rng());
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

// Chunks of fewer than 8 lanes decode in groups (windowed::decode_chunk_group): every chunk's
// status and symbols must be what decoding it alone gives, with bits flipped or a word cut off
// in some of them (so a bad chunk sits beside good ones), for every lane count below 8.
static void test_chunk_groups_match_single_chunks() {
  std::mt19937 rng(37);
  for (int trial = 0; trial < 120; ++trial) {
    const uint32_t lanes = 1 + trial % 7;
    const uint32_t count = windowed::chunks_per_group(lanes);
    CHECK(count * lanes <= 8 && count >= 1);
    std::vector<std::vector<uint8_t>> symbols(count);
    uint64_t counts[256] = {0};
    const int alphabet = 2 + int(rng() % 40);
    for (auto& chunk : symbols) {
      chunk.resize(1 + rng() % 3000);
      for (auto& x : chunk) counts[x = uint8_t(std::min<uint32_t>(rng() % alphabet, rng() % alphabet))]++;
    }
    huffman::Code code;
    CHECK(huffman::build_code(counts, code) == Status::Ok);
    if (code.constant) continue;
    windowed::MultiTable table;
    windowed::build_multi_table(code, table);
    std::vector<std::vector<uint32_t>> words(count);
    for (uint32_t i = 0; i < count; ++i) {
      CHECK(windowed::encode_chunk(symbols[i].data(), uint32_t(symbols[i].size()), code, lanes, words[i]) == Status::Ok);
      if (rng() % 3 == 0) words[i][rng() % words[i].size()] ^= 1u << (rng() % 32);
      if (rng() % 5 == 0) words[i].pop_back();  // maybe to no words at all
    }
    std::vector<std::vector<uint8_t>> grouped(count), alone(count);
    windowed::ChunkJob jobs[8];
    for (uint32_t i = 0; i < count; ++i) {
      grouped[i].assign(symbols[i].size(), 0);
      alone[i].assign(symbols[i].size(), 0);
      jobs[i] = {words[i].data(), uint32_t(words[i].size()), grouped[i].data(), uint32_t(symbols[i].size())};
    }
    Status status[8];
    std::vector<uint8_t> scratch;
    windowed::decode_chunk_group(table, jobs, count, lanes, status, scratch);
    for (uint32_t i = 0; i < count; ++i) {
      const Status single = windowed::decode_chunk(table, words[i].data(), uint32_t(words[i].size()), lanes,
                                                   alone[i].data(), uint32_t(symbols[i].size()), scratch);
      CHECK(status[i] == single);
      if (single == Status::Ok) CHECK(grouped[i] == alone[i]);
    }
  }
}

// The decode kernel's emulation (pass 1, clamped scan, pass 2 through unchecked readers over the
// kernels' slack) matches the CPU decoder on valid streams and, under ASan, never reads or writes
// outside its buffers on mutated ones.
static void test_kernel_emulation_on_valid_and_hostile_streams() {
  std::mt19937 rng(23);
  for (uint32_t lanes : {1u, 3u, 16u, 32u}) {
    const auto v = gaussian_symbols(12000 + lanes, 1.0 + lanes % 5, lanes);
    std::vector<uint8_t> blob;
    const uint64_t shape[2] = {1, v.size()};
    EncodeOptions opt;
    opt.lanes = lanes;
    opt.chunk_symbols = 977;
    CHECK(encode(v.data(), shape, 2, opt, &blob) == Status::Ok);
    std::vector<uint8_t> out(v.size());
    CHECK(emulate_decode(blob.data(), blob.size(), out.data(), out.size()) == Status::Ok);
    CHECK(out == v);
    StreamInfo s;
    CHECK(parse_header(blob.data(), blob.size(), &s) == Status::Ok);
    for (int trial = 0; trial < 400; ++trial) {
      std::vector<uint8_t> bad = blob;
      for (int k = 0; k < 1 + trial % 4; ++k)  // the payload only: the header checksum guards the rest
        bad[s.payload_offset + rng() % (bad.size() - s.payload_offset)] ^= uint8_t(1u << (rng() % 8));
      std::vector<uint8_t> got(v.size() + 1, 0xAB);
      const Status emu = emulate_decode(bad.data(), bad.size(), got.data(), v.size());
      CHECK(got[v.size()] == 0xAB);  // canary
      std::vector<uint8_t> cpu(v.size());
      if (decode(bad.data(), bad.size(), cpu.data(), cpu.size(), 1) == Status::Ok)
        CHECK(emu == Status::Ok && std::equal(cpu.begin(), cpu.end(), got.begin()));
    }
  }
}

// Lane starts (windowed.h): lane_starts() gives each lane's count as a byte as the CPU decoder
// places the lanes, and the decode kernel's emulation reading them decodes what its count pass
// decodes. Hostile bytes on buffers with exactly the kernels' slack stay inside them (ASan) and
// are flagged where they do not fit the chunk (sums past its end).
static void test_lane_starts() {
  using namespace windowed;
  std::mt19937 rng(41);
  struct Case {
    uint32_t lanes, chunk;
    size_t n;
    bool skewed;  // each chunk's first half one 1-bit code, its second half long ones: lanes far from m / G
  };
  for (const Case& c : {Case{1, 977, 5000, false}, Case{3, 977, 12000, false}, Case{16, 4096, 30000, false},
                        Case{32, 4096, 40000, false}, Case{32, 65536, 70000, false}, Case{32, 131072, 140000, false},
                        Case{8, 333, 333, false}, Case{32, 40, 100, false}, Case{32, 8192, 20000, true}}) {
    auto sym = gaussian_symbols(c.n, 1.0 + c.lanes % 5, c.lanes + c.chunk);
    for (size_t i = 0; c.skewed && i < sym.size(); ++i) sym[i] = i % c.chunk < c.chunk / 2 ? 0 : uint8_t(1 + rng() % 200);
    std::vector<uint8_t> blob;
    const uint64_t shape[2] = {1, sym.size()};
    EncodeOptions opt;
    opt.lanes = c.lanes;
    opt.chunk_symbols = c.chunk;
    CHECK(encode(sym.data(), shape, 2, opt, &blob) == Status::Ok);
    StreamInfo info;
    CHECK(parse_header(blob.data(), blob.size(), &info) == Status::Ok);
    const uint64_t n_starts = lane_start_count(info);
    CHECK(n_starts == info.n_chunks * info.lanes);
    std::vector<uint8_t> starts(n_starts + 1, 0xAB);  // a canary after them
    uint64_t counts[256];
    CHECK(lane_starts(blob.data(), blob.size(), starts.data(), n_starts, counts) == Status::Ok);
    CHECK(starts[n_starts] == 0xAB);
    CHECK(lane_starts(blob.data(), blob.size(), starts.data(), n_starts + 1, counts) == Status::OutputSize);
    starts.pop_back();
    // Each chunk's bytes either escape whole or sum to starts inside the chunk.
    bool fits = true;
    uint64_t escaped = 0;
    for (uint64_t ch = 0; ch < info.n_chunks; ++ch) {
      const uint32_t m = uint32_t(std::min<uint64_t>(info.chunk_symbols, sym.size() - ch * info.chunk_symbols));
      const uint8_t* b = starts.data() + ch * info.lanes;
      if (b[0] == kLaneCountEscape && info.lanes > 1) {
        ++escaped;
        fits &= std::all_of(b, b + info.lanes, [](uint8_t x) { return x == kLaneCountEscape; });
        continue;
      }
      uint32_t at = 0;
      for (uint32_t l = 0; l < info.lanes; ++l) at += lane_count_from_start_byte(b[l], l, info.lanes, m);
      fits &= at <= m;
    }
    CHECK(fits);
    CHECK(c.skewed ? escaped > 0 : escaped == 0);
    alignas(16) uint32_t table[kDecodeTableEntries + 64 + kDecodeTableEntries / 4];
    uint8_t* lengths = reinterpret_cast<uint8_t*>(table + kDecodeTableEntries);
    CHECK(build_decode_table(blob.data(), blob.size(), table, lengths, lengths + 256) == Status::Ok);
    KernelStream ks;  // the kernels' slack, no more
    kernel_stream(blob, info, &ks);
    StreamView& v = ks.view;
    auto decode_with = [&](const uint8_t* lane_starts, std::vector<uint8_t>& out, uint32_t* status) {
      v.lane_starts = lane_starts;
      out.assign(sym.size() + 1, 0xAB);
      *status = 0;
      CHECK(host::windowed_decode(v, table, out.data(), status) == Status::Ok);
      CHECK(out[sym.size()] == 0xAB);
      out.pop_back();
    };
    std::vector<uint8_t> counted, started;
    uint32_t counted_status, started_status;
    decode_with(nullptr, counted, &counted_status);
    decode_with(starts.data(), started, &started_status);
    CHECK(counted == sym && started == sym && counted_status == 0 && started_status == 0);
    int flagged = 0;
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<uint8_t> bad = starts;
      switch (trial % 4) {
        case 0:  // any bytes
          for (auto& s : bad) s = uint8_t(rng());
          break;
        case 1:  // one lane moved by a little
          bad[rng() % n_starts] += uint8_t(int(rng() % 7) - 3);
          break;
        case 2:  // the longest ranges a byte can claim
          bad[rng() % n_starts] = trial % 8 == 2 ? 0 : 254;
          break;
        default:  // another chunk's bytes
          std::rotate(bad.begin(), bad.begin() + info.lanes / 2 + 1, bad.end());
      }
      std::vector<uint8_t> out;
      uint32_t status;
      decode_with(bad.data(), out, &status);
      flagged += status != 0;
      if (status == 0 && bad == starts) CHECK(out == sym);
    }
    CHECK(flagged > 0 || c.lanes == 1);
  }
}

// The fused GEMV's host twin reads each chunk from a stream stage (StageReader, as the kernel's
// stream_shared copy): with honest lane starts and the stream's max_chunk_words, the rows
// equal those of the count pass bit for bit; with hostile starts, or a max_chunk_words that
// understates the chunks (a stage cut short), it stays inside every buffer (ASan) and never hangs.
static void test_gemv_stream_stage() {
  using namespace windowed;
  std::mt19937 rng(43);
  const uint32_t n_rows = 64, k = 512, group = 128, groups = k / group;
  const std::vector<uint8_t> sym = rounded_normal(size_t(n_rows) * k, 128.0, 5.0, 255.0, rng);
  std::vector<uint8_t> blob;
  const uint64_t shape[2] = {n_rows, k};
  EncodeOptions opt;
  opt.chunk_symbols = 2 * k;
  opt.lanes = 32;
  CHECK(encode(sym.data(), shape, 2, opt, &blob) == Status::Ok);
  StreamInfo info;
  CHECK(parse_header(blob.data(), blob.size(), &info) == Status::Ok);
  std::vector<uint8_t> starts(lane_start_count(info));
  uint64_t counts[256];
  CHECK(lane_starts(blob.data(), blob.size(), starts.data(), starts.size(), counts) == Status::Ok);
  alignas(16) uint32_t table[kDecodeTableEntries + 64 + kDecodeTableEntries / 4];
  uint8_t* lengths = reinterpret_cast<uint8_t*>(table + kDecodeTableEntries);
  CHECK(build_decode_table(blob.data(), blob.size(), table, lengths, lengths + 256) == Status::Ok);
  uint16_t value[256];
  affine_values(128.f, value);
  std::vector<uint64_t> values(kTableSize);
  build_value_table(table, lengths, value, values.data());
  KernelStream ks;
  kernel_stream(blob, info, &ks);
  StreamView& v = ks.view;
  const uint32_t most = v.max_chunk_words;
  CHECK(most > 0);
  std::vector<float> x(k + kXPadRows, 0.f), prefix(k + 1, 0.f);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (uint32_t i = 0; i < k; ++i) x[i] = u(rng), prefix[i + 1] = prefix[i] + x[i];
  std::vector<uint16_t> scale(size_t(n_rows) * groups, 0x2000);  // fp16 2^-7
  const uint16_t zero = 0x5800;                                  // fp16 128
  auto run = [&](const uint8_t* lane_starts, uint32_t max_words, std::vector<float>& y) {
    v.lane_starts = lane_starts;
    v.max_chunk_words = max_words;
    y.assign(n_rows + 1, 7.f);  // canary at the end
    AffineArgs a{x.data(), prefix.data(), scale.data(), &zero, n_rows, k, group, groups, true, 128.f,
                 nullptr, nullptr, nullptr, 0, y.data()};
    const Status st = host::windowed_gemv_affine(v, values.data(), table, a, 1, false);
    CHECK((st == Status::Ok || st == Status::CorruptPayload) && y.back() == 7.f);
    return st;
  };
  std::vector<float> counted, started;
  CHECK(run(nullptr, most, counted) == Status::Ok);
  CHECK(run(starts.data(), most, started) == Status::Ok);
  CHECK(counted == started);
  double ref = 0;  // row 5 in float64: the stage holds the same bits as the payload
  for (uint32_t c = 0; c < k; ++c) ref += double(x[c]) * (double(sym[5 * k + c]) - 128.0) / 128.0;
  CHECK(std::fabs(counted[5] - ref) <= 1e-4 * (1.0 + std::fabs(ref)));
  // The tile kernel's twin reads its chunks in place (FastReader): a lane's range from the bytes is
  // bounded by the payload's slack there (lane_reads_bounded), not by a stage.
  const uint32_t batch = 17, pad = 8 * tile_batch_tiles(batch);
  std::vector<uint16_t> x16(size_t(pad) * k, 0);
  for (uint32_t b = 0; b < batch; ++b)
    for (uint32_t c = 0; c < k; ++c) x16[size_t(b) * k + c] = uint16_t(0x3C00 + (rng() & 0xFF));  // bf16 ~0.008
  std::vector<float> prefix_t(size_t(k + 1) * pad, 0.f);
  auto run_tile = [&](const uint8_t* lane_starts, std::vector<float>& y) {
    v.lane_starts = lane_starts;
    y.assign(size_t(pad) * n_rows + 1, 7.f);
    TileArgs t{x16.data(), prefix_t.data(), scale.data(), &zero, n_rows, k, group, groups, pad, true, false, 128.f,
               nullptr, nullptr, nullptr, 0, y.data()};
    const Status st = host::windowed_tile_affine(v, table, t, batch);
    CHECK((st == Status::Ok || st == Status::CorruptPayload) && y.back() == 7.f);
    return st;
  };
  std::vector<float> tile_counted, tile_started;
  CHECK(run_tile(nullptr, tile_counted) == Status::Ok && run_tile(starts.data(), tile_started) == Status::Ok);
  CHECK(tile_counted == tile_started);
  for (int trial = 0; trial < 120; ++trial) {
    std::vector<uint8_t> bad = starts;
    if (trial % 7 == 0) {  // every count 0: each chunk's last lane claims the whole chunk
      std::fill(bad.begin(), bad.end(), 0);
    } else {
      for (int j = 0; j < 1 + trial % 5; ++j) bad[rng() % bad.size()] = trial % 3 ? uint8_t(rng()) : 254;
    }
    std::vector<float> y;
    run(bad.data(), trial % 4 == 0 ? 0 : trial % 4 == 1 ? most / 3 : most, y);
    run(starts.data(), trial % 2 ? 0 : 1, y);  // honest starts, a stage cut short
    v.max_chunk_words = most;
    run_tile(bad.data(), y);
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

// hash64 of up to eight buffers at once (cpu_vbmi.h, where the CPU has AVX-512 DQ) is hash64 of
// each: every length 0..200 (every tail and block count), every count 1..8, buffers at odd
// addresses and exactly sized (ASan sees a read past one). Then whole streams: encode and decode
// hash their chunks so (a stream's short last chunk apart), so streams are the same bytes, and
// decode, with the batches on and off.
static void test_hash_batches() {
#ifdef PYCODEC_HAVE_VBMI
  if (vbmi::cpu_has_avx512dq()) {
    std::mt19937 rng(41);
    for (size_t n = 0; n <= 200; ++n)
      for (uint32_t count = 1; count <= vbmi::kHashBatch; ++count) {
        std::vector<std::vector<uint8_t>> buffers(count);
        const uint8_t* data[vbmi::kHashBatch];
        for (uint32_t k = 0; k < count; ++k) {
          buffers[k].resize(n + 1);
          for (auto& b : buffers[k]) b = uint8_t(rng());
          data[k] = buffers[k].data() + 1;  // odd addresses; exactly n bytes from there on
        }
        uint64_t got[vbmi::kHashBatch];
        vbmi::hash64_batch(data, count, n, got);
        for (uint32_t k = 0; k < count; ++k) CHECK(got[k] == hash64(data[k], n));
      }
  }
#endif
  for (const uint64_t n : {uint64_t(1), uint64_t(4095), uint64_t(8 * 1024 + 17), uint64_t(100000)}) {
    const auto v = gaussian_symbols(n, 3.0, uint32_t(n));
    for (const Kind& kind : kKinds) {
      EncodeOptions opt;
      opt.coder = kind.coder;
      opt.format_version = kind.version;
      opt.chunk_symbols = 1024;
      std::vector<uint8_t> with, without;
      CHECK(encode(v.data(), &n, 1, opt, &with) == Status::Ok);
      simd_wanted().store(false);
      CHECK(encode(v.data(), &n, 1, opt, &without) == Status::Ok);
      CHECK(with == without);
      std::vector<uint8_t> out(n);
      CHECK(decode(with.data(), with.size(), out.data(), n, 2) == Status::Ok && out == v);
      simd_wanted().store(true);
      std::fill(out.begin(), out.end(), 0);
      CHECK(decode(with.data(), with.size(), out.data(), n, 2) == Status::Ok && out == v);
      with[with.size() - 1] ^= 0x10;  // a payload bit: a chunk's symbols change, or it fails to decode
      CHECK(decode(with.data(), with.size(), out.data(), n, 1) != Status::Ok);
    }
  }
}

// 16-bit floats split by their plan (split.h) and the table that merges them back: where the
// merge tests start. raw holds exactly the raw words, so ASan sees a read past them.
struct SplitCase {
  explicit SplitCase(const std::vector<uint16_t>& bits) {
    const size_t n = bits.size();
    if (split::make_plan(bits.data(), n, &plan) != Status::Ok) return;
    symbols.resize(n);
    raw.resize(split::raw_words(n, plan.width - plan.top));
    split::apply_plan(bits.data(), n, plan, symbols.data(), raw.data());
    ok = split::make_merge_table(plan.values, plan.n_values, plan.top, &table) == Status::Ok;
  }
  bool ok = false;
  split::Plan plan;
  std::vector<uint8_t> symbols;
  std::vector<uint32_t> raw;
  split::MergeTable<uint16_t> table;
};

// Lossless split of 16-bit floats, merged back by the vector merge (where the CPU has it) and
// the scalar one: every raw width the plans pick, spans that start off a 64-element block,
// more and fewer than 128 values.
static void test_split_merge_paths_agree() {
  std::mt19937 rng(23);
  for (int trial = 0; trial < 40; ++trial) {
    const size_t n = 1 + rng() % 5000;
    std::vector<uint16_t> bits(n);
    const int spread = 1 + int(rng() % 60);  // exponents in use: the number of top values
    for (auto& b : bits) b = uint16_t(((rng() & 1) << 15) | ((100 + rng() % spread) << 7) | (rng() & 127));
    const SplitCase c(bits);
    CHECK(c.ok);
    if (!c.ok) continue;
    const split::Plan& plan = c.plan;
    const std::vector<uint8_t>& symbols = c.symbols;
    const std::vector<uint32_t>& raw = c.raw;
    const split::MergeTable<uint16_t>& t = c.table;
    for (bool simd : {true, false}) {
      simd_wanted().store(simd);
      const uint64_t first = rng() % n;  // a span from any element on
      std::vector<uint16_t> out(n - first, 0);
      std::vector<uint8_t> be;
      CHECK(split::merge_span(t, symbols.data() + first, first, n - first, raw.data(), raw.size(), out.data(), be));
      CHECK(std::equal(out.begin(), out.end(), bits.begin() + long(first)));
      // One symbol past the values anywhere in the span (a head, a 64-wide block, the tail) is
      // refused, by the vector merge as by the scalar one.
      if (plan.n_values < 256) {
        std::vector<uint8_t> bad(symbols.begin() + long(first), symbols.end());
        bad[rng() % bad.size()] = uint8_t(plan.n_values + rng() % (256 - plan.n_values));
        CHECK(!split::merge_span(t, bad.data(), first, n - first, raw.data(), raw.size(), out.data(), be));
      }
    }
  }
  simd_wanted().store(true);
}

// The vector merge's streaming stores (split_vbmi.h, VectorWriter): an output at every word
// offset from a cache line, spans from any element and of any length, give the scalar merge's
// values and write nothing outside the span; a whole decode_split streamed (threshold 0, on two
// threads) equals one that is not.
static void test_split_merge_streaming() {
  std::mt19937 rng(29);
  for (int trial = 0; trial < 64; ++trial) {
    const size_t n = 1 + rng() % 9000;
    std::vector<uint16_t> bits(n);
    const int spread = 1 + int(rng() % 200);
    for (auto& b : bits) b = uint16_t(((rng() & 1) << 15) | ((rng() % spread) << 7) | (rng() & 127));
    const SplitCase c(bits);
    CHECK(c.ok);
    if (!c.ok) continue;
    const uint64_t first = trial < 32 ? 0 : rng() % n;
    const uint64_t count = n - first;
    const uint32_t offset = uint32_t(trial % 32);  // words from a line
    constexpr uint16_t kGuard = 0xA5A5;
    std::vector<uint16_t> space(count + 128, kGuard);
    uint16_t* line = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(space.data()) + 63) & ~uintptr_t(63));
    uint16_t* out = line + offset;
    std::vector<uint8_t> be;
    CHECK(split::merge_span(c.table, c.symbols.data() + first, first, count, c.raw.data(), c.raw.size(), out, be,
                            true));
    CHECK(std::equal(out, out + count, bits.begin() + long(first)));
    bool guards_kept = true;
    for (uint16_t* p = space.data(); p < out; ++p) guards_kept &= *p == kGuard;
    for (uint16_t* p = out + count; p < space.data() + space.size(); ++p) guards_kept &= *p == kGuard;
    CHECK(guards_kept);
  }
  for (const uint64_t n : {uint64_t(1), uint64_t(4095), uint64_t(70001)}) {
    std::vector<uint16_t> bits(n);
    for (auto& b : bits) b = uint16_t(((rng() & 1) << 15) | ((110 + rng() % 30) << 7) | (rng() & 127));
    EncodeOptions opt;
    opt.chunk_symbols = 4096;
    split::Plan plan;
    std::vector<uint32_t> raw;
    std::vector<uint8_t> blob;
    const auto allocate_raw = [&](size_t words) { raw.resize(words); return raw.data(); };
    const auto allocate = [&](size_t bytes) { blob.resize(bytes); return blob.data(); };
    CHECK(encode_split(bits.data(), &n, 1, opt, &plan, allocate_raw, allocate) == Status::Ok);
    for (const uint64_t threshold : {uint64_t(0), ~uint64_t(0)}) {
      const uint64_t before = set_streaming_output_bytes(threshold);
      std::vector<uint16_t> space(n + 64, 0);
      uint16_t* out = space.data() + 3;  // off a line, whatever the allocator gives
      CHECK(decode_split(blob.data(), blob.size(), plan.values, plan.n_values, plan.top, raw.data(), raw.size(), out,
                         n, 2) == Status::Ok);
      CHECK(std::equal(out, out + n, bits.begin()));
      set_streaming_output_bytes(before);
    }
  }
}

// Rate mode's radix selection (quantize.h, select_kth): the element a sort puts at every
// position, on rows of few distinct values (bf16-cast), signed zeros, subnormals and extremes,
// for lengths around the point where it hands the rest to nth_element.
static void test_select_kth() {
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 3e38f, -3e38f, 1.0f, -1.0f};
  for (int trial = 0; trial < 300; ++trial) {
    const uint64_t n = 1 + rng() % (trial < 100 ? 70 : 3000);
    std::vector<float> row(n);
    for (auto& x : row) {
      x = normal(rng);
      if (trial % 3 == 0) {  // bf16-cast: few distinct values
        uint32_t b;
        std::memcpy(&b, &x, 4);
        b &= 0xFFFF0000u;
        std::memcpy(&x, &b, 4);
      }
      if (rng() % 16 == 0) x = specials[rng() % 8];
    }
    std::vector<float> sorted = row;
    std::sort(sorted.begin(), sorted.end());
    std::vector<uint32_t> keys(n);
    bool all_equal = true;
    for (uint64_t kth : {uint64_t(0), (n - 1) / 2, n - 1, uint64_t(rng() % n)}) {
      for (uint64_t i = 0; i < n; ++i) keys[i] = quantize::float_key(row[i]);
      all_equal &= quantize::select_kth(keys.data(), n, kth) == sorted[kth];  // -0 == +0: sort ties them
    }
    CHECK(all_equal);
  }
}

static float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// The split's packings (one unrolled per raw width a plan picks, a loop for the rest) against
// a field-by-field reference: every top of 16- and 32-bit floats, tensors that end mid-block,
// and the parallel split (blocks on several threads) equal to the serial one; with the vector
// split on and off.
template <class T>
static void check_split_widths(std::mt19937& rng) {
  const int width = 8 * int(sizeof(T));
  for (int top = 1; top <= split::kMaxTop; ++top) {
    const size_t n = (top % 3 == 0 ? (size_t(1) << 19) : 0) + 1 + rng() % 3000;  // > 1 block sometimes
    std::vector<T> bits(n);
    for (auto& b : bits) b = T(uint64_t(rng()) * (uint64_t(1) << 32 | 1) >> (64 - width));
    split::Plan plan{};
    plan.width = width;
    plan.top = top;
    std::vector<uint32_t> seen(size_t(1) << top, 0);
    for (auto b : bits) seen[b >> (width - top)] = 1;
    for (uint32_t v = 0; v < seen.size() && plan.n_values < split::kMaxValues; ++v)
      if (seen[v]) plan.values[plan.n_values++] = v;
    const int low = width - top;
    std::vector<uint8_t> number(size_t(1) << top, 0);
    for (uint32_t s = 0; s < plan.n_values; ++s) number[plan.values[s]] = uint8_t(s);
    std::vector<uint8_t> want_symbols(n);
    std::vector<uint32_t> want_raw(split::raw_words(n, low), 0);
    for (size_t i = 0; i < n; ++i) {
      want_symbols[i] = number[bits[i] >> low];
      for (int k = 0; k < low; ++k)  // bit k of the field, MSB first, at bit i * low + k
        if (bits[i] >> (low - 1 - k) & 1) {
          const uint64_t at = uint64_t(i) * low + k;
          want_raw[at / 32] |= 1u << (31 - at % 32);
        }
    }
    for (bool simd : {true, false})  // the vector split (16-bit floats, low <= 8) and the scalar one
      for (int threads : {1, 2}) {
        simd_wanted().store(simd);
        std::vector<uint8_t> symbols(n);
        std::vector<uint32_t> raw(want_raw.size(), 0xDEADBEEF);  // every word is written
        apply_split(bits.data(), n, plan, symbols.data(), raw.data(), threads);
        CHECK(symbols == want_symbols);
        CHECK(raw == want_raw);
      }
    simd_wanted().store(true);
    split::Plan serial, parallel;
    if (split::make_plan(bits.data(), n, &serial) == Status::Ok) {
      CHECK(plan_split(bits.data(), n, &parallel, 2) == Status::Ok);
      CHECK(parallel.top == serial.top && parallel.n_values == serial.n_values &&
            std::equal(serial.values, serial.values + serial.n_values, parallel.values));
    }
  }
}

static void test_split_packings() {
  std::mt19937 rng(29);
  check_split_widths<uint16_t>(rng);
  check_split_widths<uint32_t>(rng);
}

// dequant.h: fp32 values as (q - zero) * scale per group (the last one partial), and bf16 by
// round-to-nearest-even, ties both ways, infinities and NaN.
static void test_affine_dequantization() {
  CHECK(dequant::bf16_bits(1.0f) == 0x3F80);
  CHECK(dequant::bf16_bits(from_bits(0x3F808000u)) == 0x3F80);  // a tie to even: down
  CHECK(dequant::bf16_bits(from_bits(0x3F818000u)) == 0x3F82);  // a tie to even: up
  CHECK(dequant::bf16_bits(from_bits(0x3F808001u)) == 0x3F81);
  CHECK(dequant::bf16_bits(from_bits(0xFF800000u)) == 0xFF80);  // -inf stays
  CHECK(dequant::bf16_bits(from_bits(0x7F7FFFFFu)) == 0x7F80);  // the largest float rounds to inf
  CHECK(dequant::bf16_bits(from_bits(0xFFC12345u)) == 0x7FC0);  // NaN
  const uint64_t rows = 3, k = 10, group_size = 4, groups = 3;
  std::vector<uint8_t> q(rows * k);
  for (size_t i = 0; i < q.size(); ++i) q[i] = uint8_t(i * 37);
  std::vector<float> scale(rows * groups), zero(rows * groups);
  for (size_t i = 0; i < scale.size(); ++i) {
    scale[i] = 0.01f * float(i + 1);
    zero[i] = 100.5f + float(i);
  }
  std::vector<float> w(rows * k);
  std::vector<uint16_t> h(rows * k);
  dequant::affine_fp32(q.data(), rows, k, scale.data(), zero.data(), group_size, w.data());
  dequant::affine_bf16(q.data(), rows, k, scale.data(), zero.data(), group_size, h.data());
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t j = 0; j < k; ++j) {
      const uint64_t g = j / group_size;
      const float expected = (float(q[r * k + j]) - zero[r * groups + g]) * scale[r * groups + g];
      CHECK(w[r * k + j] == expected);
      CHECK(h[r * k + j] == dequant::bf16_bits(expected));
    }
}

// fp16 bits of a float that fp16 holds exactly (a normal one).
static uint16_t exact_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const int exp = int((u >> 23) & 0xFFu) - 127 + 15;
  CHECK(f != 0 && exp > 0 && exp < 31 && (u & 0x1FFFu) == 0);
  return uint16_t(((u >> 16) & 0x8000u) | (uint32_t(exp) << 10) | ((u >> 13) & 0x3FFu));
}

// affine_matvec against a float64 product of the dequantized weight (escapes written over it, in
// any order, a later duplicate winning): batches 1..5, groups that do not divide k, a last chunk
// of fewer rows, one and two threads, scale and zero in fp32 and as fp16 bits. Then what it
// refuses, and corrupt streams under ASan.
static void test_affine_matvec() {
  std::mt19937 rng(31);
  StreamTables kept;  // one for every trial's stream: each call must find it stale and open anew
  for (int trial = 0; trial < 12; ++trial) {
    const uint64_t n = 1 + rng() % 40, k = 1 + rng() % 300;
    // Groups of 64 or 128 (whole blocks of the one-pass rows) in some trials, any size in others.
    const uint64_t group_size = trial % 4 == 1 ? 64 * (1 + rng() % 2) : trial % 4 == 3 ? k : 1 + rng() % (k + 8);
    const uint64_t groups = (k + group_size - 1) / group_size, rows_per_chunk = 1 + rng() % 4;
    const uint32_t batch = 1 + rng() % 5;
    std::vector<uint8_t> q(n * k);
    for (auto& v : q) v = uint8_t(120 + rng() % 17);
    std::vector<float> scale(n * groups), zero(n * groups), x(batch * k);
    for (auto& v : scale) v = float(1 + rng() % 100) / 1024.0f;  // fp16 holds these and the zeros exactly
    for (auto& v : zero) v = float(120 + rng() % 17) + 0.25f;
    const bool broadcast = trial % 3 == 0;  // one zero point for every group (the weight reads zero[0])
    if (broadcast) std::fill(zero.begin(), zero.end(), zero[0]);
    for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 500.0f;
    std::vector<uint64_t> escape_index;
    std::vector<float> escape_value;
    for (uint64_t e = 0, count = rng() % 6; e < count; ++e) {
      escape_index.push_back(rng() % (n * k));
      escape_value.push_back(float(int(rng() % 200) - 100));
    }
    if (!escape_index.empty()) {  // a duplicate: the later value wins
      escape_index.push_back(escape_index[0]);
      escape_value.push_back(7.5f);
    }
    std::vector<double> w(n * k);
    for (uint64_t i = 0; i < n * k; ++i) {
      const uint64_t r = i / k, g = (i % k) / group_size;
      w[i] = (float(q[i]) - zero[r * groups + g]) * scale[r * groups + g];
    }
    for (size_t e = 0; e < escape_index.size(); ++e) w[escape_index[e]] = escape_value[e];
    EncodeOptions opt;
    opt.chunk_symbols = uint32_t(rows_per_chunk * k);
    std::vector<uint8_t> blob;
    const uint64_t shape[2] = {n, k};
    CHECK(encode(q.data(), shape, 2, opt, &blob) == Status::Ok);
    const std::vector<float> one_zero(1, zero[0]);  // broadcast: one value, ASan sees a read past it
    const AffineMatvec weight{n, k, group_size, scale.data(), broadcast ? one_zero.data() : zero.data(), false,
                              broadcast, escape_index.data(), escape_value.data(), escape_index.size()};
    std::vector<uint16_t> scale_half(scale.size()), zero_half(zero.size()), one_zero_half(1, exact_half(zero[0]));
    for (size_t i = 0; i < scale.size(); ++i) scale_half[i] = exact_half(scale[i]), zero_half[i] = exact_half(zero[i]);
    AffineMatvec half_weight = weight;
    half_weight.half = true;
    half_weight.scale = scale_half.data();
    half_weight.zero = broadcast ? one_zero_half.data() : zero_half.data();
    // The two-step result (a row dequantized, escapes written, then dot_batch) that the one-pass
    // rows (dequant::affine_dot, batch 1, no escape) must equal bit for bit.
    std::vector<float> two_step(batch * n);
    for (uint64_t r = 0; r < n; ++r) {
      std::vector<float> row(k), row_zero(groups);
      for (uint64_t g = 0; g < groups; ++g) row_zero[g] = broadcast ? zero[0] : zero[r * groups + g];
      dequant::affine_fp32(q.data() + r * k, 1, k, scale.data() + r * groups, row_zero.data(), group_size, row.data());
      for (size_t e = 0; e < escape_index.size(); ++e)
        if (escape_index[e] / k == r) row[escape_index[e] % k] = escape_value[e];
      dequant::dot_batch(row.data(), k, x.data(), batch, two_step.data() + r, n);
    }
    for (int run = 0; run < 4; ++run) {
      const int threads = 1 + run % 2;
      std::vector<float> y(batch * n, -1.0f);
      CHECK(affine_matvec(blob.data(), blob.size(), run < 2 ? weight : half_weight, x.data(), batch, y.data(),
                          threads) == Status::Ok);
      std::vector<float> y_kept(batch * n, -2.0f);  // twice: tables made, then reused
      for (int again = 0; again < 2; ++again)
        CHECK(affine_matvec(blob.data(), blob.size(), run < 2 ? weight : half_weight, x.data(), batch,
                            y_kept.data(), threads, &kept) == Status::Ok);
      CHECK(y_kept == y);
      CHECK(y == two_step);
      std::vector<float> y_one(n, -3.0f);  // x's first row alone: batch 1, the one-pass rows
      CHECK(affine_matvec(blob.data(), blob.size(), run < 2 ? weight : half_weight, x.data(), 1, y_one.data(),
                          threads) == Status::Ok);
      for (uint64_t r = 0; r < n; ++r) CHECK(y_one[r] == two_step[r]);
      for (uint32_t b = 0; b < batch; ++b)
        for (uint64_t r = 0; r < n; ++r) {
          double want = 0, magnitude = 0;
          for (uint64_t j = 0; j < k; ++j) {
            want += double(x[b * k + j]) * w[r * k + j];
            magnitude += std::fabs(double(x[b * k + j]) * w[r * k + j]);
          }
          CHECK(std::fabs(y[b * n + r] - want) <= 1e-6 * magnitude + 1e-30);
        }
    }
    std::vector<float> y(batch * n);
    AffineMatvec wrong = weight;
    wrong.n = n + 1;  // not the stream's shape
    CHECK(affine_matvec(blob.data(), blob.size(), wrong, x.data(), batch, y.data()) == Status::OutputSize);
    if (!escape_index.empty()) {
      std::vector<uint64_t> outside = escape_index;
      outside.back() = n * k;
      wrong = weight;
      wrong.escape_index = outside.data();
      CHECK(affine_matvec(blob.data(), blob.size(), wrong, x.data(), batch, y.data()) == Status::BadArgument);
    }
    if (k > 1) {  // chunks that split rows
      opt.chunk_symbols = uint32_t(k + 1);
      std::vector<uint8_t> split_rows;
      CHECK(encode(q.data(), shape, 2, opt, &split_rows) == Status::Ok);
      CHECK(affine_matvec(split_rows.data(), split_rows.size(), weight, x.data(), batch, y.data()) ==
            Status::BadArgument);
    }
    for (int m = 0; m < 30; ++m) {  // any byte flipped: a refusal or some numbers, never a read out of bounds
      std::vector<uint8_t> bad = blob;
      bad[rng() % bad.size()] ^= uint8_t(1 + rng() % 255);
      (void)affine_matvec(bad.data(), bad.size(), weight, x.data(), batch, y.data(), 2);
      std::vector<float> y_kept(y.size());
      const Status fresh = affine_matvec(bad.data(), bad.size(), weight, x.data(), batch, y.data(), 1);
      CHECK(affine_matvec(bad.data(), bad.size(), weight, x.data(), batch, y_kept.data(), 1, &kept) == fresh);
      CHECK(fresh != Status::Ok || y_kept == y);
    }
  }
}

// The quantizers (quantize.h) against nearbyint (round half to even) on ties, the range's edges,
// infinities and NaN: rate mode's escape rule (NaN weights are escapes) for an odd and an even
// max_q, then int mode's clamp by group.
static void test_quantizers() {
  std::vector<float> w;
  for (int i = -300; i <= 300; ++i) w.push_back(0.5f * float(i));  // every tie from -150 to 150
  for (float x : {127.49f, 127.51f, -127.49f, -127.51f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN, 0.0f, -0.0f})
    w.push_back(x);
  for (int max_q : {127, 100}) {
    std::vector<uint8_t> q(w.size());
    std::vector<int64_t> escapes;
    quantize::rate_rows(w.data(), 1, w.size(), std::vector<float>{1.0f}.data(), max_q, 128, q.data(), escapes);
    std::vector<int64_t> expected_escapes;
    for (size_t j = 0; j < w.size(); ++j) {
      const float r = std::nearbyint(w[j]);
      const bool escape = std::fabs(r) > float(max_q) || std::isnan(w[j]);  // NaN weights: escapes
      if (escape) expected_escapes.push_back(int64_t(j));
      const int expected = escape ? 128 : int(r) + 128;
      CHECK(q[j] == expected);
    }
    CHECK(escapes == expected_escapes);
  }
  // Int mode: clamp(round(w / scale) + zero, 0, qmax) by group, a partial last group included.
  const uint64_t k = w.size(), group = 40, groups = (k + group - 1) / group;
  std::vector<float> scale(groups), zero(groups);
  for (uint64_t g = 0; g < groups; ++g) {
    scale[g] = g % 3 == 0 ? 1.0f : 0.37f * float(g);
    zero[g] = float(g % 16);
  }
  std::vector<uint8_t> q(k);
  quantize::affine_rows(w.data(), 1, k, scale.data(), zero.data(), group, 15, q.data());
  for (uint64_t j = 0; j < k; ++j) {
    const float x = w[j] / scale[j / group];
    const float v = std::fmin(std::fmax(std::nearbyint(x) + zero[j / group], 0.0f), 15.0f);
    CHECK(q[j] == (std::isnan(x) ? 0 : int(v)));
  }
}

// A stand-in host OpenMP runtime: GOMP_parallel's contract on std::threads (a team of
// min(asked, cap) threads, the caller as thread 0), counting its calls.
static thread_local int t_team_thread = 0;
static unsigned g_team_cap = 64;
static std::atomic<int> g_team_calls{0};

static std::atomic<unsigned> g_team_asked{0};  // the num_threads of the last call
static int g_team_max = 0;                       // the stand-in's omp_get_max_threads

static void team_parallel(void (*fn)(void*), void* data, unsigned asked, unsigned) {
  ++g_team_calls;
  g_team_asked = asked;
  const unsigned size = std::max(1u, std::min(asked, g_team_cap));
  std::vector<std::thread> team;
  for (unsigned i = 1; i < size; ++i) team.emplace_back([=] { t_team_thread = int(i); fn(data); });
  t_team_thread = 0;
  fn(data);
  for (auto& t : team) t.join();
}

static int team_thread_num() { return t_team_thread; }
static int team_max_threads() { return g_team_max; }

// Parallel calls on a host team (set_host_openmp) write what they write on pycodec's own
// threads, also when the team comes smaller than asked; then on a real libgomp when present.
static void test_host_openmp_team() {
  const std::vector<uint8_t> v = gaussian_symbols(600000, 6.0, 31);
  const uint64_t shape[1] = {v.size()};
  EncodeOptions opt;
  opt.threads = 4;
  opt.chunk_symbols = 4096;
  std::vector<uint8_t> own_blob;
  CHECK(encode(v.data(), shape, 1, opt, &own_blob) == Status::Ok);
  std::vector<uint16_t> bits(300000);
  std::mt19937 rng(7);
  for (auto& b : bits) b = uint16_t(0x3C00 + (rng() % 2048) - 1024);
  split::Plan own_plan;
  CHECK(plan_split(bits.data(), bits.size(), &own_plan, 3) == Status::Ok);

  const auto same_outputs = [&](const char* what) {
    std::vector<uint8_t> blob, out(v.size());
    const bool coded = encode(v.data(), shape, 1, opt, &blob) == Status::Ok && blob == own_blob;
    const bool decoded = decode(own_blob.data(), own_blob.size(), out.data(), out.size(), 4) == Status::Ok && out == v;
    split::Plan plan;
    const bool planned = plan_split(bits.data(), bits.size(), &plan, 3) == Status::Ok && plan.top == own_plan.top &&
                         plan.n_values == own_plan.n_values &&
                         plan.estimated_bits == own_plan.estimated_bits &&
                         std::equal(plan.values, plan.values + plan.n_values, own_plan.values);
    if (!(coded && decoded && planned)) std::fprintf(stderr, "host team (%s): outputs differ\n", what);
    CHECK(coded && decoded && planned);
  };

  CHECK(!host_openmp_active());
  CHECK(!set_host_openmp({team_parallel, nullptr}));  // one address alone is refused
  CHECK(!host_openmp_active());
  CHECK(set_host_openmp({team_parallel, team_thread_num}));
  CHECK(host_openmp_active());
  for (unsigned cap : {64u, 2u, 1u}) {
    g_team_cap = cap;
    g_team_calls = 0;
    same_outputs(cap == 1 ? "a team of one" : "a full team");
    CHECK(g_team_calls.load() >= 3);  // encode, decode and split each ran on the team
  }
  // Calls that leave their thread count open take the host's (torch.set_num_threads): one
  // thread runs on the caller alone, three ask the team for three; threads given win.
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  CHECK(default_threads() == cores);  // no max_threads: every core
  CHECK(set_host_openmp({team_parallel, team_thread_num, team_max_threads}));
  std::vector<uint8_t> open_blob, out(v.size());
  EncodeOptions open_opt = opt;
  open_opt.threads = 0;
  for (int host : {1, 3}) {
    g_team_max = host;
    g_team_calls = 0;
    g_team_asked = 0;
    CHECK(default_threads() == host);
    CHECK(encode(v.data(), shape, 1, open_opt, &open_blob) == Status::Ok && open_blob == own_blob);
    CHECK(decode(own_blob.data(), own_blob.size(), out.data(), out.size(), 0) == Status::Ok && out == v);
    CHECK(host == 1 ? g_team_calls.load() == 0 : g_team_calls.load() >= 2 && g_team_asked.load() == 3u);
  }
  g_team_max = 1;
  g_team_calls = 0;
  CHECK(decode(own_blob.data(), own_blob.size(), out.data(), out.size(), 2) == Status::Ok && out == v);
  CHECK(g_team_calls.load() == 1 && g_team_asked.load() == 2u);
  CHECK(set_host_openmp({nullptr, nullptr, team_max_threads}));  // own threads: max_threads ignored
  CHECK(!host_openmp_active() && default_threads() == cores);
  g_team_calls = 0;
  same_outputs("own threads again");
  CHECK(g_team_calls.load() == 0);

  if (void* gomp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_LOCAL)) {
    HostOpenMP real{reinterpret_cast<decltype(HostOpenMP::parallel)>(dlsym(gomp, "GOMP_parallel")),
                    reinterpret_cast<int (*)()>(dlsym(gomp, "omp_get_thread_num"))};
    CHECK(real.parallel && real.thread_num && set_host_openmp(real));
    same_outputs("libgomp");
    CHECK(set_host_openmp({nullptr, nullptr}));
  }
}

// encode_split against plan_split + apply_split + encode: the same plan, raw words and stream,
// whether chunks start on raw words (split chunk by chunk in cache) or not (split first: chunks
// of 100 weight-like values, 5-7 or 21-23 raw bits each), on one or two threads. The raw words
// and the stream go into exactly sized buffers (ASan sees a write past them); a refused
// allocation is TooLarge.
template <class T>
static void check_encode_split(std::mt19937& rng) {
  const int width = 8 * int(sizeof(T));
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const std::vector<std::vector<uint64_t>> shapes = {{0}, {1}, {3000}, {96, 64}, {150, 100}, {2, 33, 32}, {700, 576}};
  for (const auto& shape : shapes) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    std::vector<T> bits(n);
    for (auto& b : bits) {
      float w = normal(rng);
      uint32_t u;
      std::memcpy(&u, &w, 4);
      b = T(width == 16 ? u >> 16 : u);
    }
    if (n > 10) bits[n / 2] = T(width == 16 ? 0x7FC1 : 0x7FC00001);  // a NaN
    for (uint32_t chunk : {0u, 96u, 100u})
    for (Coder coder : {Coder::Huffman, Coder::Rans})
      for (int threads : {1, 2}) {
        if (coder == Coder::Rans && chunk % 32) continue;  // v1 chunks are multiples of 32
        EncodeOptions opt;
        opt.coder = coder;
        opt.threads = threads;
        opt.chunk_symbols = chunk;
        split::Plan want_plan;
        CHECK(plan_split(bits.data(), n, &want_plan, threads) == Status::Ok);
        std::vector<uint8_t> symbols(n);
        std::vector<uint32_t> want_raw(split::raw_words(n, width - want_plan.top));
        apply_split(bits.data(), n, want_plan, symbols.data(), want_raw.data(), threads);
        std::vector<uint8_t> want_blob;
        CHECK(encode(symbols.data(), shape.data(), int(shape.size()), opt, &want_blob) == Status::Ok);
        split::Plan plan;
        std::unique_ptr<uint32_t[]> raw;
        std::unique_ptr<uint8_t[]> blob;
        size_t raw_words = 0, blob_bytes = 0;
        const Status st = encode_split(
            bits.data(), shape.data(), int(shape.size()), opt, &plan,
            [&](size_t words) { return (raw = std::make_unique<uint32_t[]>(raw_words = words)).get(); },
            [&](size_t bytes) { return (blob = std::make_unique<uint8_t[]>(blob_bytes = bytes)).get(); });
        CHECK(st == Status::Ok);
        CHECK(plan.top == want_plan.top && plan.n_values == want_plan.n_values &&
              std::equal(plan.values, plan.values + plan.n_values, want_plan.values) &&
              std::equal(plan.counts, plan.counts + plan.n_values, want_plan.counts));
        CHECK(raw_words == want_raw.size() && std::equal(want_raw.begin(), want_raw.end(), raw.get()));
        CHECK(blob_bytes == want_blob.size() && std::equal(want_blob.begin(), want_blob.end(), blob.get()));
        if (n) {
          const auto none_raw = [](size_t) { return static_cast<uint32_t*>(nullptr); };
          CHECK(encode_split(bits.data(), shape.data(), int(shape.size()), opt, &plan, none_raw,
                             [&](size_t bytes) { return (blob = std::make_unique<uint8_t[]>(bytes)).get(); }) ==
                Status::TooLarge);
        }
        CHECK(encode_split(bits.data(), shape.data(), int(shape.size()), opt, &plan,
                           [&](size_t words) { return (raw = std::make_unique<uint32_t[]>(words + 1)).get(); },
                           [](size_t) { return static_cast<uint8_t*>(nullptr); }) == Status::TooLarge);
      }
  }
}

static void test_encode_split() {
  std::mt19937 rng(31);
  check_encode_split<uint16_t>(rng);
  check_encode_split<uint32_t>(rng);
}

// The lossless GEMV's weights, one entry at a time (windowed::SplitSink::put, which the CUDA
// kernels and their emulation share): present slots are (value | raw field) as bf16, absent
// slots exactly 0. Output sums of real layers cannot show a wrong absent slot: with fields of
// all ones it weighs ~1e-38. Here x is 1e35 past the present slots, so it would show.
static void test_split_sink_weights() {
  using namespace windowed;
  for (uint32_t low : {1u, 5u, 7u, 8u}) {
    for (uint32_t n = 1; n <= 3; ++n) {
      std::vector<uint32_t> raw(8 + kSlackWords, 0xFFFFFFFFu);  // every raw field all ones
      std::vector<float> x(8 + kXPadRows, 1e35f);
      for (uint32_t i = 0; i < n; ++i) x[i] = 1.0f;
      SplitArgs a{x.data(), raw.data(), 8, 1, 8, low, nullptr};
      ChunkView v{nullptr, 0, 8, 0};
      std::vector<float> slots(32, 0.f);
      SplitSink<1, XGlobal> sink;
      sink.begin(a, slots.data(), 0, v, 0);
      const uint16_t value[3] = {0x3F00u, 0x3E80u, 0xBF00u};  // bf16 0.5, 0.25, -0.5
      uint64_t e = uint64_t(n) << 48;
      for (uint32_t i = 0; i < n; ++i) e |= uint64_t(uint16_t(value[i] & ~((1u << low) - 1))) << (16 * i);
      sink.put(e, 0);
      float want = 0.f;
      for (uint32_t i = 0; i < n; ++i) {
        const uint32_t bits = (uint32_t(value[i] & ~((1u << low) - 1)) | ((1u << low) - 1)) << 16;
        float w;
        std::memcpy(&w, &bits, 4);
        want = std::fmaf(1.0f, w, want);
      }
      CHECK(sink.acc[0] == want);
    }
  }
}

// windowed_decode_split's emulation (the kernel's lane code): every weight is value[symbol] |
// its raw field, for chunks whose output starts at every 2-byte offset of a 16-byte line (the
// head, whole pieces and tail of write_split_chunk) and chunks of odd length; on mutated payloads
// it writes only its n outputs (canaries both sides, run under ASan) and equals the decode
// kernel's symbols merged by split_merge (zeros where a lane refused), with the same status.
static void test_split_decode_emulation() {
  using namespace windowed;
  std::mt19937 rng(31);
  for (uint32_t lanes : {1u, 7u, 32u}) {
    for (uint32_t chunk : {203u, 1000u}) {
      const auto sym = gaussian_symbols(9000 + lanes, 1.5 + lanes % 3, lanes + chunk);
      LaneStream ls;
      lane_stream(sym, lanes, chunk, &ls);
      const std::vector<uint8_t>& blob = ls.blob;
      const StreamInfo& info = ls.info;
      const uint32_t* table = ls.table;
      const uint32_t low = 4 + rng() % 5;
      const uint64_t n = sym.size(), raw_words = (n * low + 31) / 32;
      std::vector<uint32_t> raw(raw_words + kSlackWords);
      for (uint64_t w = 0; w < raw_words; ++w) raw[w] = rng();
      uint16_t value[256];
      for (auto& v : value) v = uint16_t(rng() & ~((1u << low) - 1));
      auto run = [&](const std::vector<uint8_t>& b, uint32_t offset, std::vector<uint16_t>& out, uint32_t* status) {
        KernelStream ks;
        kernel_stream(b, info, &ks);
        const StreamView& v = ks.view;
        out.assign(n + offset + 1, 0xABCD);  // canaries at out[offset - 1] (if any) and out[offset + n]
        SplitDecodeArgs a{value, raw.data(), raw_words, low, out.data() + offset};
        *status = 0;
        return host::windowed_decode_split(v, table, a, status);
      };
      for (uint32_t offset = 0; offset < 8; ++offset) {
        std::vector<uint16_t> out;
        uint32_t status;
        CHECK(run(blob, offset, out, &status) == Status::Ok && status == 0);
        bool all = true;
        for (uint64_t i = 0; i < n; ++i)
          all &= out[offset + i] == uint16_t(value[sym[i]] | chunk_bits(raw.data(), raw_words, i * low, int(low)));
        CHECK(all);
        CHECK(out[offset + n] == 0xABCD && (offset == 0 || out[offset - 1] == 0xABCD));
      }
      for (int trial = 0; trial < 60; ++trial) {
        std::vector<uint8_t> bad = blob;
        for (int k = 0; k < 1 + trial % 3; ++k)
          bad[info.payload_offset + rng() % (bad.size() - info.payload_offset)] ^= uint8_t(1u << (rng() % 8));
        const uint32_t offset = trial % 8;
        std::vector<uint16_t> out;
        uint32_t status;
        CHECK(run(bad, offset, out, &status) == Status::Ok);
        CHECK(out[offset + n] == 0xABCD && (offset == 0 || out[offset - 1] == 0xABCD));
        KernelStream ks;
        kernel_stream(bad, info, &ks);
        const StreamView& v = ks.view;
        std::vector<uint8_t> symbols(n, 0);
        uint32_t decode_status = 0;
        CHECK(host::windowed_decode(v, table, symbols.data(), &decode_status) == Status::Ok);
        std::vector<uint16_t> merged(n);
        CHECK(host::split_merge(symbols.data(), n, value, raw.data(), raw_words, low, merged.data()) == Status::Ok);
        CHECK(std::equal(merged.begin(), merged.end(), out.begin() + offset) && decode_status == status);
      }
    }
  }
}

// A copy of a stream with `count` bytes of its payload (from payload_offset on) set at random:
// what the mutated-payload checks feed the emulations.
static std::vector<uint8_t> with_random_payload_bytes(std::vector<uint8_t> blob, uint64_t payload_offset, int count,
                                                      std::mt19937& rng) {
  for (int j = 0; j < count; ++j) blob[payload_offset + rng() % (blob.size() - payload_offset)] = uint8_t(rng());
  return blob;
}

// The staged lossless GEMV's emulation against the fused one's on valid streams (the same
// weights, summed in another order: within a few ulps of each other), and both on mutated
// payloads: they stay inside their buffers (ASan) and refuse or return rows, never crash.
static void test_staged_split_gemv_emulation() {
  using namespace windowed;
  std::mt19937 rng(37);
  const uint32_t n_rows = 48, k = 200, low = 5, top = 11;
  for (uint32_t rows_per_chunk : {1u, 3u}) {
    const std::vector<uint8_t> sym = rounded_normal(size_t(n_rows) * k, 64.0, 6.0, 127.0, rng);
    std::vector<uint8_t> blob;
    const uint64_t shape[2] = {n_rows, k};
    EncodeOptions opt;
    opt.chunk_symbols = rows_per_chunk * k;
    CHECK(encode(sym.data(), shape, 2, opt, &blob) == Status::Ok);
    std::vector<uint32_t> values(128);
    for (uint32_t v = 0; v < 128; ++v)  // bf16 tops of +-2^-8 .. +-1.75: sign, exponent 119..127, 2 mantissa bits
      values[v] = ((v & 1u) << (top - 1)) | ((119u + (v >> 1) % 9) << 2) | ((v >> 4) & 3u);
    const uint64_t raw_words = (uint64_t(n_rows) * k * low + 31) / 32;
    std::vector<uint32_t> raw(raw_words + kSlackWords);
    for (uint64_t w = 0; w < raw_words; ++w) raw[w] = rng();
    for (uint32_t batch : {1u, 3u, 16u}) {
      const std::vector<float> x = kernel_x(k, batch, rng);
      auto run = [&](const std::vector<uint8_t>& b, bool staged, std::vector<float>& y) {
        y.assign(size_t(batch) * n_rows + 1, 7.f);  // canary at the end
        SplitArgs a{x.data(), raw.data(), raw_words, n_rows, k, low, y.data()};
        return emulate_gemv_split(b.data(), b.size(), values.data(), 128, a, batch, staged);
      };
      std::vector<float> ys, yf;
      CHECK(run(blob, true, ys) == Status::Ok && run(blob, false, yf) == Status::Ok);
      bool close = true;
      for (size_t i = 0; i + 1 < ys.size(); ++i) close &= std::fabs(ys[i] - yf[i]) <= 1e-4f * (1.f + std::fabs(yf[i]));
      CHECK(close && ys.back() == 7.f);
      StreamInfo info;
      CHECK(parse_header(blob.data(), blob.size(), &info) == Status::Ok);
      for (int trial = 0; trial < 40; ++trial) {
        const std::vector<uint8_t> bad = with_random_payload_bytes(blob, info.payload_offset, 1 + trial % 4, rng);
        const Status st = run(bad, true, ys);
        CHECK((st == Status::Ok || st == Status::CorruptPayload) && ys.back() == 7.f);
      }
    }
  }
}

// The byte split (split.h, kByteSplitTop): its plan numbers every top byte as itself, counts
// them, and round-trips bit-exactly through encode_split and decode_split; its weights by byte
// permutes (byte_split_piece, the kernels' selectors) are s << 8 | f; the staged lossless GEMV and
// the split decode take its byte path (their emulation votes as the kernels do) and give the bits
// of the general path: the GEMV at batch 1 the same sums as on the smallest split of the same
// weight, at batch > 1 (columns one at a time) the same within float rounding.
static void test_byte_split() {
  using namespace windowed;
  std::mt19937 rng(43);
  for (int trial = 0; trial < 2000; ++trial) {
    const uint64_t sym = uint64_t(rng()) << 32 | rng(), fields = uint64_t(rng()) << 32 | rng();
    uint32_t w[4];
    byte_split_piece(sym, fields, w);
    bool all = true;
    for (int i = 0; i < 8; ++i) {
      const uint32_t want = uint32_t((sym >> (8 * i)) & 0xFF) << 8 | uint32_t((fields >> (56 - 8 * i)) & 0xFF);
      all &= ((w[i / 2] >> (16 * (i % 2))) & 0xFFFFu) == want;
    }
    CHECK(all);
  }
  const uint32_t n_rows = 40, k = 96;  // K % 8 == 0: the staged route
  const uint64_t n = uint64_t(n_rows) * k, shape[2] = {n_rows, k};
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<uint16_t> bits(n);
  for (auto& b : bits) {
    const float f = normal(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    b = uint16_t(u >> 16);
  }
  bits[7] = 0x7FC1;  // a NaN
  split::Plan plan, smallest;
  CHECK(plan_split(bits.data(), n, &plan, 2, split::kByteSplitTop) == Status::Ok);
  CHECK(plan_split(bits.data(), n, &smallest, 2) == Status::Ok && smallest.top > split::kByteSplitTop);
  CHECK(plan.top == 8 && plan.n_values == 256);
  uint64_t histogram[256] = {0};
  for (uint16_t b : bits) ++histogram[b >> 8];
  bool identity = true;
  for (uint32_t v = 0; v < 256; ++v) identity &= plan.values[v] == v && plan.counts[v] == histogram[v];
  CHECK(identity && plan.estimated_bits > smallest.estimated_bits);
  split::Plan refused;
  CHECK(plan_split(bits.data(), n, &refused, 1, 9) == Status::BadArgument);
  // Both splits' streams, raw bits and values, each chunk two whole rows.
  struct Split {
    split::Plan plan;
    std::vector<uint32_t> raw;
    std::vector<uint8_t> blob;
  };
  Split splits[2];
  for (int which = 0; which < 2; ++which) {
    EncodeOptions opt;
    opt.chunk_symbols = 2 * k;
    opt.split_top = which == 0 ? split::kByteSplitTop : 0;
    Split& sp = splits[which];
    CHECK(encode_split(bits.data(), shape, 2, opt, &sp.plan,
                       [&](size_t words) { sp.raw.assign(words + kSlackWords, 0); return sp.raw.data(); },
                       [&](size_t bytes) { sp.blob.assign(bytes, 0); return sp.blob.data(); }) == Status::Ok);
    std::vector<uint16_t> back(n);
    CHECK(decode_split(sp.blob.data(), sp.blob.size(), sp.plan.values, sp.plan.n_values, sp.plan.top, sp.raw.data(),
                       split::raw_words(n, 16 - sp.plan.top), back.data(), n) == Status::Ok);
    CHECK(back == bits);
  }
  CHECK(splits[0].plan.top == 8 && splits[0].plan.n_values == 256);
  for (uint32_t batch : {1u, 4u}) {
    const std::vector<float> x = kernel_x(k, batch, rng);
    std::vector<float> y[2];
    for (int which = 0; which < 2; ++which) {
      const Split& sp = splits[which];
      y[which].assign(size_t(batch) * n_rows, 0.f);
      const uint32_t low = 16 - uint32_t(sp.plan.top);
      SplitArgs a{x.data(), sp.raw.data(), split::raw_words(n, int(low)), n_rows, k, low, y[which].data()};
      CHECK(emulate_gemv_split(sp.blob.data(), sp.blob.size(), sp.plan.values, sp.plan.n_values, a, batch, true) ==
            Status::Ok);
    }
    // Batch 1: the same sums in the same order, so the same bits (the NaN row too). Batch > 1: the
    // byte split's lanes take columns one at a time (staged_byte_columns_lane), another order:
    // within float rounding, the NaN row NaN in both.
    bool same = true, close = true;
    for (size_t i = 0; i < y[0].size(); ++i) {
      same &= std::memcmp(&y[0][i], &y[1][i], 4) == 0;
      close &= std::isnan(y[0][i]) ? std::isnan(y[1][i]) : std::fabs(y[0][i] - y[1][i]) <= 1e-5f * (1.f + std::fabs(y[1][i]));
    }
    CHECK(batch == 1 ? same : close && !same);
    // Mutated payloads through the byte instance: rows or CorruptPayload, inside the buffers (ASan).
    const Split& sp = splits[0];
    StreamInfo info;
    CHECK(parse_header(sp.blob.data(), sp.blob.size(), &info) == Status::Ok);
    for (int trial = 0; trial < 20; ++trial) {
      const std::vector<uint8_t> bad = with_random_payload_bytes(sp.blob, info.payload_offset, 1 + trial % 3, rng);
      std::vector<float> yb(size_t(batch) * n_rows + 1, 7.f);  // canary at the end
      SplitArgs a{x.data(), sp.raw.data(), split::raw_words(n, 8), n_rows, k, 8, yb.data()};
      const Status st = emulate_gemv_split(bad.data(), bad.size(), sp.plan.values, sp.plan.n_values, a, batch, true);
      CHECK((st == Status::Ok || st == Status::CorruptPayload) && yb.back() == 7.f);
    }
  }
  // The split decode's byte path: the original bits.
  const Split& sp = splits[0];
  StreamInfo info;
  CHECK(parse_header(sp.blob.data(), sp.blob.size(), &info) == Status::Ok);
  alignas(16) uint32_t table[kDecodeTableEntries + 64 + kDecodeTableEntries / 4];
  uint8_t* lengths = reinterpret_cast<uint8_t*>(table + kDecodeTableEntries);
  CHECK(build_decode_table(sp.blob.data(), sp.blob.size(), table, lengths, lengths + 256) == Status::Ok);
  KernelStream ks;
  kernel_stream(sp.blob, info, &ks);
  uint16_t value[256];
  for (uint32_t v = 0; v < 256; ++v) value[v] = uint16_t(v << 8);
  for (uint32_t offset = 0; offset < 8; offset += 3) {
    std::vector<uint16_t> out(n + offset, 0);
    SplitDecodeArgs a{value, sp.raw.data(), split::raw_words(n, 8), 8, out.data() + offset};
    CHECK(split_decode_bytes(a, value));
    uint32_t status = 0;
    CHECK(host::windowed_decode_split(ks.view, table, a, &status) == Status::Ok && status == 0);
    CHECK(std::equal(bits.begin(), bits.end(), out.begin() + offset));
  }
  value[200] ^= 1;  // one value that is not its symbol's byte: the general path
  SplitDecodeArgs a{value, sp.raw.data(), split::raw_words(n, 8), 8, nullptr};
  CHECK(!split_decode_bytes(a, value));
}

// WordRunSink (the staged kernels' default stage stores: a word at a time, the last bytes after
// the warp's __syncwarp) leaves exactly the stage RunByteSink leaves, on valid chunks of 1 to 32
// lanes (runs starting at every byte of a word, lanes shorter than a word, empty lanes) and on
// mutated payloads (lanes that refuse, garbled ranges), with the stage sized to m (ASan).
static void test_word_stage_stores() {
  using namespace windowed;
  std::mt19937 rng(47);
  uint64_t chunks = 0, differ = 0;
  for (uint32_t lanes : {1u, 3u, 7u, 16u, 32u}) {
    for (uint32_t chunk : {37u, 203u, 977u, 4096u}) {
      const auto sym = gaussian_symbols(3 * chunk + 5, 0.6 + lanes % 4, lanes * 7 + chunk);
      LaneStream ls;
      lane_stream(sym, lanes, chunk, &ls);
      const StreamInfo& info = ls.info;
      for (int trial = 0; trial < 25; ++trial) {
        // trial 0: the valid stream
        const std::vector<uint8_t> b = with_random_payload_bytes(ls.blob, info.payload_offset,
                                                                 trial > 0 ? 1 + trial % 3 : 0, rng);
        KernelStream ks;
        kernel_stream(b, info, &ks);
        for (uint64_t c = 0; c < info.n_chunks; ++c) {
          const ChunkView v = chunk_view(ks.view, c);
          std::vector<uint8_t> words, bytes;
          const bool ok_words = emulate_stage_chunk<true>(ks.view, v, ls.count(), ls.table, ls.lengths(), words);
          const bool ok_bytes = emulate_stage_chunk<false>(ks.view, v, ls.count(), ls.table, ls.lengths(), bytes);
          ++chunks;
          differ += words != bytes || ok_words != ok_bytes;
          if (trial == 0)
            CHECK(ok_words && std::equal(words.begin(), words.end(), sym.begin() + v.first));
        }
      }
    }
  }
  CHECK(chunks > 1000 && differ == 0);
}

// The staged affine GEMV (rate weights: zero folded into the values, one group a row): within float
// rounding of the fused one on a valid stream (the same terms, another order), and on mutated
// payloads it stays inside its buffers (ASan) and returns rows or CorruptPayload.
static void test_staged_affine_gemv_emulation() {
  using namespace windowed;
  std::mt19937 rng(53);
  const uint32_t n_rows = 40, k = 384;
  const std::vector<uint8_t> sym = rounded_normal(size_t(n_rows) * k, 128.0, 4.0, 255.0, rng);
  std::vector<uint8_t> blob;
  const uint64_t shape[2] = {n_rows, k};
  EncodeOptions opt;
  opt.chunk_symbols = 2 * k;
  CHECK(encode(sym.data(), shape, 2, opt, &blob) == Status::Ok);
  StreamInfo info;
  CHECK(parse_header(blob.data(), blob.size(), &info) == Status::Ok);
  std::vector<uint16_t> scale(n_rows);
  for (uint32_t r = 0; r < n_rows; ++r) scale[r] = uint16_t(0x2000 + 64 * r);  // fp16 2^-7 and up
  const uint16_t zero = 0x5800;                                                   // fp16 128
  for (uint32_t batch : {1u, 5u, 16u}) {
    const std::vector<float> x = kernel_x(k, batch, rng);
    auto run = [&](const std::vector<uint8_t>& b, bool staged, std::vector<float>& y) {
      y.assign(size_t(batch) * n_rows + 1, 7.f);  // canary at the end
      AffineArgs a{x.data(), nullptr, scale.data(), &zero, n_rows, k, k, 1, true, 128.f,
                   nullptr, nullptr, nullptr, 0, y.data()};
      CHECK(affine_gemv_stages(a, info.chunk_symbols, batch) == (batch == 1));
      return emulate_gemv_affine(b.data(), b.size(), a, batch, staged);
    };
    std::vector<float> ys, yf;
    CHECK(run(blob, true, ys) == Status::Ok && run(blob, false, yf) == Status::Ok);
    bool close = true, differ = false;
    for (size_t i = 0; i + 1 < ys.size(); ++i) {
      close &= std::fabs(ys[i] - yf[i]) <= 1e-5f * (1.f + std::fabs(yf[i]));
      differ |= ys[i] != yf[i];
    }
    CHECK(close && differ == (batch == 1) && ys.back() == 7.f);  // batch > 1: the fused route both times
    for (int trial = 0; trial < 30; ++trial) {
      const std::vector<uint8_t> bad = with_random_payload_bytes(blob, info.payload_offset, 1 + trial % 3, rng);
      const Status st = run(bad, true, ys);
      CHECK((st == Status::Ok || st == Status::CorruptPayload) && ys.back() == 7.f);
    }
  }
}

// A table whose entries claim more codes than an entry holds (not a code's table: only a caller
// that builds its own) is refused by every twin's check, as the kernels refuse it per block:
// decode_count would otherwise wrap its count and write past the lane's range (ASan saw it).
static void test_tables_with_too_many_codes_are_refused() {
  using namespace windowed;
  const auto sym = gaussian_symbols(5000, 2.0, 3);
  LaneStream ls;
  lane_stream(sym, 32, 1000, &ls);
  KernelStream ks;
  kernel_stream(ls.blob, ls.info, &ks);
  std::vector<uint8_t> out(sym.size());
  uint32_t status = 0;
  CHECK(host::windowed_decode(ks.view, ls.table, out.data(), &status) == Status::Ok && status == 0 && out == sym);
  for (uint32_t count : {4u, 15u}) {
    LaneStream bad = ls;
    for (uint32_t v = 0; v < kTableSize; v += 7) bad.table[v] = (bad.table[v] & ~(15u << 24)) | (count << 24);
    CHECK(!tables_ok(bad.table, bad.count()));
    CHECK(host::windowed_decode(ks.view, bad.table, out.data(), &status) == Status::BadTable);
  }
}

// fixed12.h: every code word's piece, built four top bytes at a time (the kernels' SWAR and byte
// permutes), equals the scalar decoder's weights, for every base; the encoder round-trips every
// bf16 pattern and lists exactly the weights outside its window.
static void test_fixed12_layout() {
  std::mt19937 rng(12);
  for (uint32_t base = 0; base <= fixed12::kMaxBase; ++base) {
    for (int trial = 0; trial < 64; ++trial) {
      const uint32_t code_word = trial == 0 ? 0u : trial == 1 ? 0xFFFFFFFFu : uint32_t(rng());
      const uint32_t lo = uint32_t(rng()), hi = uint32_t(rng());
      uint32_t pair[4];
      fixed12::piece_pairs(code_word, lo, hi, base * 0x01010101u, pair);
      uint8_t codes[4], low[8];
      std::memcpy(codes, &code_word, 4);
      std::memcpy(low, &lo, 4);
      std::memcpy(low + 4, &hi, 4);
      uint16_t scalar[8], vector[8];
      fixed12::decode(codes, low, base, 0, 8, scalar);
      std::memcpy(vector, pair, sizeof vector);
      CHECK(std::memcmp(scalar, vector, sizeof scalar) == 0);
    }
  }
  std::vector<uint16_t> bits(65536 + 3);  // every pattern, then a partial piece
  for (uint32_t i = 0; i < bits.size(); ++i) bits[i] = uint16_t((i * 40503u) ^ (i >> 16));
  uint64_t count[128];
  fixed12::count_tops(bits.data(), bits.size(), count);
  const uint32_t base = fixed12::best_base(count);
  const uint64_t n = bits.size(), pieces = fixed12::pieces_of(n), held = fixed12::held_by(count, base);
  std::vector<uint8_t> codes(4 * pieces), low(8 * pieces);
  std::vector<int64_t> escapes(n - held + 1, -1);
  CHECK(fixed12::encode(bits.data(), n, base, codes.data(), low.data(), escapes.data(), escapes.size()) == n - held);
  CHECK(escapes[n - held] == -1);  // nothing written past the count
  std::vector<uint16_t> out(n);
  fixed12::decode(codes.data(), low.data(), base, 0, n, out.data());
  uint64_t e = 0, mismatched = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const bool escaped = e < n - held && escapes[e] == int64_t(i);
    if (escaped) {
      ++e;
      CHECK(fixed12::code_of(bits[i], base) == fixed12::kEscape);
      CHECK((out[i] & 0x7F00u) == 0);  // code 0: |w| < 2^-125
    } else if (out[i] != bits[i]) {
      ++mismatched;
    }
  }
  CHECK(e == n - held && mismatched == 0);
  // a range that starts inside a piece decodes the same weights
  std::vector<uint16_t> part(1001);
  fixed12::decode(codes.data(), low.data(), base, 5, part.size(), part.data());
  CHECK(std::memcmp(part.data(), out.data() + 5, part.size() * 2) == 0);
}

// The fixed12 GEMV emulations (CUDA cores, tensor cores) on buffers of exactly their sizes (ASan sees
// any read past them: the tail block, rows and batch rows past the ends), against a double product.
static void test_fixed12_gemv_emulation() {
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto bf16 = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  };
  auto value = [](uint16_t h) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  const uint32_t shapes[][2] = {{7, 1000}, {33, 8}, {16, 64}, {40, 264}};
  for (const auto& shape : shapes) {
    const uint32_t n = shape[0], k = shape[1];
    for (uint32_t batch : {1u, 3u, 8u, 9u, 16u}) {
      std::vector<uint16_t> w(size_t(n) * k), x(size_t(batch) * k);
      for (auto& v : w) v = bf16(0.02f * normal(rng));
      w[1] = bf16(3000.f);
      for (size_t i = 0; i < w.size(); i += 9) w[i] = 0;
      for (auto& v : x) v = bf16(normal(rng));
      uint64_t count[128];
      fixed12::count_tops(w.data(), w.size(), count);
      const uint32_t base = fixed12::best_base(count);
      const uint64_t pieces = fixed12::pieces_of(w.size()), n_esc = w.size() - fixed12::held_by(count, base);
      std::vector<uint32_t> codes(pieces), low(2 * pieces);
      std::vector<int64_t> esc(n_esc);
      fixed12::encode(w.data(), w.size(), base, reinterpret_cast<uint8_t*>(codes.data()),
                      reinterpret_cast<uint8_t*>(low.data()), esc.data(), n_esc);
      std::vector<int32_t> row_ptr(n + 1, 0), col(n_esc);
      std::vector<float> val(2 * n_esc);
      for (uint64_t e = 0; e < n_esc; ++e) {
        ++row_ptr[esc[e] / k + 1];
        col[e] = int32_t(esc[e] % k);
        val[2 * e] = value(w[esc[e]]);
        val[2 * e + 1] = value(uint16_t(reinterpret_cast<const uint8_t*>(low.data())[esc[e]]));
      }
      for (uint32_t r = 0; r < n; ++r) row_ptr[r + 1] += row_ptr[r];
      for (bool tensor_cores : {true, false}) {
        std::vector<uint16_t> y(size_t(batch) * n);
        fixed12::GemvArgs a{};
        a.codes = codes.data(), a.low = low.data(), a.pieces = pieces, a.base4 = base * 0x01010101u;
        a.x = x.data(), a.x_bf16 = true, a.batch = batch, a.n_rows = n, a.k = k;
        a.escape_row = n_esc ? row_ptr.data() : nullptr, a.escape_col = col.data(), a.escape_value = val.data();
        a.n_escapes = uint32_t(n_esc), a.y = y.data();
        // x is a vector's data: 16-byte aligned by the allocator here, as torch's are
        CHECK(host::fixed12_gemv(a, batch <= 8 ? batch : 16, tensor_cores) == Status::Ok);
        uint32_t bad = 0;
        for (uint32_t b = 0; b < batch; ++b)
          for (uint32_t r = 0; r < n; ++r) {
            double ref = 0, scale = 0;
            for (uint32_t c = 0; c < k; ++c) {
              ref += double(value(w[size_t(r) * k + c])) * value(x[size_t(b) * k + c]);
              scale += std::fabs(double(value(w[size_t(r) * k + c])) * value(x[size_t(b) * k + c]));
            }
            const double got = value(y[size_t(b) * n + r]);
            if (std::fabs(got - ref) > std::fabs(ref) / 128 + 1e-5 * scale) ++bad;
          }
        CHECK(bad == 0);
      }
    }
  }
}

int main() {
  test_package_merge_limits_lengths();
  test_package_merge_optimal_on_dyadic();
  test_package_merge_counts_what_the_walk_selects();
  test_encoder_vector_helpers();
  test_rans_normalize();
  test_rans_reciprocal_division();
  test_roundtrips();
  test_uneven_lanes();
  test_efficiency();
  test_multi_table_matches_single_codes();
  test_lane_primitives_match_chunk_decoder();
  test_corruption_never_crashes();
  test_empty_blob_at_any_address();
  test_chunk_groups_match_single_chunks();
  test_kernel_emulation_on_valid_and_hostile_streams();
  test_lane_starts();
  test_gemv_stream_stage();
  test_hash_sensitivity();
  test_hash_batches();
  test_split_merge_paths_agree();
  test_split_merge_streaming();
  test_select_kth();
  test_split_packings();
  test_encode_split();
  test_split_sink_weights();
  test_split_decode_emulation();
  test_staged_split_gemv_emulation();
  test_byte_split();
  test_word_stage_stores();
  test_staged_affine_gemv_emulation();
  test_tables_with_too_many_codes_are_refused();
  test_affine_dequantization();
  test_affine_matvec();
  test_quantizers();
  test_host_openmp_team();
  test_fixed12_layout();
  test_fixed12_gemv_emulation();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
