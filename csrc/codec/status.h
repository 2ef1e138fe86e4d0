// pycodec codec core: the one definition of error codes.
//
// The core never throws and never aborts on bad input: every entry point returns
// a Status, and the Python boundary turns a non-Ok Status into pycodec.CodecError
// with the message from status_message(). Host and device code share this header.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PYCODEC_HD __host__ __device__ __forceinline__
#else
#define PYCODEC_HD inline
#endif

namespace pycodec {

enum class Status : int32_t {
  Ok = 0,
  Truncated,            // blob shorter than its header says
  TrailingBytes,        // blob longer than its header says
  BadMagic,             // not a pycodec stream
  BadVersion,           // a format version this build cannot read
  BadHeader,            // header fields out of range or inconsistent
  HeaderChecksum,       // header/table/index bytes were altered
  BadTable,             // code lengths or frequencies do not form a valid code
  BadIndex,             // chunk offsets not monotone or outside the payload
  CorruptPayload,       // a chunk read past its end or did not end where it should
  ChecksumMismatch,     // decoded symbols differ from the ones encoded
  BadArgument,          // caller passed an invalid parameter (size, chunk length, coder)
  TooLarge,             // a size the format cannot represent
  OutputSize,           // caller's output buffer has the wrong size
  CudaError,            // the CUDA runtime failed (cuda::last_error_string() says how)
};

inline const char* status_message(Status s) {
  switch (s) {
    case Status::Ok: return "ok";
    case Status::Truncated: return "blob is truncated: it is shorter than its header declares";
    case Status::TrailingBytes: return "blob is longer than its header declares (trailing bytes)";
    case Status::BadMagic: return "not a pycodec stream (bad magic bytes)";
    case Status::BadVersion: return "unsupported pycodec stream version";
    case Status::BadHeader: return "header fields are out of range or inconsistent";
    case Status::HeaderChecksum: return "header checksum mismatch: header, table or chunk index was altered";
    case Status::BadTable: return "coding table is invalid (code lengths or frequencies do not form a complete code)";
    case Status::BadIndex: return "chunk index is invalid (offsets not monotone or outside the payload)";
    case Status::CorruptPayload: return "payload is corrupt: a chunk's bitstream does not decode to its declared length";
    case Status::ChecksumMismatch: return "checksum mismatch: decoded symbols differ from the encoded ones";
    case Status::BadArgument: return "invalid argument";
    case Status::TooLarge: return "input is too large for the stream format";
    case Status::OutputSize: return "output buffer size does not match the stream's symbol count";
    case Status::CudaError: return "CUDA error";
  }
  return "unknown error";
}

}  // namespace pycodec
