// pycodec codec core: whole-stream encode / decode (the simple calls).
//
// Layers, simplest first:
//   encode() / decode()            whole streams, memory owned by std::vector / caller
//   parse_header() (format.h)      validate a blob and learn its sizes without decoding
//   huffman:: / rans:: chunk calls symbol-level primitives shared with the CUDA kernels
//
// Memory: decode() writes exactly info.n_symbols bytes into the caller's buffer and
// allocates only its decode table (<= 16 KiB) and one hash per chunk.
// Threads: chunks are independent, so encode and decode split them across `threads`
// threads (0 = hardware concurrency, or the host's count: set_host_openmp): pycodec's own, or
// the team of the host's OpenMP runtime. Output is identical for any thread count and either kind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "format.h"
#include "status.h"

namespace pycodec {
namespace split {
struct Plan;
}

// Version-1 defaults keep per-chunk overhead under about 1% of the coded size at 3-4 bits
// per symbol (docs/FORMAT.md has the arithmetic): rANS pays 32 x 32-bit lane states and an
// index entry per 65536 symbols (~0.45%); v1 Huffman pays an index entry and the zero
// padding of 32 lane tails per 32768 symbols (~0.8%). Version 2 (windowed Huffman) picks
// its chunk and lane count per tensor (windowed::choose_layout).
constexpr uint32_t kDefaultHuffmanChunk = 1u << 15;
constexpr uint32_t kDefaultRansChunk = 1u << 16;

// The host process's OpenMP runtime, by its GNU ABI entry points (libgomp's; LLVM's and
// Intel's runtimes export them too). torch runs its CPU ops on such a team, whose threads spin
// for a while after each parallel op: with as many threads as cores, pycodec's own workers
// would then share the cores with spinning threads (a CPU forward interleaves torch ops with
// pycodec calls: on 2 cores a token took 0.10 s on own threads, 0.06 s on torch's team).
// Installed, every parallel call of this process runs on the host's team instead, the caller
// as thread 0; after fork() a child uses its own threads again (libgomp's pool is the parent's).
// With max_threads, a call that leaves its thread count open (threads = 0) takes the host's
// (torch.set_num_threads sets it) instead of every core: a process limited to one thread by
// its host stays on one.
struct HostOpenMP {
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);  // GOMP_parallel
  int (*thread_num)();                                                                    // omp_get_thread_num
  int (*max_threads)() = nullptr;                                                         // omp_get_max_threads
};
// parallel and thread_num both set: use that runtime; both null: pycodec's own threads again
// (max_threads ignored). Returns false (and changes nothing) when only one is set.
bool set_host_openmp(HostOpenMP runtime);
// True when parallel calls of this process run on a host OpenMP team.
bool host_openmp_active();
// The threads a call that leaves its count open (threads = 0) may use: the host team's count
// (HostOpenMP::max_threads) when one is installed with it, else every core.
int default_threads();

// Lossless split decodes (decode_split, decode_split_chunks) whose output has at least this many
// bytes write it by streaming stores, where the CPU's vector merge runs: such an output would
// evict itself from the cache anyway, and a plain store first reads every line it fills.
// Default: half the last-level cache (16 MiB where the system does not say). 0 streams every
// output, UINT64_MAX none (the tests run both). Returns the previous setting.
uint64_t set_streaming_output_bytes(uint64_t bytes);
uint64_t streaming_output_bytes();

struct EncodeOptions {
  Coder coder = Coder::Huffman;
  uint32_t chunk_symbols = 0;   // 0 = choose (v2: layout policy; v1: the coder default)
  uint32_t lanes = 0;           // v2 only: bit windows per chunk, 1..32; 0 = choose
  int threads = 0;              // 0 = hardware concurrency
  uint16_t format_version = 0;  // 0 = the newest the coder has: Huffman 2, rANS 1
  int split_top = 0;            // encode_split only: 0 = the smallest split, split::kByteSplitTop = the byte split
};

Status encode(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
              std::vector<uint8_t>* blob);
// The same, into memory of the caller's: allocate(bytes) is called once, after the chunks are
// coded, and returns where the stream goes (null: TooLarge); the stream is written there only.
Status encode(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
              const std::function<uint8_t*(size_t)>& allocate);
// The size in bytes of the stream encode() would write, for a search over quantization steps:
// format v2 finds each chunk's words without writing its bits or its checksum (~1/3 of an
// encode's work); v1 encodes.
Status encoded_size(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
                    uint64_t* bytes);

Status decode(const uint8_t* blob, size_t len, uint8_t* out, uint64_t out_len, int threads = 0);

// Lossless mode's split (split.h) of n floats of 16 or 32 bits, in parallel over blocks of the
// tensor: plan_split counts their top bits and picks the plan; apply_split then writes the
// symbols (n bytes) and the raw low bits (split::raw_words(n, width - top) words).
// forced_top: 0 for the smallest split, split::kByteSplitTop for the byte split (split.h).
Status plan_split(const uint16_t* bits, uint64_t n, split::Plan* plan, int threads = 0, int forced_top = 0);
Status plan_split(const uint32_t* bits, uint64_t n, split::Plan* plan, int threads = 0, int forced_top = 0);
void apply_split(const uint16_t* bits, uint64_t n, const split::Plan& plan, uint8_t* symbols, uint32_t* raw,
                 int threads = 0);
void apply_split(const uint32_t* bits, uint64_t n, const split::Plan& plan, uint8_t* symbols, uint32_t* raw,
                 int threads = 0);

// plan_split, apply_split and encode() of the symbols in one call, to the same plan, raw words
// and stream. The symbols are never written whole nor counted again: each chunk's are split in a
// per-thread buffer as it is coded (when chunks start on a raw word: chunk_symbols x raw bits % 32 == 0;
// otherwise the tensor is split first), and the code is built from the planning's count.
// allocate_raw(words) is called once the plan is known and returns where the raw words go
// (null: TooLarge, unless zero words); allocate as for encode().
Status encode_split(const uint16_t* bits, const uint64_t* shape, int ndim, const EncodeOptions& opt,
                    split::Plan* plan, const std::function<uint32_t*(size_t)>& allocate_raw,
                    const std::function<uint8_t*(size_t)>& allocate);
Status encode_split(const uint32_t* bits, const uint64_t* shape, int ndim, const EncodeOptions& opt,
                    split::Plan* plan, const std::function<uint32_t*(size_t)>& allocate_raw,
                    const std::function<uint8_t*(size_t)>& allocate);

// A lossless split weight (split.h) straight to its float bits: each chunk's symbols are
// decoded into a per-thread buffer and merged with their raw bits while in cache, so the
// symbols never go through memory. Checksums and symbols are verified as by decode();
// BadArgument for values, top or raw bits that do not fit the stream.
Status decode_split(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values, int top,
                    const uint32_t* raw, uint64_t n_raw_words, uint16_t* out, uint64_t out_len, int threads = 0);
Status decode_split(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values, int top,
                    const uint32_t* raw, uint64_t n_raw_words, uint32_t* out, uint64_t out_len, int threads = 0);

// The symbols of chosen chunks only: a row gather (an embedding lookup) decodes the chunks
// that hold its rows, not the table. Chunk chunks[i] lands at out + i * chunk_symbols (a
// stream's last chunk may be shorter: the rest of its slot is left as it was). The stream's
// checksum covers all of its symbols and cannot be checked on a part: each chunk read here is
// bounds-checked as decode() checks it (a checkpoint's tensor checksums vouch for its bytes,
// pycodec/hub.py; a stream with none is decoded whole once at load).
// OutputSize unless out_len == n * chunk_symbols; BadArgument for a chunk id past the end.
Status decode_chunks(const uint8_t* blob, size_t len, const uint64_t* chunks, uint64_t n, uint8_t* out,
                     uint64_t out_len, int threads = 0);

// decode_chunks of a lossless split weight, merged with its raw bits: float bits as by
// decode_split, chunk chunks[i]'s values at out + i * chunk_symbols.
Status decode_split_chunks(const uint8_t* blob, size_t len, const uint64_t* chunks, uint64_t n,
                           const uint32_t* values, uint32_t n_values, int top, const uint32_t* raw,
                           uint64_t n_raw_words, uint16_t* out, uint64_t out_len, int threads = 0);
Status decode_split_chunks(const uint8_t* blob, size_t len, const uint64_t* chunks, uint64_t n,
                           const uint32_t* values, uint32_t n_values, int top, const uint32_t* raw,
                           uint64_t n_raw_words, uint32_t* out, uint64_t out_len, int threads = 0);

// Rate mode's row statistics of a [rows, k] fp32 matrix (quantize.h, row_median_mad): each row's
// lower median and lower median absolute deviation. false (outputs unset) when any weight is a
// NaN or an infinity: the caller's reference path handles those.
bool row_median_mad(const float* w, uint64_t rows, uint64_t k, float* med, float* mad, int threads = 0);
// sum (a - b)^2 and sum a^2 over n floats in double (quantize.h, error_and_signal), in blocks
// summed in order: the same result on any number of threads.
void error_and_signal(const float* a, const float* b, uint64_t n, double* error, double* signal, int threads = 0);

// Bits of a stream outside its payload (header, table, chunk index) plus rANS lane states.
// Padding inside a Huffman payload is not counted here: inspect() measures it exactly as
// payload bits minus the sum of code lengths.
uint64_t side_bits(const uint8_t* blob, const StreamInfo& info);

// Every decoder goes through a 4096-entry uint32 table; this builds it for a validated
// stream so a GPU can receive it ready-made: v1 Huffman and rANS their per-symbol tables
// (huffman.h / rans.h), v2 the multi-symbol table (windowed.h). `lengths` (256 bytes) gets
// the Huffman code lengths and `counts` (4096 bytes) the count table of windowed.h (zeros for
// rANS); either may be null.
constexpr uint32_t kDecodeTableEntries = 4096;
Status build_decode_table(const uint8_t* blob, size_t len, uint32_t table[kDecodeTableEntries],
                          uint8_t lengths[256] = nullptr, uint8_t counts[kDecodeTableEntries] = nullptr);

// An affine weight (dequant.h) times activations, y = x w^T, without the weight in memory: each
// chunk's symbols are decoded into a per-thread buffer and its rows dequantized to fp32 there
// and multiplied by every row of x (dequant::dot_batch; with one row of x, rows without escapes
// dequantize inside the dot, dequant::affine_dot, to the same sums). The stream holds the n x k symbols
// in chunks of whole rows (the encoder's layouts do); like decode_chunks it bounds-checks every
// chunk but leaves the checksum to a whole-stream decode (at load).
struct AffineMatvec {
  uint64_t n, k, group_size;
  const void* scale;             // [n, groups] (groups = ceil(k / group_size))
  const void* zero;              // [n, groups], or one value for every group when zero_broadcast
  bool half;                     // scale and zero are fp16 bits (as packed weights store them), else fp32
  bool zero_broadcast;
  const uint64_t* escape_index;  // flat indices r * k + j of weights stored exactly (any order)
  const float* escape_value;
  uint64_t n_escapes;
};
// A stream's decode tables kept between calls: a CPU forward multiplies by the same streams
// every token, and building a layer's tables (~15 us) ran serially ahead of its parallel decode.
// Each call compares the stream's bytes before its payload (header, code table, chunk index:
// all the tables depend on) with those it kept, and opens the stream again if they differ, so
// a stream changed in place is never decoded with another's tables. Safe to share between
// threads; ~33 KiB and 8 bytes a chunk.
class StreamTables {
 public:
  StreamTables();
  ~StreamTables();
  struct Kept;  // codec.cpp

 private:
  friend struct StreamTablesAccess;
  std::mutex lock_;
  std::shared_ptr<const Kept> kept_;
};

// x: [batch, k] fp32; y: [batch, n] fp32. OutputSize for a stream that is not n x k;
// BadArgument for one not in whole rows per chunk, or an escape index outside the weight.
// keep: the stream's tables from an earlier call (StreamTables), or null.
Status affine_matvec(const uint8_t* blob, size_t len, const AffineMatvec& w, const float* x, uint32_t batch,
                     float* y, int threads = 0, StreamTables* keep = nullptr);

// The histogram of n symbols (not a stream): what encode() counts before building its code.
// threads as for encode (1 inside a worker: a nested call would start threads of its own).
void count_symbols(const uint8_t* symbols, uint64_t n, uint64_t counts[256], int threads = 1);

// Symbol histogram of a (validated) stream without materialising the symbols at once.
Status histogram(const uint8_t* blob, size_t len, uint64_t counts[256], int threads = 0);

// The lane start bytes of a v2 Huffman stream (windowed.h: one byte a lane, [n_chunks][lanes],
// each lane's count as a distance from m / lanes, or a chunk's escape), what the GPU kernels read
// instead of counting every lane's codes; none (0) for format v1.
uint64_t lane_start_count(const StreamInfo& info);
// histogram() that also writes the lane start bytes (out_len == lane_start_count, else
// OutputSize): the whole stream is decoded and verified, checksum included, so the bytes are
// those of a valid stream.
Status lane_starts(const uint8_t* blob, size_t len, uint8_t* out, uint64_t out_len, uint64_t counts[256],
                   int threads = 0);

}  // namespace pycodec
