// What nestad's C interfaces share (kernels/c_api.cc for the CPU loops,
// kernels/cuda/c_api_gpu.cc for the CUDA kernels; nestad_tf/frameworks calls
// both with ctypes): the dtype codes, the error convention and the checks of an
// activation and a derivative format, by the same functions as the TF ops.
//
// Every C function returns 0, or 1 after writing what is wrong (NUL-terminated,
// at most error_size bytes) to `error`.
#ifndef NESTAD_KERNELS_C_API_UTIL_H_
#define NESTAD_KERNELS_C_API_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fused_activation.h"
#include "storage.h"

#define NESTAD_C_API extern "C" __attribute__((visibility("default")))

namespace nestad {
namespace c_api {

// The `dtype` argument: the element type of every tensor of a call.
constexpr int kDtypeFloat16 = 0;
constexpr int kDtypeBfloat16 = 1;
constexpr int kDtypeFloat32 = 2;
constexpr int kDtypeFloat64 = 3;
constexpr const char kBadDtype[] = "dtype must be float16, bfloat16, float32 or float64";

inline int Fail(const std::string& message, char* error, int64_t error_size) {
  if (error != nullptr && error_size > 0) {
    const size_t n = std::min<size_t>(message.size(), static_cast<size_t>(error_size - 1));
    std::memcpy(error, message.data(), n);
    error[n] = '\0';
  }
  return 1;
}

// Validates an activation and its parameters; "" or what is wrong.
inline std::string Resolve(const char* activation, const float* params, int num_params,
                           Kind* kind, std::vector<float>* values) {
  if (activation == nullptr || num_params < 0) return "no activation name";
  values->assign(params, params + num_params);
  return ResolveActivation(activation, *values, kind);
}

// Validates a derivative format (storage.h's quantizer); "" or what is wrong.
inline std::string Quantize(const char* format, int bits, const float* breakpoints,
                            int num_breakpoints, const float* levels, int num_levels,
                            const float* range, int num_range, Quantizer* q) {
  if (format == nullptr || num_breakpoints < 0 || num_levels < 0 || num_range < 0) {
    return "no derivative format";
  }
  return MakeQuantizer(format, bits, {breakpoints, breakpoints + num_breakpoints},
                       {levels, levels + num_levels}, {range, range + num_range}, q);
}

}  // namespace c_api
}  // namespace nestad

#endif  // NESTAD_KERNELS_C_API_UTIL_H_
