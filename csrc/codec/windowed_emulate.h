// pycodec codec core: a CPU emulation of the windowed GEMV kernels (csrc/cuda/windowed_cuda.cu).
//
// The kernels' lane code lives in windowed_gemv.h; this header replaces only their warp glue:
// pass 1 (window counts) for every lane, the prefix sum a warp takes with shuffles, pass 2 per
// lane into its sink, and the butterfly reduction of the per-warp slots. Lanes run one after
// another; nothing they do depends on another lane except through those steps, so the
// emulation computes what the GPU computes, bit for bit (fmaf is IEEE on both). Its buffers
// need the same kSlackWords of readable slack as the kernels'.
// Host only: tests and the reference for GPU runs.
#pragma once

#include <vector>

#include "windowed.h"
#include "windowed_gemv.h"

namespace pycodec {
namespace windowed {

// The warp of one chunk, lane after lane: pass 1, the scan (a running sum), pass 2 into sinks,
// the butterfly over the slots. Returns false if a lane overran its window (corrupt chunk).
template <int B, template <int> class Sink, class Args, class Entry>
inline bool emulate_chunk(const StreamView& s, uint64_t c, const uint8_t* count, const Entry* table,
                          const uint8_t* lengths, const Args& a, std::vector<float>& slots) {
  const ChunkView v = chunk_view(s, c);
  const uint32_t rows = v.m / a.k, first_row = uint32_t(v.first / a.k);
  slots.assign(size_t(rows) * B * 32, 0.f);
  uint32_t counts[kMaxLanes] = {0};
  for (uint32_t l = 0; l < s.lanes; ++l) counts[l] = lane_window_count(v, s, count, table, lengths, l);
  const uint64_t window = lane_window_bits(v.n_words, s.lanes);
  bool ok = true;
  uint32_t before = 0;
  for (uint32_t l = 0; l < uint32_t(kMaxLanes); ++l) {
    const uint32_t through = before + (l + 1 < s.lanes ? counts[l] : 0);
    const LaneRange r = lane_range(l, s.lanes, v.m, counts[l], before, through);
    before = through;
    ok &= !r.overrun;
    if (l >= s.lanes) continue;
    Sink<B> sink;
    sink.begin(a, slots.data(), l, v, r.start);
    FastReader reader;
    reader.init(v.words, 0, l * window);
    gemv_lane(table, lengths, reader, r.count, sink);
  }
  for (uint32_t row = 0; row < rows; ++row)
    for (int b = 0; b < B; ++b) {
      float lane_values[32];
      for (int l = 0; l < 32; ++l) lane_values[l] = slots[(row * B + b) * 32 + l];
      a.y[size_t(b) * a.n_rows + first_row + row] = with_escapes<B>(a, first_row + row, b, butterfly_sum(lane_values));
    }
  return ok;
}

// The decode kernel's warp for one chunk: symbols into out (the tensor's first symbol), through
// the multi-symbol table. Returns false if a lane overran its window.
inline bool emulate_decode_chunk(const StreamView& s, uint64_t c, const uint8_t* count, const uint32_t* table,
                                 const uint8_t* lengths, uint8_t* out) {
  const ChunkView v = chunk_view(s, c);
  uint32_t counts[kMaxLanes] = {0};
  for (uint32_t l = 0; l < s.lanes; ++l) counts[l] = lane_window_count(v, s, count, table, lengths, l);
  const uint64_t window = lane_window_bits(v.n_words, s.lanes);
  bool ok = true;
  uint32_t before = 0;
  for (uint32_t l = 0; l < s.lanes; ++l) {
    const uint32_t through = before + (l + 1 < s.lanes ? counts[l] : 0);
    const LaneRange r = lane_range(l, s.lanes, v.m, counts[l], before, through);
    before = through;
    ok &= !r.overrun;
    FastReader reader;
    reader.init(v.words, 0, l * window);
    ByteSink sink{out + v.first + r.start, r.count};
    decode_count(table, lengths, reader, r.count, sink);
  }
  return ok;
}

template <int B, template <int> class Sink, class Args, class Entry>
inline bool emulate_gemv(const StreamView& s, const uint8_t* count, const Entry* table, const uint8_t* lengths,
                         const Args& a) {
  std::vector<float> slots;
  bool ok = true;
  for (uint64_t c = 0; c < s.n_chunks; ++c) ok &= emulate_chunk<B, Sink>(s, c, count, table, lengths, a, slots);
  return ok;
}

}  // namespace windowed
}  // namespace pycodec
