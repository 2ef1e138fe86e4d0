// pycodec codec core: a CPU emulation of the windowed GEMV kernels (csrc/cuda/windowed_cuda.cu).
//
// The kernels' lane code lives in windowed_gemv.h; this header replaces only their warp glue:
// pass 1 (window counts) for every lane, the clamped prefix sum a warp takes with shuffles,
// pass 2 per lane into its sink, and the butterfly reduction of the per-warp slots. Lanes run
// one after another; nothing they do depends on another lane except through those three steps,
// so the emulation computes what the GPU computes, bit for bit (fmaf is IEEE on both).
// Host only: tests and the reference for GPU runs.
#pragma once

#include <vector>

#include "windowed.h"
#include "windowed_gemv.h"

namespace pycodec {
namespace windowed {

// Lane starts of one chunk: pass 1 and the clamped running sum (starts[lanes] = m).
template <class Entry>
inline void lane_starts(const ChunkView& v, uint32_t lanes, const Entry* table, const uint8_t* lengths,
                        uint32_t starts[kMaxLanes + 1]) {
  const uint64_t window = lane_window_bits(v.n_words, lanes);
  starts[0] = 0;
  for (uint32_t l = 0; l + 1 < lanes; ++l) {
    LaneReader r;
    r.init(v.words, v.n_words, l * window);
    NullSink null;
    uint32_t used;
    const uint32_t count = decode_window(table, lengths, r, uint32_t(window), null, &used);
    starts[l + 1] = next_lane_start(starts[l], count, v.m);
  }
  starts[lanes] = v.m;
}

template <int B, template <int> class Sink, class Args, class Entry>
inline void emulate_gemv(const StreamView& s, const Entry* table, const uint8_t* lengths, const Args& a) {
  std::vector<float> slots;
  for (uint64_t c = 0; c < s.n_chunks; ++c) {
    const ChunkView v = chunk_view(s, c);
    const uint32_t rows = v.m / a.k, first_row = uint32_t(v.first / a.k);
    slots.assign(size_t(rows) * B * 32, 0.f);
    uint32_t starts[kMaxLanes + 1];
    lane_starts(v, s.lanes, table, lengths, starts);
    const uint64_t window = lane_window_bits(v.n_words, s.lanes);
    for (uint32_t l = 0; l < s.lanes; ++l) {
      Sink<B> sink;
      sink.begin(a, slots.data(), l, v, starts[l]);
      LaneReader r;
      r.init(v.words, v.n_words, l * window);
      decode_count(table, lengths, r, starts[l + 1] - starts[l], sink);
      sink.finish();
    }
    for (uint32_t row = 0; row < rows; ++row)
      for (int b = 0; b < B; ++b) {
        float lane_values[32];
        for (int l = 0; l < 32; ++l) lane_values[l] = slots[(row * B + b) * 32 + l];
        a.y[size_t(b) * a.n_rows + first_row + row] = butterfly_sum(lane_values);
      }
  }
}

}  // namespace windowed
}  // namespace pycodec
