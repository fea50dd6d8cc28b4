// What the GPU OpKernels of nestad share (the TF glue, compiled by g++ with
// -DGOOGLE_CUDA=1 and EIGEN_USE_GPU defined before any TF header): the element
// type of a TF type, the op's CUDA stream, and launch errors as a Status.
#ifndef NESTAD_KERNELS_CUDA_GPU_OP_UTIL_H_
#define NESTAD_KERNELS_CUDA_GPU_OP_UTIL_H_

#ifndef EIGEN_USE_GPU
#error "define EIGEN_USE_GPU before including gpu_op_util.h (and any TensorFlow header)"
#endif

#include <string>

#include "fused_activation_gpu.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace nestad {

template <typename S> constexpr gpu::ElementType kElementType = gpu::ElementType::kFloat32;
template <> constexpr gpu::ElementType kElementType<Eigen::half> = gpu::ElementType::kFloat16;
template <> constexpr gpu::ElementType kElementType<Eigen::bfloat16> = gpu::ElementType::kBFloat16;
template <> constexpr gpu::ElementType kElementType<double> = gpu::ElementType::kFloat64;

inline CUstream_st* OpStream(tensorflow::OpKernelContext* ctx) {
  return ctx->eigen_device<Eigen::GpuDevice>().stream();
}

// OK, or InternalError naming the op when a launcher returned an error.
inline absl::Status LaunchStatus(const char* op_name, const char* error) {
  if (error == nullptr) return absl::OkStatus();
  return absl::InternalError(std::string(op_name) + " GPU launch: " + error);
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_CUDA_GPU_OP_UTIL_H_
