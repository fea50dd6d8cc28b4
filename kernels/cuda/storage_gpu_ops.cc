// GPU kernels of the storage-form ops ActivationForward, ActivationGradFromOutput,
// FusedActivationQuantized and ActivationGradQuantized (the ops themselves are
// registered by kernels/storage_ops.cc, in the CPU library, which is loaded
// first). Attributes and inputs are validated by the same code as on the CPU
// (kernels/op_util.h), so both devices give the same errors; the kernels
// (storage_gpu_kernels.cuh) are launched through fused_activation_gpu.h on the
// op's CUDA stream. The packed codes are the bytes the CPU kernel writes, so
// either device decodes the other's.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <string>
#include <vector>

#include "../fused_activation.h"
#include "../op_util.h"
#include "../storage.h"
#include "fused_activation_gpu.h"
#include "gpu_op_util.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"

namespace nestad {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

template <typename S>
class ActivationForwardGpuOp : public OpKernel {
 public:
  explicit ActivationForwardGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("ActivationForward")));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    gpu::ForwardArgs args{attrs_.kind, attrs_.params.data(), kElementType<S>,
                          gpu::DerivativeStorage::kFromOutput, x.NumElements(),
                          x.flat<S>().data(), y->flat<S>().data(), nullptr};
    OP_REQUIRES_OK(ctx, LaunchStatus(NESTAD_OP("ActivationForward"),
                                     gpu::LaunchFusedForward(args, OpStream(ctx))));
  }

 private:
  ActivationAttrs attrs_;
};

template <typename S>
class ActivationGradFromOutputGpuOp : public OpKernel {
 public:
  explicit ActivationGradFromOutputGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("ActivationGradFromOutput")));
    OP_REQUIRES_OK(ctx, CheckDerivativeFromOutput(NESTAD_OP("ActivationGradFromOutput"), attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& y = ctx->input(1);
    OP_REQUIRES_OK(ctx, SameShape(NESTAD_OP("ActivationGradFromOutput"), "dy", dy, "y", y));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, dy.shape(), &dx));
    gpu::BackwardArgs args{kElementType<S>,      gpu::DerivativeStorage::kFromOutput,
                           dy.NumElements(),     dy.flat<S>().data(),
                           y.flat<S>().data(),   dx->flat<S>().data(),
                           attrs_.kind,          attrs_.params.data()};
    OP_REQUIRES_OK(ctx, LaunchStatus(NESTAD_OP("ActivationGradFromOutput"),
                                     gpu::LaunchFusedBackward(args, OpStream(ctx))));
  }

 private:
  ActivationAttrs attrs_;
};

// y may take x's buffer (unlike on the CPU): each GPU thread loads its group of
// x before it stores y.
template <typename S>
class FusedActivationQuantizedGpuOp : public OpKernel {
 public:
  explicit FusedActivationQuantizedGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("FusedActivationQuantized")));
    OP_REQUIRES_OK(ctx, ReadQuantizer(ctx, NESTAD_OP("FusedActivationQuantized"), &quantizer_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const int64_t n = x.NumElements();
    Tensor* y = nullptr;
    Tensor* code = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({PackedBytes(n, quantizer_.bits)}),
                                             &code));
    gpu::ForwardArgs args{attrs_.kind,         attrs_.params.data(),
                          kElementType<S>,     gpu::DerivativeStorage::kQuantized,
                          n,                   x.flat<S>().data(),
                          y->flat<S>().data(), code->flat<uint8_t>().data(),
                          &quantizer_};
    OP_REQUIRES_OK(ctx, LaunchStatus(NESTAD_OP("FusedActivationQuantized"),
                                     gpu::LaunchFusedForward(args, OpStream(ctx))));
  }

 private:
  ActivationAttrs attrs_;
  Quantizer quantizer_;
};

template <typename S>
class ActivationGradQuantizedGpuOp : public OpKernel {
 public:
  explicit ActivationGradQuantizedGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadQuantizer(ctx, NESTAD_OP("ActivationGradQuantized"), &quantizer_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& code = ctx->input(1);
    const int64_t n = dy.NumElements();
    OP_REQUIRES_OK(ctx, CheckPackedCodes(NESTAD_OP("ActivationGradQuantized"), code, n,
                                         quantizer_.bits));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, dy.shape(), &dx));
    gpu::BackwardArgs args{kElementType<S>,        gpu::DerivativeStorage::kQuantized,
                           n,                      dy.flat<S>().data(),
                           code.flat<uint8_t>().data(), dx->flat<S>().data()};
    args.quantizer = &quantizer_;
    OP_REQUIRES_OK(ctx, LaunchStatus(NESTAD_OP("ActivationGradQuantized"),
                                     gpu::LaunchFusedBackward(args, OpStream(ctx))));
  }

 private:
  Quantizer quantizer_;
};

#define NESTAD_REGISTER_STORAGE_GPU(S)                                                      \
  NESTAD_REGISTER_KERNEL("ActivationForward", DEVICE_GPU, S, ActivationForwardGpuOp);         \
  NESTAD_REGISTER_KERNEL("ActivationGradFromOutput", DEVICE_GPU, S,                           \
                         ActivationGradFromOutputGpuOp);                                     \
  NESTAD_REGISTER_KERNEL("FusedActivationQuantized", DEVICE_GPU, S,                           \
                         FusedActivationQuantizedGpuOp);                                     \
  NESTAD_REGISTER_KERNEL("ActivationGradQuantized", DEVICE_GPU, S, ActivationGradQuantizedGpuOp);
NESTAD_REGISTER_STORAGE_GPU(Eigen::half)
NESTAD_REGISTER_STORAGE_GPU(Eigen::bfloat16)
NESTAD_REGISTER_STORAGE_GPU(float)
NESTAD_REGISTER_STORAGE_GPU(double)
#undef NESTAD_REGISTER_STORAGE_GPU

}  // namespace
}  // namespace nestad

#endif  // GOOGLE_CUDA
