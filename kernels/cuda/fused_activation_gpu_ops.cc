// GPU kernels of the ops FusedActivation and FusedActivationGrad
// (the ops themselves are registered by kernels/fused_activation_ops.cc, in the
// CPU library, which is loaded first). Compiled by g++ with -DGOOGLE_CUDA=1
// against a CUDA build of TensorFlow; the kernels are launched through the
// TF-free API of fused_activation_gpu.h on the op's CUDA stream.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <string>
#include <vector>

#include "../fused_activation.h"
#include "../op_util.h"
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

template <typename S>
class FusedActivationGpuOp : public OpKernel {
 public:
  explicit FusedActivationGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("FusedActivation")));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    Tensor* d = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, x.shape(), &d));
    gpu::ForwardArgs args;
    args.kind = attrs_.kind;
    args.params = attrs_.params.data();
    args.type = kElementType<S>;
    args.storage = gpu::DerivativeStorage::kExact;
    args.n = x.NumElements();
    args.x = x.flat<S>().data();
    args.y = y->flat<S>().data();
    args.derivative = d->flat<S>().data();
    OP_REQUIRES_OK(ctx, LaunchStatus(NESTAD_OP("FusedActivation"),
                                     gpu::LaunchFusedForward(args, OpStream(ctx))));
  }

 private:
  ActivationAttrs attrs_;
};

template <typename S>
class FusedActivationGradGpuOp : public OpKernel {
 public:
  explicit FusedActivationGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& d = ctx->input(1);
    OP_REQUIRES_OK(ctx, SameShape(NESTAD_OP("FusedActivationGrad"), "dy", dy, "derivative", d));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0, 1}, 0, dy.shape(), &dx));
    gpu::BackwardArgs args;
    args.type = kElementType<S>;
    args.storage = gpu::DerivativeStorage::kExact;
    args.n = dy.NumElements();
    args.dy = dy.flat<S>().data();
    args.derivative = d.flat<S>().data();
    args.dx = dx->flat<S>().data();
    OP_REQUIRES_OK(ctx, LaunchStatus(NESTAD_OP("FusedActivationGrad"),
                                     gpu::LaunchFusedBackward(args, OpStream(ctx))));
  }
};

#define NESTAD_REGISTER_GPU(S)                                                  \
  NESTAD_REGISTER_KERNEL("FusedActivation", DEVICE_GPU, S, FusedActivationGpuOp); \
  NESTAD_REGISTER_KERNEL("FusedActivationGrad", DEVICE_GPU, S, FusedActivationGradGpuOp);
NESTAD_REGISTER_GPU(Eigen::half)
NESTAD_REGISTER_GPU(Eigen::bfloat16)
NESTAD_REGISTER_GPU(float)
NESTAD_REGISTER_GPU(double)
#undef NESTAD_REGISTER_GPU

}  // namespace
}  // namespace nestad

#endif  // GOOGLE_CUDA
