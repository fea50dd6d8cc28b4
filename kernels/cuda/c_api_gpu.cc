// A C interface to nestad's CUDA kernels, for frameworks other than TensorFlow
// (Keras 3 on torch: nestad_tf/frameworks/torch_backend.py calls it with ctypes
// on CUDA tensors' memory, on torch's current stream). The same launchers
// (fused_activation_gpu.h) as the TF GPU ops and the XLA:GPU handlers, with the
// checks of kernels/c_api.cc (c_api_util.h), so f' and its codes are the same.
//
// Built by setup.py into the TF-free nestad_tf/_nestad_cuda.so together with
// kernels/cuda/*.cu and the XLA:GPU handlers (xla_gpu_ffi.cc, for JAX); host
// C++ compiled by nvcc, for the CUDA runtime's headers.
//
// Every function returns 0, or 1 after writing what is wrong to `error`.
// Tensors are device arrays of n elements of `dtype` (c_api_util.h's codes) on
// CUDA device `device`; the kernels are enqueued on `stream` (a cudaStream_t;
// null: the legacy default stream) and run asynchronously, like the caller's
// own kernels on that stream.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../c_api_util.h"
#include "fused_activation_gpu.h"

namespace nestad {
namespace {

using c_api::Fail;

bool ElementTypeOf(int dtype, gpu::ElementType* type) {
  switch (dtype) {
    case c_api::kDtypeFloat16:
      *type = gpu::ElementType::kFloat16;
      return true;
    case c_api::kDtypeBfloat16:
      *type = gpu::ElementType::kBFloat16;
      return true;
    case c_api::kDtypeFloat32:
      *type = gpu::ElementType::kFloat32;
      return true;
    case c_api::kDtypeFloat64:
      *type = gpu::ElementType::kFloat64;
      return true;
    default:
      return false;
  }
}

// Every entry point: 1 and the message if the checks found something wrong
// (`checked` non-empty) or dtype is unknown; else launch(type) with `device` as
// the calling thread's current device (the previous one restored after), and 1
// and its message if it returned one, else 0.
template <typename Launch>
int Run(const std::string& checked, int dtype, int device, char* error, int64_t error_size,
        Launch launch) {
  if (!checked.empty()) return Fail(checked, error, error_size);
  gpu::ElementType type;
  if (!ElementTypeOf(dtype, &type)) return Fail(c_api::kBadDtype, error, error_size);
  int previous = -1;
  cudaError_t status = cudaGetDevice(&previous);
  if (status == cudaSuccess && previous != device) status = cudaSetDevice(device);
  if (status != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it for the caller's runtime
    return Fail(std::string("CUDA device ") + std::to_string(device) + ": " +
                    cudaGetErrorString(status),
                error, error_size);
  }
  const char* launch_error = launch(type);
  if (previous != device) cudaSetDevice(previous);
  return launch_error == nullptr ? 0 : Fail(launch_error, error, error_size);
}

CUstream_st* AsStream(void* stream) { return static_cast<CUstream_st*>(stream); }

// The forward entry points: the activation checked, then `quantizer_error` (the
// checks of the quantizer, if any), then LaunchFusedForward keeping f' as `storage` says.
int Forward(const char* activation, const float* params, int num_params, int dtype,
            gpu::DerivativeStorage storage, const std::string& quantizer_error,
            const Quantizer* quantizer, const void* x, void* y, void* derivative, int64_t n,
            int device, void* stream, char* error, int64_t error_size) {
  gpu::ForwardArgs args;
  std::vector<float> values;
  std::string e = c_api::Resolve(activation, params, num_params, &args.kind, &values);
  if (e.empty()) e = quantizer_error;
  return Run(e, dtype, device, error, error_size, [&](gpu::ElementType type) {
    args = {args.kind, values.data(), type, storage, n, x, y, derivative, quantizer};
    return gpu::LaunchFusedForward(args, AsStream(stream));
  });
}

}  // namespace
}  // namespace nestad

// 0 when the CUDA runtime linked into this library sees a device it can use, else 1
// and why not (no device, no driver, or a driver older than this runtime needs).
NESTAD_C_API int nestad_cuda_device_error(char* error, int64_t error_size) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return nestad::c_api::Fail(cudaGetErrorString(status), error, error_size);
  }
  return count > 0 ? 0 : nestad::c_api::Fail("no CUDA device", error, error_size);
}

// y = f(x), d = f'(x) (FusedActivation).
NESTAD_C_API int nestad_cuda_fused_forward(const char* activation, const float* params,
                                           int num_params, int dtype, const void* x, void* y,
                                           void* d, int64_t n, int device, void* stream,
                                           char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  return Forward(activation, params, num_params, dtype, gpu::DerivativeStorage::kExact, "",
                 nullptr, x, y, d, n, device, stream, error, error_size);
}

// dx = dy * d (FusedActivationGrad).
NESTAD_C_API int nestad_cuda_fused_backward(int dtype, const void* dy, const void* d, void* dx,
                                            int64_t n, int device, void* stream, char* error,
                                            int64_t error_size) {
  using namespace nestad;  // NOLINT
  return Run("", dtype, device, error, error_size, [&](gpu::ElementType type) {
    gpu::BackwardArgs args{type, gpu::DerivativeStorage::kExact, n, dy, d, dx};
    return gpu::LaunchFusedBackward(args, AsStream(stream));
  });
}

// y = f(x) alone (ActivationForward).
NESTAD_C_API int nestad_cuda_forward_only(const char* activation, const float* params,
                                          int num_params, int dtype, const void* x, void* y,
                                          int64_t n, int device, void* stream, char* error,
                                          int64_t error_size) {
  using namespace nestad;  // NOLINT
  return Forward(activation, params, num_params, dtype, gpu::DerivativeStorage::kFromOutput, "",
                 nullptr, x, y, nullptr, n, device, stream, error, error_size);
}

// dx = dy * f'(x), f' recomputed from y (ActivationGradFromOutput).
NESTAD_C_API int nestad_cuda_backward_from_output(const char* activation, const float* params,
                                                  int num_params, int dtype, const void* dy,
                                                  const void* y, void* dx, int64_t n, int device,
                                                  void* stream, char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  Kind kind;
  std::vector<float> values;
  std::string e = c_api::Resolve(activation, params, num_params, &kind, &values);
  if (e.empty()) e = DerivativeFromOutputError(kind, values.data());
  return Run(e, dtype, device, error, error_size, [&](gpu::ElementType type) {
    gpu::BackwardArgs args{type, gpu::DerivativeStorage::kFromOutput, n, dy, y, dx,
                           kind, values.data()};
    return gpu::LaunchFusedBackward(args, AsStream(stream));
  });
}

// y = f(x), f'(x) packed into PackedBytes(n, bits) codes (FusedActivationQuantized);
// the codes are device memory, laid out as the CPU kernels lay them out.
NESTAD_C_API int nestad_cuda_quantized_forward(
    const char* activation, const float* params, int num_params, const char* format, int bits,
    const float* breakpoints, int num_breakpoints, const float* levels, int num_levels,
    const float* range, int num_range, int dtype, const void* x, void* y, void* code, int64_t n,
    int device, void* stream, char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  Quantizer q;
  const std::string quantizer_error = c_api::Quantize(
      format, bits, breakpoints, num_breakpoints, levels, num_levels, range, num_range, &q);
  return Forward(activation, params, num_params, dtype, gpu::DerivativeStorage::kQuantized,
                 quantizer_error, &q, x, y, code, n, device, stream, error, error_size);
}

// dx = dy * f'(x), f' decoded from the packed codes (ActivationGradQuantized).
NESTAD_C_API int nestad_cuda_quantized_backward(const char* format, int bits,
                                                const float* breakpoints, int num_breakpoints,
                                                const float* levels, int num_levels,
                                                const float* range, int num_range, int dtype,
                                                const void* dy, const void* code, void* dx,
                                                int64_t n, int device, void* stream, char* error,
                                                int64_t error_size) {
  using namespace nestad;  // NOLINT
  Quantizer q;
  std::string e = c_api::Quantize(format, bits, breakpoints, num_breakpoints, levels, num_levels,
                                  range, num_range, &q);
  return Run(e, dtype, device, error, error_size, [&](gpu::ElementType type) {
    gpu::BackwardArgs args{type, gpu::DerivativeStorage::kQuantized, n, dy, code, dx};
    args.quantizer = &q;  // host memory: the launch copies it into the kernel's arguments
    return gpu::LaunchFusedBackward(args, AsStream(stream));
  });
}
