// pycodec codec core: whole-stream encode / decode over independent chunks.
#include "codec.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "dequant.h"
#include "hash.h"
#include "huffman.h"
#include "quantize.h"
#include "rans.h"
#include "split.h"
#include "windowed.h"
#include "windowed_gemv.h"

namespace pycodec {
namespace {

int host_max_threads();

int resolve_threads(int threads, uint64_t n_chunks) {
  if (threads <= 0) threads = host_max_threads();
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  return int(std::min<uint64_t>(uint64_t(threads), std::max<uint64_t>(1, n_chunks)));
}

// Worker threads kept for the process: starting a thread per call costs about as much as
// decoding a small layer (a CPU forward decodes ~240 streams a token), so threads start once
// and wait for work. One job at a time; a caller that finds the pool busy (another Python
// thread decoding, the GIL released) starts threads of its own as before. After fork() the
// child has none of the parent's threads: the pool is rebuilt there (pid check), the parent's
// left untouched. Never destroyed: threads blocked in a wait at exit are fine.
class WorkerPool {
 public:
  static WorkerPool* get() {
    static std::atomic<WorkerPool*> pool{nullptr};
    static std::mutex making;
    WorkerPool* p = pool.load();
    if (p && p->pid_ == getpid()) return p;
    std::lock_guard<std::mutex> lock(making);  // after fork(): this process's own mutex copy
    p = pool.load();
    if (!p || p->pid_ != getpid()) {
      p = new WorkerPool();
      pool.store(p);
    }
    return p;
  }

  // Runs job(id) on the caller (id 0) and `extra` workers (ids 1..extra); false if busy.
  bool try_run(int extra, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(m_);
      for (; started_ < extra; ++started_) std::thread([this, id = started_ + 1] { serve(id); }).detach();
      job_ = &job;
      wanted_ = extra;
      running_ = extra;
      ++generation_;
    }
    wake_.notify_all();
    job(0);
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [this] { return running_ == 0; });
    job_ = nullptr;
    return true;
  }

 private:
  WorkerPool() : pid_(getpid()) {}

  void serve(int id) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job;
      {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id > wanted_) continue;  // this job wants fewer workers
        job = job_;
      }
      (*job)(id);
      std::lock_guard<std::mutex> lock(m_);
      if (--running_ == 0) done_.notify_one();
    }
  }

  const pid_t pid_;
  std::mutex busy_, m_;
  std::condition_variable wake_, done_;
  int started_ = 0;  // workers serving (ids 1..started_), detached: they live as long as the process
  const std::function<void(int)>* job_ = nullptr;
  int wanted_ = 0, running_ = 0;
  uint64_t generation_ = 0;
};

// The installed host runtime and the process that installed it; immutable once published.
// Every one published stays in `host_teams` (a call in flight may still hold a replaced one),
// each (runtime, process) once.
struct HostTeam {
  HostOpenMP runtime;
  pid_t pid;
};
std::atomic<const HostTeam*> host_team{nullptr};
std::mutex host_teams_lock;
std::vector<std::unique_ptr<HostTeam>> host_teams;

// The host team this process's parallel calls run on, or null (none installed, or installed
// by the parent of a forked child).
const HostTeam* current_host_team() {
  const HostTeam* team = host_team.load(std::memory_order_acquire);
  return team && team->pid == getpid() ? team : nullptr;
}

// The installed host runtime's thread count for calls that leave theirs open; 0 without one.
int host_max_threads() {
  const HostTeam* team = current_host_team();
  return team && team->runtime.max_threads ? team->runtime.max_threads() : 0;
}

struct HostJob {
  const std::function<void(int)>* job;
  int (*thread_num)();
};

void run_host_job(void* data) {
  const HostJob& j = *static_cast<const HostJob*>(data);
  (*j.job)(j.thread_num());
}

// Runs job(id) on `threads` threads of the host's team (ids 0..threads-1, the caller 0); false
// without one. A team may come smaller (a call inside a parallel region gets one thread), so
// jobs take their chunks from a shared counter and never wait for each other.
bool try_run_on_host_team(int threads, const std::function<void(int)>& job) {
  const HostTeam* team = current_host_team();
  if (!team) return false;
  HostJob data{&job, team->runtime.thread_num};
  team->runtime.parallel(run_host_job, &data, unsigned(threads), 0);
  return true;
}

// Runs fn(worker, chunk) for every chunk on `threads` threads (worker in [0, threads));
// returns the first failure seen. A worker id may run no chunk at all.
template <class Fn>
Status for_each_chunk(uint64_t n_chunks, int threads, Fn fn) {
  std::atomic<uint64_t> next{0};
  std::atomic<int> failure{int(Status::Ok)};
  const std::function<void(int)> worker = [&](int id) {
    for (uint64_t c; (c = next.fetch_add(1)) < n_chunks;) {
      if (failure.load(std::memory_order_relaxed) != int(Status::Ok)) return;
      const Status st = fn(id, c);
      if (st != Status::Ok) {
        int expected = int(Status::Ok);
        failure.compare_exchange_strong(expected, int(st));
      }
    }
  };
  const int t = resolve_threads(threads, n_chunks);
  if (t == 1) {
    worker(0);
  } else if (!try_run_on_host_team(t, worker) && !WorkerPool::get()->try_run(t - 1, worker)) {
    std::vector<std::thread> pool;
    for (int i = 1; i < t; ++i) pool.emplace_back(worker, i);
    worker(0);
    for (auto& th : pool) th.join();
  }
  return Status(failure.load());
}

uint64_t combine_chunk_hashes(const std::vector<uint64_t>& h) {
  return hash64(reinterpret_cast<const uint8_t*>(h.data()), h.size() * sizeof(uint64_t));
}

constexpr uint32_t kMaxChunkBatch = 8;

// Chunks a task of an encode or a whole decode takes: up to kMaxChunkBatch, so that their
// hashes run side by side (hash64_each); no more than kBatchBytes of symbols (a task's chunks
// stay in cache between their coding and their hashing), nor fewer than four tasks a thread.
uint32_t chunk_batch(uint64_t n_chunks, uint64_t chunk_symbols, int threads) {
  constexpr uint64_t kBatchBytes = uint64_t(1) << 16;
  const uint64_t per_thread = n_chunks / (4 * uint64_t(std::max(1, resolve_threads(threads, n_chunks))));
  return uint32_t(std::max<uint64_t>(
      1, std::min({uint64_t(kMaxChunkBatch), kBatchBytes / std::max<uint64_t>(chunk_symbols, 1), per_thread})));
}

#ifdef PYCODEC_HAVE_VBMI
static_assert(kMaxChunkBatch <= vbmi::kHashBatch, "a task's chunks hash in one batch");
#endif

// out[k] = hash64(data[k], n) for k < count (<= kMaxChunkBatch).
void hash64_each(const uint8_t* const data[], uint32_t count, size_t n, uint64_t out[]) {
#ifdef PYCODEC_HAVE_VBMI
  if (count > 1 && vbmi::use_hash_batch()) return vbmi::hash64_batch(data, count, n, out);
#endif
  for (uint32_t k = 0; k < count; ++k) out[k] = hash64(data[k], n);
}

// hash[c0 + i] = hash64 of chunk c0 + i's symbols (data[i], length(c0 + i) bytes), i < count:
// the chunks of one length together (all but a stream's last chunk).
template <class Length>
void hash_chunks(const uint8_t* const data[], uint64_t c0, uint32_t count, Length length, uint64_t* hash) {
  uint32_t same = 0;
  while (same < count && length(c0 + same) == length(c0)) ++same;
  hash64_each(data, same, length(c0), hash + c0);
  for (uint32_t i = same; i < count; ++i) hash[c0 + i] = hash64(data[i], length(c0 + i));
}

// Decode tables for one stream, built once and shared read-only by all threads.
struct DecodeTables {
  StreamInfo info;
  std::unique_ptr<uint32_t[]> huffman;
  std::unique_ptr<uint32_t[]> rans;
  std::unique_ptr<windowed::MultiTable> multi;
  std::vector<uint64_t> offsets;  // chunk c spans payload words [offsets[c], offsets[c + 1])
  // If set (v2): chunk c's lane start bytes (windowed.h) go to lane_starts + c * lanes as its lanes
  // are placed (chunks write disjoint slices: threads may share it).
  uint8_t* lane_starts = nullptr;

  uint8_t* lane_starts_of(uint64_t c) const { return lane_starts ? lane_starts + c * info.lanes : nullptr; }

  Status build(const uint8_t* blob, const StreamInfo& s) {
    info = s;
    const uint8_t* t = blob + s.table_offset;
    if (s.coder == Coder::Huffman) {
      huffman::Code code;
      const Status st = huffman::read_table(t, s.table_bytes, code);
      if (st != Status::Ok) return st;
      if (s.version == 1) {
        huffman.reset(new uint32_t[huffman::kTableSize]);
        huffman::build_decode_table(code, huffman.get());
      } else {
        if (code.constant && s.lanes != 1) return Status::BadTable;  // zero-bit codes fill no window
        multi.reset(new windowed::MultiTable);
        windowed::build_multi_table(code, *multi);
      }
    } else {
      rans::Model model;
      const Status st = rans::read_table(t, s.table_bytes, model);
      if (st != Status::Ok) return st;
      rans.reset(new uint32_t[rans::kProbScale]);
      rans::build_decode_table(model, rans.get());
    }
    offsets = chunk_offsets(blob, s);
    return Status::Ok;
  }

  uint32_t chunk_length(uint64_t c) const {
    return uint32_t(std::min<uint64_t>(info.chunk_symbols, info.n_symbols - c * info.chunk_symbols));
  }

  // Chunks decoded at once (v2: several when they have fewer than 8 lanes, windowed.h).
  uint32_t group() const { return multi ? windowed::chunks_per_group(info.lanes) : 1; }

  // Chunks c0 .. c0 + count - 1 (count <= group()), chunk c0 + i's symbols into outs[i];
  // the first failure, if any.
  Status decode_chunks(const uint8_t* blob, uint64_t c0, uint32_t count, uint8_t* const outs[]) const {
    if (!multi || count == 1) {
      for (uint32_t i = 0; i < count; ++i) {
        const Status st = decode_chunk(blob, c0 + i, outs[i]);
        if (st != Status::Ok) return st;
      }
      return Status::Ok;
    }
    windowed::ChunkJob jobs[windowed::kMaxLanes] = {};  // filled to count; zeroed so GCC sees no uninitialised read
    Status status[windowed::kMaxLanes];
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t c = c0 + i;
      jobs[i] = {reinterpret_cast<const uint32_t*>(blob + info.payload_offset) + offsets[c],
                 uint32_t(offsets[c + 1] - offsets[c]), outs[i], chunk_length(c), lane_starts_of(c)};
    }
    thread_local std::vector<uint8_t> scratch;  // per worker: the lanes' regions and the chunks' bytes
    windowed::decode_chunk_group(*multi, jobs, count, info.lanes, status, scratch);
    for (uint32_t i = 0; i < count; ++i)
      if (status[i] != Status::Ok) return status[i];
    return Status::Ok;
  }

  Status decode_chunk(const uint8_t* blob, uint64_t c, uint8_t* out) const {
    const uint64_t begin = offsets[c], end = offsets[c + 1];
    const uint32_t* words = reinterpret_cast<const uint32_t*>(blob + info.payload_offset) + begin;
    const uint32_t n = chunk_length(c);
    if (multi) {
      thread_local std::vector<uint8_t> scratch;  // per worker: lanes x (window + slack) bytes
      return windowed::decode_chunk(*multi, words, uint32_t(end - begin), info.lanes, out, n, scratch,
                                    lane_starts_of(c));
    }
    return huffman ? huffman::decode_chunk(huffman.get(), words, end - begin, out, n)
                   : rans::decode_chunk(rans.get(), words, end - begin, out, n);
  }
};

// The payload is read as uint32 words; a blob from Python (bytes) is only byte-aligned.
struct AlignedBlob {
  std::vector<uint32_t> copy;
  const uint8_t* data;
  AlignedBlob(const uint8_t* blob, size_t len) : data(blob) {
    if (len && reinterpret_cast<uintptr_t>(blob) % alignof(uint32_t) != 0) {  // empty: nothing to read
      copy.resize((len + 3) / 4);
      std::memcpy(copy.data(), blob, len);
      data = reinterpret_cast<const uint8_t*>(copy.data());
    }
  }
};

}  // namespace

namespace {

// Sets the stream's offsets and sizes from its table and chunk sizes.
void lay_out(StreamInfo& s, size_t table_bytes) {
  s.table_offset = table_offset_of(s.ndim);
  s.index_offset = s.table_offset + padded4(table_bytes);
  s.sizes_offset = s.index_offset + (s.version == 1 ? 0 : 4 * size_t(super_count(s.n_chunks)));
  s.payload_offset = s.index_offset + size_t(index_bytes(s.version, s.n_chunks));
  s.total_bytes = s.payload_offset + 4 * s.payload_words;
}

// Header, table and index, then the payload (chunks copied `threads` at a time), into h's
// s.total_bytes bytes (laid out by lay_out); the index is filled from the chunk sizes.
void assemble(const StreamInfo& s, const std::vector<uint8_t>& table,
              const std::vector<std::vector<uint32_t>>& chunk_words, const uint64_t* shape, uint64_t n,
              uint64_t symbols_hash, int threads, uint8_t* h) {
  std::memset(h, 0, s.payload_offset);  // reserved bytes and paddings; the payload is all chunks
  std::memcpy(h, kMagic, 4);
  put_le(h + 4, s.version, 2);
  h[6] = uint8_t(s.coder);
  h[7] = uint8_t(s.ndim);
  put_le(h + 8, n, 8);
  put_le(h + 16, s.chunk_symbols, 4);
  if (s.version == 1) {
    put_le(h + 20, table.size(), 4);
  } else {
    put_le(h + 20, table.size(), 2);
    h[22] = uint8_t(s.lanes);
  }
  put_le(h + 24, s.payload_words, 8);
  put_le(h + 32, symbols_hash, 8);
  for (int d = 0; d < s.ndim; ++d) put_le(h + kFixedHeaderBytes + 8 * d, shape[d], 8);
  std::memcpy(h + s.table_offset, table.data(), table.size());
  std::vector<uint64_t> offset(s.n_chunks);
  uint64_t words = 0;
  for (uint64_t c = 0; c < s.n_chunks; ++c) {
    offset[c] = words;
    if (s.version == 1) {
      put_le(h + s.index_offset + 4 * c, words, 4);
    } else {
      if (c % kSuperChunksV2 == 0) put_le(h + s.index_offset + 4 * (c / kSuperChunksV2), words, 4);
      put_le(h + s.sizes_offset + 2 * c, chunk_words[c].size(), 2);
    }
    words += chunk_words[c].size();
  }
  put_le(h + header_bytes(s.ndim), meta_hash(h, s), 8);
  uint8_t* payload = h + s.payload_offset;
  constexpr uint64_t kChunksPerCopy = 256;  // a worker's share of the copy: ~100 KB or more
  for_each_chunk((s.n_chunks + kChunksPerCopy - 1) / kChunksPerCopy, threads, [&](int, uint64_t g) {
    for (uint64_t c = g * kChunksPerCopy; c < std::min(s.n_chunks, (g + 1) * kChunksPerCopy); ++c)
      if (!chunk_words[c].empty())  // v2 constant chunks have no words (and no data pointer)
        std::memcpy(payload + 4 * offset[c], chunk_words[c].data(), 4 * chunk_words[c].size());
    return Status::Ok;
  });
}

uint64_t payload_words_of(const std::vector<std::vector<uint32_t>>& chunk_words) {
  uint64_t words = 0;
  for (const auto& w : chunk_words) words += w.size();
  return words;
}

}  // namespace

namespace {

void count_block(const uint8_t* p, uint64_t n, uint64_t counts[256]) {
  // Four sub-histograms break the store-to-load dependency on runs of equal symbols.
  uint64_t sub[4][256] = {};
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    ++sub[0][p[i]];
    ++sub[1][p[i + 1]];
    ++sub[2][p[i + 2]];
    ++sub[3][p[i + 3]];
  }
  for (; i < n; ++i) ++sub[0][p[i]];
  for (int s = 0; s < 256; ++s) counts[s] = sub[0][s] + sub[1][s] + sub[2][s] + sub[3][s];
}

}  // namespace

bool set_host_openmp(HostOpenMP runtime) {
  if (!runtime.parallel != !runtime.thread_num) return false;
  if (!runtime.parallel) {
    host_team.store(nullptr, std::memory_order_release);
    return true;
  }
  std::lock_guard<std::mutex> lock(host_teams_lock);
  const pid_t pid = getpid();
  auto same = std::find_if(host_teams.begin(), host_teams.end(), [&](const std::unique_ptr<HostTeam>& t) {
    return t->pid == pid && t->runtime.parallel == runtime.parallel && t->runtime.thread_num == runtime.thread_num &&
           t->runtime.max_threads == runtime.max_threads;
  });
  if (same == host_teams.end()) same = host_teams.insert(host_teams.end(), std::make_unique<HostTeam>(HostTeam{runtime, pid}));
  host_team.store(same->get(), std::memory_order_release);
  return true;
}

int default_threads() { return resolve_threads(0, UINT64_MAX); }

bool host_openmp_active() { return current_host_team() != nullptr; }

namespace {

// Half the last-level cache that this core shares, as Linux describes it (sysconf's figure can
// be the whole host's: 384 MiB in the EPYC VM, whose cores share 32). There, MiniLM's bf16
// weights (21.5 MB decoded, one core) took 6.0 -> 5.55 ms streamed, while outputs of 2-10 MB
// that a benchmark's repeats keep in the cache lost up to 8% (2026-11-30).
uint64_t default_streaming_output_bytes() {
  uint64_t llc = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    FILE* level_file = std::fopen((dir + "level").c_str(), "r");
    if (!level_file) break;
    int level = 0;
    const bool have_level = std::fscanf(level_file, "%d", &level) == 1;
    std::fclose(level_file);
    FILE* size_file = std::fopen((dir + "size").c_str(), "r");
    if (!size_file) continue;
    unsigned long long kib = 0;
    if (have_level && level >= 2 && std::fscanf(size_file, "%lluK", &kib) == 1) llc = std::max<uint64_t>(llc, kib << 10);
    std::fclose(size_file);
  }
  return llc ? llc / 2 : uint64_t(16) << 20;
}

std::atomic<uint64_t>& streaming_output_setting() {
  static std::atomic<uint64_t> bytes{default_streaming_output_bytes()};
  return bytes;
}

}  // namespace

uint64_t set_streaming_output_bytes(uint64_t bytes) { return streaming_output_setting().exchange(bytes); }
uint64_t streaming_output_bytes() { return streaming_output_setting().load(std::memory_order_relaxed); }

void count_symbols(const uint8_t* p, uint64_t n, uint64_t counts[256], int threads) {
  // Whole blocks per worker: the count is ~10% of an encode, and serial it was a third of a
  // two-thread encode's time.
  constexpr uint64_t kBlock = uint64_t(1) << 20;
  const uint64_t blocks = (n + kBlock - 1) / kBlock;
  if (resolve_threads(threads, blocks) == 1) return count_block(p, n, counts);
  std::vector<std::array<uint64_t, 256>> per_block(blocks);
  for_each_chunk(blocks, threads, [&](int, uint64_t b) {
    count_block(p + b * kBlock, std::min(kBlock, n - b * kBlock), per_block[b].data());
    return Status::Ok;
  });
  for (int s = 0; s < 256; ++s) counts[s] = 0;
  for (const auto& h : per_block)
    for (int s = 0; s < 256; ++s) counts[s] += h[s];
}

bool row_median_mad(const float* w, uint64_t rows, uint64_t k, float* med, float* mad, int threads) {
  if (k == 0) return false;
  const uint64_t block = std::max<uint64_t>(1, (uint64_t(1) << 16) / k);  // rows a task: ~64K weights
  std::atomic<bool> finite{true};
  for_each_chunk((rows + block - 1) / block, threads, [&](int, uint64_t b) {
    thread_local std::vector<uint32_t> scratch;
    if (scratch.size() < k) scratch.resize(k);
    for (uint64_t r = b * block; r < std::min(rows, (b + 1) * block) && finite.load(std::memory_order_relaxed); ++r)
      if (!quantize::row_median_mad(w + r * k, k, med + r, mad + r, scratch.data())) finite = false;
    return Status::Ok;
  });
  return finite;
}

void error_and_signal(const float* a, const float* b, uint64_t n, double* error, double* signal, int threads) {
  constexpr uint64_t kBlock = uint64_t(1) << 18;
  const uint64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> e(blocks), s(blocks);
  for_each_chunk(blocks, threads, [&](int, uint64_t i) {
    quantize::error_and_signal(a + i * kBlock, b + i * kBlock, std::min(kBlock, n - i * kBlock), &e[i], &s[i]);
    return Status::Ok;
  });
  double error_sum = 0, signal_sum = 0;
  for (uint64_t i = 0; i < blocks; ++i) error_sum += e[i], signal_sum += s[i];
  *error = error_sum;
  *signal = signal_sum;
}

Status encode(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
              std::vector<uint8_t>* blob) {
  return encode(symbols, shape, ndim, opt, [blob](size_t bytes) {
    blob->resize(bytes);
    return blob->data();
  });
}

namespace {

// What every encode decides before coding a chunk: the code (or rANS model) and its table from
// the symbols' histogram, the stream's version, chunking and lanes.
struct EncodePlan {
  StreamInfo s{};
  uint64_t n = 1;
  std::vector<uint8_t> table;
  huffman::Code code;
  rans::Model model;
};

// The stream format version an encode with these options writes.
uint16_t format_version_of(const EncodeOptions& opt) {
  return opt.format_version ? opt.format_version : opt.coder == Coder::Huffman ? 2 : 1;
}

// The elements of a tensor of this shape: BadArgument for a rank the format cannot hold,
// TooLarge when the product overflows.
Status element_count(const uint64_t* shape, int ndim, uint64_t* n) {
  if (ndim < 0 || ndim > kMaxDims) return Status::BadArgument;
  *n = 1;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] != 0 && *n > UINT64_MAX / shape[d]) return Status::TooLarge;
    *n *= shape[d];
  }
  return Status::Ok;
}

// known_counts: the symbols' histogram when the caller has it (a split's planning count), else
// null and the symbols are counted.
Status plan_encode(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
                   const uint64_t* known_counts, EncodePlan* plan) {
  if (opt.coder != Coder::Huffman && opt.coder != Coder::Rans) return Status::BadArgument;
  const uint16_t version = format_version_of(opt);
  if (version != 1 && (version != 2 || opt.coder != Coder::Huffman)) return Status::BadArgument;
  if (version == 1 && opt.lanes != 0 && opt.lanes != uint32_t(kLanes)) return Status::BadArgument;
  const Status counted = element_count(shape, ndim, &plan->n);
  if (counted != Status::Ok) return counted;
  const uint64_t n = plan->n;
  uint64_t counts[256];
  if (known_counts) std::copy(known_counts, known_counts + 256, counts);
  else count_symbols(symbols, n, counts, opt.threads);
  if (opt.coder == Coder::Huffman) {
    const Status st = huffman::build_code(counts, plan->code);
    if (st != Status::Ok) return st;
    huffman::write_table(plan->code, plan->table);
  } else {
    rans::normalize(counts, plan->model);
    rans::write_table(plan->model, plan->table);
  }
  StreamInfo& s = plan->s;
  s.version = version;
  s.coder = opt.coder;
  s.ndim = ndim;
  if (version == 1) {
    s.chunk_symbols = opt.chunk_symbols ? opt.chunk_symbols
                      : opt.coder == Coder::Huffman ? kDefaultHuffmanChunk : kDefaultRansChunk;
    if (s.chunk_symbols < kChunkAlign || s.chunk_symbols > kMaxChunkSymbols || s.chunk_symbols % kChunkAlign)
      return Status::BadArgument;
    s.lanes = kLanes;
  } else {
    if (opt.chunk_symbols > kMaxChunkSymbolsV2 || opt.lanes > uint32_t(windowed::kMaxLanes)) return Status::BadArgument;
    const windowed::Layout layout =
        windowed::choose_layout(shape, ndim, n, counts, plan->code.length, opt.chunk_symbols, opt.lanes);
    s.chunk_symbols = layout.chunk_symbols;
    s.lanes = plan->code.constant ? 1 : layout.lanes;  // zero-bit codes fill no windows: always one lane
  }
  s.n_chunks = n / s.chunk_symbols + (n % s.chunk_symbols != 0);
  return Status::Ok;
}

// Codes the chunks of a planned stream and writes it where allocate() says. symbols_of(c, m,
// slot) returns chunk c's m symbols: the caller's, or ones made in a per-thread buffer of its
// own for each slot (< chunk_batch: a task's chunks are all made before any is hashed and
// coded), valid until that thread's next call with that slot.
template <class SymbolsOf>
Status encode_planned(EncodePlan& plan, const uint64_t* shape, const EncodeOptions& opt, SymbolsOf symbols_of,
                      const std::function<uint8_t*(size_t)>& allocate) {
  StreamInfo& s = plan.s;
  const uint64_t n = plan.n;
  std::vector<std::vector<uint32_t>> chunk_words(s.n_chunks);
  std::vector<uint64_t> chunk_hash(s.n_chunks);
  const auto length = [&](uint64_t c) { return uint32_t(std::min<uint64_t>(s.chunk_symbols, n - c * s.chunk_symbols)); };
  const uint32_t batch = chunk_batch(s.n_chunks, s.chunk_symbols, opt.threads);
  Status st = for_each_chunk((s.n_chunks + batch - 1) / batch, opt.threads, [&](int, uint64_t g) {
    const uint64_t c0 = g * batch;
    const uint32_t count = uint32_t(std::min<uint64_t>(batch, s.n_chunks - c0));
    const uint8_t* symbols[kMaxChunkBatch];
    for (uint32_t i = 0; i < count; ++i) symbols[i] = symbols_of(c0 + i, length(c0 + i), i);
    hash_chunks(symbols, c0, count, length, chunk_hash.data());
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t c = c0 + i;
      const uint8_t* const p = symbols[i];
      const uint32_t m = length(c);
      if (s.version == 2) {
        const Status chunk_st = windowed::encode_chunk(p, m, plan.code, s.lanes, chunk_words[c]);
        if (chunk_st != Status::Ok) return chunk_st;
      } else if (opt.coder == Coder::Huffman) {
        huffman::encode_chunk(p, m, plan.code, chunk_words[c]);
      } else {
        rans::encode_chunk(p, m, plan.model, chunk_words[c]);
      }
    }
    return Status::Ok;
  });
  if (st != Status::Ok) return st;
  s.payload_words = payload_words_of(chunk_words);
  if (s.payload_words > UINT32_MAX) return Status::TooLarge;  // index offsets are u32 words
  lay_out(s, plan.table.size());
  uint8_t* const out = allocate(s.total_bytes);
  if (!out) return Status::TooLarge;
  assemble(s, plan.table, chunk_words, shape, n, combine_chunk_hashes(chunk_hash), opt.threads, out);
  return Status::Ok;
}

// Elements a worker splits at a time: a multiple of 32, so each block's raw bits start on a word.
constexpr uint64_t kSplitBlock = uint64_t(1) << 18;

template <class T>
Status encode_split_impl(const T* bits, const uint64_t* shape, int ndim, const EncodeOptions& opt, split::Plan* plan,
                         const std::function<uint32_t*(size_t)>& allocate_raw,
                         const std::function<uint8_t*(size_t)>& allocate) {
  uint64_t n = 0;
  Status st = element_count(shape, ndim, &n);
  if (st != Status::Ok) return st;
  st = plan_split(bits, n, plan, opt.threads, opt.split_top);
  if (st != Status::Ok) return st;
  const uint64_t n_raw = split::raw_words(n, plan->width - plan->top);
  uint32_t* const raw = allocate_raw(n_raw);
  if (!raw && n_raw) return Status::TooLarge;
  uint64_t counts[256] = {0};
  std::copy(plan->counts, plan->counts + plan->n_values, counts);
  EncodePlan coding;
  st = plan_encode(nullptr, shape, ndim, opt, counts, &coding);
  if (st != Status::Ok) return st;
  const uint64_t chunk = coding.s.chunk_symbols;
  const uint64_t low = uint64_t(plan->width - plan->top);
  if (chunk * low % 32 && coding.s.n_chunks > 1) {  // chunks that do not start on a raw word: split first
    std::vector<uint8_t> symbols(n);
    apply_split(bits, n, *plan, symbols.data(), raw, opt.threads);
    return encode_planned(
        coding, shape, opt, [&](uint64_t c, uint32_t, uint32_t) { return symbols.data() + c * chunk; }, allocate);
  }
  // Each chunk's symbols are split in cache as it is coded: never written whole, never counted
  // again. Its raw fields start on a word (chunk * low % 32 == 0), so chunks share no raw word.
  const split::Numbering numbering(*plan);
  return encode_planned(coding, shape, opt, [&](uint64_t c, uint32_t m, uint32_t slot) {
    thread_local std::vector<uint8_t> symbols[kMaxChunkBatch];  // per worker: a task's chunks' symbols
    std::vector<uint8_t>& own = symbols[slot];
    if (own.size() < m) own.resize(m);
    split::apply_plan_span(bits, c * chunk, m, *plan, numbering, own.data(), raw);
    return static_cast<const uint8_t*>(own.data());
  }, allocate);
}

}  // namespace

Status encode(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
              const std::function<uint8_t*(size_t)>& allocate) {
  EncodePlan plan;
  const Status st = plan_encode(symbols, shape, ndim, opt, nullptr, &plan);
  if (st != Status::Ok) return st;
  const uint64_t chunk = plan.s.chunk_symbols;
  return encode_planned(plan, shape, opt, [&](uint64_t c, uint32_t, uint32_t) { return symbols + c * chunk; },
                        allocate);
}

Status encode_split(const uint16_t* bits, const uint64_t* shape, int ndim, const EncodeOptions& opt,
                    split::Plan* plan, const std::function<uint32_t*(size_t)>& allocate_raw,
                    const std::function<uint8_t*(size_t)>& allocate) {
  return encode_split_impl(bits, shape, ndim, opt, plan, allocate_raw, allocate);
}
Status encode_split(const uint32_t* bits, const uint64_t* shape, int ndim, const EncodeOptions& opt,
                    split::Plan* plan, const std::function<uint32_t*(size_t)>& allocate_raw,
                    const std::function<uint8_t*(size_t)>& allocate) {
  return encode_split_impl(bits, shape, ndim, opt, plan, allocate_raw, allocate);
}

Status encoded_size(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
                    uint64_t* bytes) {
  if (format_version_of(opt) != 2) {  // v1 chunks' sizes come from coding them
    std::vector<uint8_t> blob;
    const Status st = encode(symbols, shape, ndim, opt, &blob);
    *bytes = blob.size();
    return st;
  }
  EncodePlan plan;
  Status st = plan_encode(symbols, shape, ndim, opt, nullptr, &plan);
  if (st != Status::Ok) return st;
  StreamInfo& s = plan.s;
  std::vector<uint64_t> words(s.n_chunks);
  st = for_each_chunk(s.n_chunks, opt.threads, [&](int, uint64_t c) {
    const uint32_t m = uint32_t(std::min<uint64_t>(s.chunk_symbols, plan.n - c * s.chunk_symbols));
    return windowed::chunk_size(symbols + c * s.chunk_symbols, m, plan.code, s.lanes, &words[c]);
  });
  if (st != Status::Ok) return st;
  s.payload_words = 0;
  for (uint64_t w : words) s.payload_words += w;
  if (s.payload_words > UINT32_MAX) return Status::TooLarge;
  lay_out(s, plan.table.size());
  *bytes = s.total_bytes;
  return Status::Ok;
}

namespace {

// The start of every decode: validate the (aligned) blob and the caller's arguments
// (check(info)), then build the tables.
template <class Check>
Status open_stream(const uint8_t* blob, size_t len, Check check, DecodeTables* tables) {
  StreamInfo s;
  Status st = parse_header(blob, len, &s);
  if (st != Status::Ok) return st;
  if ((st = check(s)) != Status::Ok) return st;
  return tables->build(blob, s);
}

// Threads for a decode of `symbols` in `chunks` chunks. An own worker woken for less than ~64K
// symbols costs more than it decodes (waking one takes ~25 us on the 2-core EPYC: 37K symbols
// took 49 us on two threads, 26 on one). A host team's threads spin between the host's ops and
// pycodec's calls and join within microseconds: 16K symbols a thread there (a 192 x 576 layer,
// 110K symbols, splits in two: 74 -> 51 us a call in a SmolLM2 forward).
int decode_threads(int threads, uint64_t chunks, uint64_t symbols) {
  const uint64_t per_thread = uint64_t(1) << (host_openmp_active() ? 14 : 16);
  if (threads == 1) return 1;
  return std::min(resolve_threads(threads, chunks), int(std::max<uint64_t>(1, symbols / per_thread)));
}

// Decodes chunks id(0) .. id(n - 1) of a stream (ids validated by the caller), up to a group
// (DecodeTables::group) at a time where the ids run through consecutive chunks, on `threads`
// threads: slot i's symbols into direct_out + i * chunk_symbols, or, if direct_out is null, a
// per-thread buffer. before(tables, first slot, count) runs ahead of each decode (to fetch
// what per_chunk will read), then per_chunk(tables, slot, chunk, symbols) for each. A thread
// takes a few groups at a time (chunk_batch) and, once they are decoded, hands them all to
// after(tables, first slot, count, symbols[]) (decode_stream hashes them there, side by side).
template <class Id, class Before, class PerChunk, class After>
Status for_each_decoded_chunk(const DecodeTables& tables, const uint8_t* blob, uint64_t n, Id id, int threads,
                              uint8_t* direct_out, Before before, PerChunk per_chunk, After after) {
  const uint64_t chunk = tables.info.chunk_symbols;
  const uint32_t group = tables.group();
  threads = decode_threads(threads, n, n * chunk);
  const uint32_t batch = group * std::max<uint32_t>(1, chunk_batch(n, chunk, threads) / group);
  return for_each_chunk((n + batch - 1) / batch, threads, [&](int, uint64_t t) {
    thread_local std::vector<uint8_t> buffer;  // per worker: a task's symbols
    const uint64_t i0 = t * batch;
    const uint32_t count = uint32_t(std::min<uint64_t>(batch, n - i0));
    if (!direct_out && buffer.size() < count * chunk) buffer.resize(count * chunk);
    uint8_t* outs[windowed::kMaxLanes] = {};  // filled to count; zeroed so GCC sees no uninitialised read
    for (uint32_t i = 0; i < count; ++i) outs[i] = direct_out ? direct_out + (i0 + i) * chunk : buffer.data() + i * chunk;
    Status st = Status::Ok;
    for (uint32_t s0 = 0; s0 < count && st == Status::Ok; s0 += group) {
      const uint64_t first = i0 + s0;
      const uint32_t size = std::min(group, count - s0);
      bool consecutive = true;
      for (uint32_t i = 0; i < size; ++i) consecutive = consecutive && id(first + i) == id(first) + i;
      before(tables, first, size);
      if (consecutive) st = tables.decode_chunks(blob, id(first), size, outs + s0);
      for (uint32_t i = 0; i < size && !consecutive && st == Status::Ok; ++i)
        st = tables.decode_chunk(blob, id(first + i), outs[s0 + i]);
      for (uint32_t i = 0; i < size && st == Status::Ok; ++i)
        st = per_chunk(tables, first + i, id(first + i), outs[s0 + i]);
    }
    return st == Status::Ok ? after(tables, i0, count, outs) : st;
  });
}

const auto nothing_after = [](const DecodeTables&, uint64_t, uint32_t, uint8_t* const*) { return Status::Ok; };

// The ids of a whole stream's chunks, for for_each_decoded_chunk.
const auto every_chunk = [](uint64_t i) { return i; };

const auto nothing_before = [](const DecodeTables&, uint64_t, uint32_t) {};

// The frame of every whole-stream decode: open the stream, decode every chunk (as
// for_each_decoded_chunk: before(tables, c0, count), then per_chunk(tables, c, symbols)), hash
// each chunk's symbols, then compare the checksum.
// lane_starts: if set, a v2 stream's lane start bytes (DecodeTables::lane_starts), which the
// caller sized through check(info).
template <class Check, class Before, class PerChunk>
Status decode_stream(const uint8_t* blob_in, size_t len, int threads, Check check, uint8_t* direct_out, Before before,
                     PerChunk per_chunk, uint8_t* lane_starts = nullptr) {
  const AlignedBlob aligned(blob_in, len);
  const uint8_t* blob = aligned.data;
  DecodeTables tables;
  Status st = open_stream(blob, len, check, &tables);
  if (st != Status::Ok) return st;
  if (tables.multi) tables.lane_starts = lane_starts;
  const StreamInfo& s = tables.info;
  std::vector<uint64_t> chunk_hash(s.n_chunks);
  st = for_each_decoded_chunk(
      tables, blob, s.n_chunks, every_chunk, threads, direct_out, before,
      [&](const DecodeTables&, uint64_t, uint64_t c, const uint8_t* symbols) { return per_chunk(tables, c, symbols); },
      [&](const DecodeTables&, uint64_t c0, uint32_t count, uint8_t* const* symbols) {
        hash_chunks(symbols, c0, count, [&](uint64_t c) { return tables.chunk_length(c); }, chunk_hash.data());
        return Status::Ok;
      });
  if (st != Status::Ok) return st;
  return combine_chunk_hashes(chunk_hash) == s.symbols_hash ? Status::Ok : Status::ChecksumMismatch;
}

// Lossless split: the checks of a decode into out_len values, expected_len(info) of them.
template <class T, class ExpectedLen>
auto split_check(split::MergeTable<T>* merge, const uint32_t* values, uint32_t n_values, int top,
                 uint64_t n_raw_words, uint64_t out_len, ExpectedLen expected_len) {
  return [=](const StreamInfo& s) {
    if (out_len != expected_len(s)) return Status::OutputSize;
    const Status st = split::make_merge_table(values, n_values, top, merge);
    if (st != Status::Ok) return st;
    return n_raw_words == split::raw_words(s.n_symbols, merge->low) ? Status::Ok : Status::BadArgument;
  };
}

// The raw bits of chunks c0 .. c0 + count - 1 come from memory: fetch them while the chunks'
// symbols decode, or the merge waits on each of their cache lines in turn.
inline void prefetch_raw(const DecodeTables& tables, uint64_t c0, uint32_t count, int low, const uint32_t* raw,
                         uint64_t n_raw_words) {
  const uint64_t first = c0 * tables.info.chunk_symbols;
  const uint64_t last = std::min<uint64_t>(tables.info.n_symbols, (c0 + count) * tables.info.chunk_symbols);
  const uint64_t raw_end = std::min<uint64_t>(n_raw_words, (last * low + 31) / 32);
  for (uint64_t w = first * low / 32; w < raw_end; w += 16) __builtin_prefetch(raw + w);
}

// Chunk c's decoded top bits merged with their raw low bits into o (the chunk's values), by
// streaming stores where `stream` (set_streaming_output_bytes).
template <class T>
Status merge_chunk(const DecodeTables& tables, uint64_t c, const uint8_t* symbols, const split::MergeTable<T>& merge,
                   const uint32_t* raw, uint64_t n_raw_words, T* o, bool stream) {
  thread_local std::vector<uint8_t> be;  // per worker: the scalar merge's copy of the raw bits
  return split::merge_span(merge, symbols, c * tables.info.chunk_symbols, tables.chunk_length(c), raw, n_raw_words,
                           o, be, stream)
             ? Status::Ok
             : Status::BadArgument;
}

template <class T>
bool stream_output(uint64_t out_len) {
  return out_len * sizeof(T) >= streaming_output_bytes();
}

template <class T>
Status decode_split_impl(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values, int top,
                         const uint32_t* raw, uint64_t n_raw_words, T* out, uint64_t out_len, int threads) {
  split::MergeTable<T> merge;
  const auto check = split_check(&merge, values, n_values, top, n_raw_words, out_len,
                                 [](const StreamInfo& s) { return s.n_symbols; });
  const bool stream = stream_output<T>(out_len);
  return decode_stream(
      blob, len, threads, check, nullptr,
      [&](const DecodeTables& tables, uint64_t c0, uint32_t count) {
        prefetch_raw(tables, c0, count, merge.low, raw, n_raw_words);
      },
      [&](const DecodeTables& tables, uint64_t c, const uint8_t* symbols) {
        return merge_chunk(tables, c, symbols, merge, raw, n_raw_words, out + c * tables.info.chunk_symbols, stream);
      });
}

// Decodes the listed chunks (as for_each_decoded_chunk, with its before and per_chunk), after
// validating the stream, the chunk ids and, through check, the output.
template <class Check, class Before, class PerChunk>
Status decode_listed_chunks(const uint8_t* blob_in, size_t len, const uint64_t* chunks, uint64_t n, int threads,
                            Check check, uint8_t* direct_out, Before before, PerChunk per_chunk) {
  const AlignedBlob aligned(blob_in, len);
  const uint8_t* blob = aligned.data;
  DecodeTables tables;
  const Status st = open_stream(blob, len, check, &tables);
  if (st != Status::Ok) return st;
  for (uint64_t i = 0; i < n; ++i)
    if (chunks[i] >= tables.info.n_chunks) return Status::BadArgument;
  return for_each_decoded_chunk(tables, blob, n, [chunks](uint64_t i) { return chunks[i]; }, threads, direct_out,
                                before, per_chunk, nothing_after);
}

template <class T>
Status decode_split_chunks_impl(const uint8_t* blob, size_t len, const uint64_t* chunks, uint64_t n,
                                const uint32_t* values, uint32_t n_values, int top, const uint32_t* raw,
                                uint64_t n_raw_words, T* out, uint64_t out_len, int threads) {
  split::MergeTable<T> merge;
  const auto check = split_check(&merge, values, n_values, top, n_raw_words, out_len,
                                 [n](const StreamInfo& s) { return n * uint64_t(s.chunk_symbols); });
  const bool stream = stream_output<T>(out_len);
  return decode_listed_chunks(
      blob, len, chunks, n, threads, check, nullptr,
      [&](const DecodeTables& tables, uint64_t slot, uint32_t count) {
        for (uint32_t i = 0; i < count; ++i) prefetch_raw(tables, chunks[slot + i], 1, merge.low, raw, n_raw_words);
      },
      [&](const DecodeTables& tables, uint64_t slot, uint64_t c, const uint8_t* symbols) {
        return merge_chunk(tables, c, symbols, merge, raw, n_raw_words, out + slot * tables.info.chunk_symbols, stream);
      });
}

}  // namespace

Status decode_chunks(const uint8_t* blob, size_t len, const uint64_t* chunks, uint64_t n, uint8_t* out,
                     uint64_t out_len, int threads) {
  return decode_listed_chunks(
      blob, len, chunks, n, threads,
      [&](const StreamInfo& s) { return out_len == n * uint64_t(s.chunk_symbols) ? Status::Ok : Status::OutputSize; },
      out, nothing_before, [](const DecodeTables&, uint64_t, uint64_t, const uint8_t*) { return Status::Ok; });
}

Status decode_split_chunks(const uint8_t* blob, size_t len, const uint64_t* chunks, uint64_t n,
                           const uint32_t* values, uint32_t n_values, int top, const uint32_t* raw,
                           uint64_t n_raw_words, uint16_t* out, uint64_t out_len, int threads) {
  return decode_split_chunks_impl(blob, len, chunks, n, values, n_values, top, raw, n_raw_words, out, out_len,
                                  threads);
}

Status decode_split_chunks(const uint8_t* blob, size_t len, const uint64_t* chunks, uint64_t n,
                           const uint32_t* values, uint32_t n_values, int top, const uint32_t* raw,
                           uint64_t n_raw_words, uint32_t* out, uint64_t out_len, int threads) {
  return decode_split_chunks_impl(blob, len, chunks, n, values, n_values, top, raw, n_raw_words, out, out_len,
                                  threads);
}

Status decode(const uint8_t* blob, size_t len, uint8_t* out, uint64_t out_len, int threads) {
  return decode_stream(
      blob, len, threads, [&](const StreamInfo& s) { return out_len == s.n_symbols ? Status::Ok : Status::OutputSize; },
      out, nothing_before, [](const DecodeTables&, uint64_t, const uint8_t*) { return Status::Ok; });
}

namespace {

template <class T>
Status plan_split_impl(const T* bits, uint64_t n, split::Plan* plan, int threads, int forced_top) {
  const uint64_t blocks = std::max<uint64_t>(1, (n + kSplitBlock - 1) / kSplitBlock);
  const int t = resolve_threads(threads, blocks);
  std::vector<uint64_t> finest(size_t(t) * split::kCounters, 0);  // one histogram per worker
  for_each_chunk(blocks, t, [&](int worker, uint64_t b) {
    const uint64_t first = b * kSplitBlock;
    split::count_top_bits(bits + first, std::min(kSplitBlock, n - std::min(n, first)),
                          finest.data() + size_t(worker) * split::kCounters);
    return Status::Ok;
  });
  for (int w = 1; w < t; ++w)
    for (uint32_t v = 0; v < split::kCounters; ++v) finest[v] += finest[size_t(w) * split::kCounters + v];
  return split::plan_from_counts(finest.data(), 8 * int(sizeof(T)), n, plan, forced_top);
}

template <class T>
void apply_split_impl(const T* bits, uint64_t n, const split::Plan& plan, uint8_t* symbols, uint32_t* raw,
                      int threads) {
  const split::Numbering numbering(plan);
  for_each_chunk((n + kSplitBlock - 1) / kSplitBlock, threads, [&](int, uint64_t b) {
    const uint64_t first = b * kSplitBlock;
    split::apply_plan_span(bits, first, std::min(kSplitBlock, n - first), plan, numbering, symbols + first, raw);
    return Status::Ok;
  });
}

}  // namespace

struct StreamTables::Kept {
  std::vector<uint8_t> head;  // the stream's bytes before its payload, as opened
  size_t len;
  DecodeTables tables;
};

StreamTables::StreamTables() = default;
StreamTables::~StreamTables() = default;

struct StreamTablesAccess {
  // The tables of the stream at blob (header already parsed into s and checked): the kept ones
  // if its bytes before the payload are those they were built from, else built and kept.
  static Status tables_of(StreamTables& keep, const uint8_t* blob, size_t len, const StreamInfo& s,
                          std::shared_ptr<const StreamTables::Kept>* out) {
    {
      std::lock_guard<std::mutex> guard(keep.lock_);
      const auto& kept = keep.kept_;
      if (kept && kept->len == len && kept->head.size() == s.payload_offset &&
          std::memcmp(kept->head.data(), blob, s.payload_offset) == 0) {
        *out = kept;
        return Status::Ok;
      }
    }
    auto made = std::make_shared<StreamTables::Kept>();
    made->head.assign(blob, blob + s.payload_offset);
    made->len = len;
    const Status st = made->tables.build(blob, s);
    if (st != Status::Ok) return st;
    std::lock_guard<std::mutex> guard(keep.lock_);
    keep.kept_ = made;
    *out = std::move(made);
    return Status::Ok;
  }
};

Status affine_matvec(const uint8_t* blob_in, size_t len, const AffineMatvec& w, const float* x, uint32_t batch,
                     float* y, int threads, StreamTables* keep) {
  if (w.k == 0 || w.group_size == 0 || batch == 0) return Status::BadArgument;
  const AlignedBlob aligned(blob_in, len);
  const uint8_t* blob = aligned.data;
  const auto check = [&](const StreamInfo& s) {
    if (s.ndim != 2 || s.shape[0] != w.n || s.shape[1] != w.k) return Status::OutputSize;
    return s.chunk_symbols % w.k == 0 ? Status::Ok : Status::BadArgument;
  };
  DecodeTables own;
  std::shared_ptr<const StreamTables::Kept> kept;
  Status st;
  if (keep) {
    StreamInfo s;
    if ((st = parse_header(blob, len, &s)) == Status::Ok && (st = check(s)) == Status::Ok)
      st = StreamTablesAccess::tables_of(*keep, blob, len, s, &kept);
  } else {
    st = open_stream(blob, len, check, &own);
  }
  if (st != Status::Ok) return st;
  const DecodeTables& tables = kept ? kept->tables : own;
  // Escapes in ascending order, so that each chunk finds its own by a binary search: a copy,
  // sorted, if the caller's are not (a later duplicate wins, as in the whole-weight decode).
  std::vector<uint64_t> sorted_index;
  std::vector<float> sorted_value;
  const uint64_t* escape_index = w.escape_index;
  const float* escape_value = w.escape_value;
  bool ascending = true;
  for (uint64_t e = 0; e < w.n_escapes; ++e) {
    if (w.escape_index[e] >= tables.info.n_symbols) return Status::BadArgument;  // n x k: the stream's symbols
    ascending = ascending && (e == 0 || w.escape_index[e] >= w.escape_index[e - 1]);
  }
  if (!ascending) {
    std::vector<uint64_t> order(w.n_escapes);
    for (uint64_t e = 0; e < w.n_escapes; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(),
                     [&](uint64_t a, uint64_t b) { return w.escape_index[a] < w.escape_index[b]; });
    for (uint64_t e : order) sorted_index.push_back(w.escape_index[e]), sorted_value.push_back(w.escape_value[e]);
    escape_index = sorted_index.data();
    escape_value = sorted_value.data();
  }
  const uint64_t rows_per_chunk = tables.info.chunk_symbols / w.k, groups = (w.k + w.group_size - 1) / w.group_size;
  // One row of x and 64-weight blocks that each lie in one group: rows without escapes take
  // dequant::affine_dot (bit for bit the two-step result, without writing the row).
  const bool fused = batch == 1 && (groups == 1 || w.group_size % 64 == 0);
  // Element i of scale or zero in fp32: fp16 bits widen exactly.
  const auto widened = [&](const void* p, uint64_t i) {
    return w.half ? windowed::half_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
  };
  return for_each_decoded_chunk(tables, blob, tables.info.n_chunks, every_chunk, threads, nullptr, nothing_before,
                                [&](const DecodeTables&, uint64_t, uint64_t c, const uint8_t* symbols) {
    // Per worker: one row's fp32 weights, and its scales and zero points per group.
    thread_local std::vector<float> weights, row_scale, row_zero;
    const uint32_t m = tables.chunk_length(c);
    if (weights.size() < w.k) weights.resize(w.k);
    if (row_scale.size() < groups) row_scale.resize(groups), row_zero.resize(groups);
    const uint64_t first_row = c * rows_per_chunk;
    const uint64_t* escape = std::lower_bound(escape_index, escape_index + w.n_escapes, first_row * w.k);
    const uint64_t* const escapes_end = escape_index + w.n_escapes;
    for (uint64_t r = first_row; r < first_row + m / w.k; ++r) {
      for (uint64_t g = 0; g < groups; ++g) {
        row_scale[g] = widened(w.scale, r * groups + g);
        row_zero[g] = widened(w.zero, w.zero_broadcast ? 0 : r * groups + g);
      }
      if (fused && (escape == escapes_end || *escape >= (r + 1) * w.k)) {  // the same sums, one pass
        y[r] = dequant::affine_dot(symbols + (r - first_row) * w.k, w.k, row_scale.data(), row_zero.data(),
                                   w.group_size, x);
        continue;
      }
      dequant::affine_fp32(symbols + (r - first_row) * w.k, 1, w.k, row_scale.data(), row_zero.data(), w.group_size,
                           weights.data());
      for (; escape != escapes_end && *escape < (r + 1) * w.k; ++escape)
        weights[*escape - r * w.k] = escape_value[escape - escape_index];
      dequant::dot_batch(weights.data(), w.k, x, batch, y + r, w.n);
    }
    return Status::Ok;
  }, nothing_after);
}

Status plan_split(const uint16_t* bits, uint64_t n, split::Plan* plan, int threads, int forced_top) {
  return plan_split_impl(bits, n, plan, threads, forced_top);
}
Status plan_split(const uint32_t* bits, uint64_t n, split::Plan* plan, int threads, int forced_top) {
  return plan_split_impl(bits, n, plan, threads, forced_top);
}
void apply_split(const uint16_t* bits, uint64_t n, const split::Plan& plan, uint8_t* symbols, uint32_t* raw,
                 int threads) {
  apply_split_impl(bits, n, plan, symbols, raw, threads);
}
void apply_split(const uint32_t* bits, uint64_t n, const split::Plan& plan, uint8_t* symbols, uint32_t* raw,
                 int threads) {
  apply_split_impl(bits, n, plan, symbols, raw, threads);
}

Status decode_split(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values, int top,
                    const uint32_t* raw, uint64_t n_raw_words, uint16_t* out, uint64_t out_len, int threads) {
  return decode_split_impl(blob, len, values, n_values, top, raw, n_raw_words, out, out_len, threads);
}

Status decode_split(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values, int top,
                    const uint32_t* raw, uint64_t n_raw_words, uint32_t* out, uint64_t out_len, int threads) {
  return decode_split_impl(blob, len, values, n_values, top, raw, n_raw_words, out, out_len, threads);
}

static_assert(huffman::kTableSize == kDecodeTableEntries && rans::kProbScale == kDecodeTableEntries &&
                  windowed::kTableSize == kDecodeTableEntries,
              "the GPU path uploads one 4096-entry table for any coder");
static_assert(windowed::kMaxChunkSymbols == kMaxChunkSymbolsV2 && windowed::kSuperChunks == kSuperChunksV2,
              "format.h and windowed.h agree on the v2 index");

Status build_decode_table(const uint8_t* blob_in, size_t len, uint32_t table[kDecodeTableEntries],
                          uint8_t lengths[256], uint8_t counts[kDecodeTableEntries]) {
  const AlignedBlob aligned(blob_in, len);
  StreamInfo s;
  Status st = parse_header(aligned.data, len, &s);
  if (st != Status::Ok) return st;
  DecodeTables tables;
  if ((st = tables.build(aligned.data, s)) != Status::Ok) return st;
  const uint32_t* src = tables.multi ? tables.multi->entry : tables.huffman ? tables.huffman.get() : tables.rans.get();
  std::memcpy(table, src, kDecodeTableEntries * sizeof(uint32_t));
  huffman::Code code;
  const bool huff = s.coder == Coder::Huffman &&
                    huffman::read_table(aligned.data + s.table_offset, s.table_bytes, code) == Status::Ok;
  if (lengths) {
    std::memset(lengths, 0, 256);
    if (huff && !code.constant) std::memcpy(lengths, code.length, 256);
  }
  if (counts) {
    std::memset(counts, 0, kDecodeTableEntries);
    if (huff) windowed::build_count_table(code, counts);
  }
  return Status::Ok;
}

uint64_t side_bits(const uint8_t* blob, const StreamInfo& s) {
  (void)blob;
  uint64_t bytes = s.payload_offset;  // header, table, padding, index
  if (s.coder == Coder::Rans) bytes += uint64_t(s.n_chunks) * kLanes * sizeof(uint32_t);
  return 8 * bytes;
}

namespace {

// histogram() and lane_starts(): a whole-stream decode that keeps only per-chunk results.
template <class Check>
Status histogram_and_starts(const uint8_t* blob, size_t len, uint64_t counts[256], int threads, Check check,
                            uint8_t* lane_starts) {
  // Each chunk's counts go straight into one histogram: a histogram per chunk (2 KiB) let a
  // valid stream of one-symbol chunks (~2.25 bytes of blob each) allocate ~900x its size.
  std::array<std::atomic<uint64_t>, 256> total;
  for (auto& t : total) t.store(0, std::memory_order_relaxed);
  const Status st = decode_stream(
      blob, len, threads, check, nullptr, nothing_before,
      [&](const DecodeTables& tables, uint64_t c, const uint8_t* symbols) {
        uint64_t chunk_counts[256];
        count_block(symbols, tables.chunk_length(c), chunk_counts);
        for (int k = 0; k < 256; ++k)
          if (chunk_counts[k]) total[k].fetch_add(chunk_counts[k], std::memory_order_relaxed);
        return Status::Ok;
      },
      lane_starts);
  if (st != Status::Ok) return st;
  for (int k = 0; k < 256; ++k) counts[k] = total[k].load(std::memory_order_relaxed);
  return Status::Ok;
}

}  // namespace

Status histogram(const uint8_t* blob, size_t len, uint64_t counts[256], int threads) {
  return histogram_and_starts(blob, len, counts, threads, [](const StreamInfo&) { return Status::Ok; }, nullptr);
}

uint64_t lane_start_count(const StreamInfo& s) {
  return s.version == 2 && s.coder == Coder::Huffman ? s.n_chunks * s.lanes : 0;
}

Status lane_starts(const uint8_t* blob, size_t len, uint8_t* out, uint64_t out_len, uint64_t counts[256],
                   int threads) {
  return histogram_and_starts(
      blob, len, counts, threads,
      [&](const StreamInfo& s) { return out_len == lane_start_count(s) ? Status::Ok : Status::OutputSize; },
      out_len ? out : nullptr);
}

}  // namespace pycodec
