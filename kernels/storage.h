// Compressed storage of f'(x) between the forward and the backward pass,
// TF-free so that CPU and CUDA kernels share it.
//
// The forward pass writes one code per element, packed in groups of 8
// elements into `bits` bytes (so any block of 8 elements starts on a byte);
// the backward pass decodes on the fly. Formats:
//   bfloat16  16 bits: f' rounded to bfloat16 (round to nearest even).
//   uniform8   8 bits: f' quantized over the activation's known range [lo, hi]
//                      with 254 steps (max error (hi - lo) / 508); 255 = NaN.
//   buckets    K bits: bucket of x among 2^K - 1 breakpoints (a piecewise-constant
//                      approximation of f', tables from tools/fewbit_tables.py).
//   levels   1-2 bits: exact, for piecewise-constant f': index of f' among at most
//                      2^K - 1 values; the last code means NaN.
#ifndef NESTAD_KERNELS_STORAGE_H_
#define NESTAD_KERNELS_STORAGE_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace nestad {

enum class QuantFormat : int { kBfloat16, kUniform8, kBuckets, kLevels };

constexpr int kGroup = 8;  // elements per packed group

// Bytes of packed codes for n elements.
NESTAD_HD int64_t PackedBytes(int64_t n, int bits) { return (n + kGroup - 1) / kGroup * bits; }

struct Quantizer {
  QuantFormat format = QuantFormat::kBfloat16;
  int bits = 16;
  float lo = 0.0f, scale = 1.0f;  // uniform8: code = round((d - lo) * scale)
  int num_breakpoints = 0;
  float breakpoints[15] = {};
  int num_levels = 0;
  float levels[4] = {};           // levels format: exact values of f'
  float decode[256] = {};         // every format but bfloat16: code -> f'

  template <typename C>
  NESTAD_HD uint32_t Encode(C x, C d) const {
    switch (format) {
      case QuantFormat::kBfloat16: {
        const float f = static_cast<float>(d);
        uint32_t u;
        memcpy(&u, &f, sizeof(u));
        if (f != f) return 0x7FC0u;
        return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
      }
      case QuantFormat::kUniform8: {
        const float v = (static_cast<float>(d) - lo) * scale + 0.5f;
        if (!(v == v)) return 255u;
        return static_cast<uint32_t>(Min(Max(v, 0.0f), 254.0f));
      }
      case QuantFormat::kBuckets: {
        const float xf = static_cast<float>(x);
        uint32_t code = 0;
        for (int i = 0; i < num_breakpoints; ++i) code += xf >= breakpoints[i] ? 1u : 0u;
        return code;
      }
      case QuantFormat::kLevels:
      default: {
        const float f = static_cast<float>(d);
        uint32_t code = (1u << bits) - 1u;  // NaN, or a value not in the list
        for (int i = num_levels - 1; i >= 0; --i) code = f == levels[i] ? uint32_t(i) : code;
        return code;
      }
    }
  }

  NESTAD_HD float Decode(uint32_t code) const {
    if (format == QuantFormat::kBfloat16) {
      const uint32_t u = code << 16;
      float f;
      memcpy(&f, &u, sizeof(f));
      return f;
    }
    return decode[code & 255u];
  }
};

// 8 codes of `bits` bits -> `bits` bytes (little-endian bit order).
NESTAD_HD void PackGroup(const uint32_t* codes, int bits, uint8_t* out) {
  if (bits == 16) {
    for (int i = 0; i < kGroup; ++i) {
      out[2 * i] = static_cast<uint8_t>(codes[i] & 0xFFu);
      out[2 * i + 1] = static_cast<uint8_t>(codes[i] >> 8);
    }
    return;
  }
  uint64_t acc = 0;
  for (int i = 0; i < kGroup; ++i) acc |= static_cast<uint64_t>(codes[i]) << (i * bits);
  for (int b = 0; b < bits; ++b) out[b] = static_cast<uint8_t>(acc >> (8 * b));
}

NESTAD_HD void UnpackGroup(const uint8_t* in, int bits, uint32_t* codes) {
  if (bits == 16) {
    for (int i = 0; i < kGroup; ++i) codes[i] = in[2 * i] | (uint32_t(in[2 * i + 1]) << 8);
    return;
  }
  uint64_t acc = 0;
  for (int b = 0; b < bits; ++b) acc |= static_cast<uint64_t>(in[b]) << (8 * b);
  const uint64_t mask = (uint64_t(1) << bits) - 1;
  for (int i = 0; i < kGroup; ++i) codes[i] = static_cast<uint32_t>((acc >> (i * bits)) & mask);
}

// Builds a Quantizer from the op attributes; returns "" or what is wrong.
inline std::string MakeQuantizer(const std::string& format, int bits,
                                 const std::vector<float>& breakpoints,
                                 const std::vector<float>& levels,
                                 const std::vector<float>& range, Quantizer* q) {
  q->bits = bits;
  if (format == "bfloat16") {
    q->format = QuantFormat::kBfloat16;
    return bits == 16 ? "" : "format 'bfloat16' needs bits = 16";
  }
  if (format == "uniform8") {
    q->format = QuantFormat::kUniform8;
    if (bits != 8) return "format 'uniform8' needs bits = 8";
    if (range.size() != 2 || !(range[0] < range[1]) || IsInf(range[0]) || IsInf(range[1]))
      return "format 'uniform8' needs range = [lo, hi] with finite lo < hi";
    q->lo = range[0];
    q->scale = 254.0f / (range[1] - range[0]);
    for (int c = 0; c < 255; ++c) q->decode[c] = range[0] + c / q->scale;
    q->decode[255] = NAN;
    return "";
  }
  if (format == "buckets") {
    q->format = QuantFormat::kBuckets;
    if (bits < 1 || bits > 4) return "format 'buckets' needs 1 <= bits <= 4";
    const size_t n = size_t(1) << bits;
    if (levels.size() != n || breakpoints.size() != n - 1)
      return "format 'buckets' with bits = " + std::to_string(bits) + " needs " +
             std::to_string(n) + " levels and " + std::to_string(n - 1) + " breakpoints";
    for (size_t i = 0; i + 1 < breakpoints.size(); ++i)
      if (!(breakpoints[i] < breakpoints[i + 1])) return "breakpoints must be strictly ascending";
    q->num_breakpoints = static_cast<int>(breakpoints.size());
    for (size_t i = 0; i < breakpoints.size(); ++i) q->breakpoints[i] = breakpoints[i];
    for (size_t i = 0; i < n; ++i) q->decode[i] = levels[i];
    return "";
  }
  if (format == "levels") {
    q->format = QuantFormat::kLevels;
    if (bits < 1 || bits > 2) return "format 'levels' needs bits = 1 or 2";
    const size_t codes = size_t(1) << bits;
    if (levels.empty() || levels.size() > codes - 1)
      return "format 'levels' with bits = " + std::to_string(bits) + " takes 1 to " +
             std::to_string(codes - 1) + " levels (the last code is NaN)";
    q->num_levels = static_cast<int>(levels.size());
    for (size_t i = 0; i < levels.size(); ++i) q->levels[i] = q->decode[i] = levels[i];
    for (size_t i = levels.size(); i < codes; ++i) q->decode[i] = NAN;
    return "";
  }
  return "unknown derivative format '" + format + "' (bfloat16, uniform8, buckets, levels)";
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_STORAGE_H_
