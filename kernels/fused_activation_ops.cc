// TensorFlow ops and CPU kernels of the fused activation pair:
//   FusedActivation:     x -> (y = f(x), derivative = f'(x)), one pass over memory;
//   FusedActivationGrad: (dy, derivative) -> dx = dy * derivative.
// The activation is an attribute; its f and f' come from kernels/activations/.
#include <string>
#include <vector>

#include "cpu_kernel_util.h"
#include "fused_activation.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace nestad {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

REGISTER_OP(NESTAD_OP("FusedActivation"))
    .Input("x: T")
    .Output("y: T")
    .Output("derivative: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("activation: string")
    .Attr("params: list(float) = []")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Element-wise activation y = f(x) and its derivative f'(x), computed in one pass.

activation: kernel name of the activation (see kernels/activations.def).
params: the activation's parameters, in the order its functor reads them.
)doc");

REGISTER_OP(NESTAD_OP("FusedActivationGrad"))
    .Input("dy: T")
    .Input("derivative: T")
    .Output("dx: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle merged;
      absl::Status status = c->Merge(c->input(0), c->input(1), &merged);
      if (!status.ok()) {
        return absl::InvalidArgumentError(
            NESTAD_OP("FusedActivationGrad") ": dy and derivative must have the same shape, got " +
            c->DebugString(c->input(0)) + " and " + c->DebugString(c->input(1)));
      }
      c->set_output(0, merged);
      return absl::OkStatus();
    })
    .Doc("Backward pass of FusedActivation: dx = dy * derivative.");

template <typename S>
class FusedActivationOp : public OpKernel {
 public:
  explicit FusedActivationOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("FusedActivation")));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    Tensor* d = nullptr;
    // y may take over x's buffer when nothing else holds x.
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, x.shape(), &d));
    RunFusedForward(IntraOpParallelFor(ctx), attrs_.kind, attrs_.params.data(),
                    x.flat<S>().data(), y->flat<S>().data(), d->flat<S>().data(),
                    x.NumElements());
  }

 private:
  ActivationAttrs attrs_;
};

template <typename S>
class FusedActivationGradOp : public OpKernel {
 public:
  explicit FusedActivationGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& d = ctx->input(1);
    OP_REQUIRES_OK(ctx, SameShape(NESTAD_OP("FusedActivationGrad"), "dy", dy, "derivative", d));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0, 1}, 0, dy.shape(), &dx));
    RunFusedBackward(IntraOpParallelFor(ctx), dy.flat<S>().data(), d.flat<S>().data(),
                     dx->flat<S>().data(), dy.NumElements());
  }
};

#define NESTAD_REGISTER_CPU(S)                                                          \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name(NESTAD_OP("FusedActivation")).Device(::tensorflow::DEVICE_CPU).TypeConstraint<S>("T"), \
      FusedActivationOp<S>);                                                            \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP("FusedActivationGrad"))                            \
                              .Device(::tensorflow::DEVICE_CPU)                         \
                              .TypeConstraint<S>("T"),                                  \
                          FusedActivationGradOp<S>);
NESTAD_REGISTER_CPU(Eigen::half)
NESTAD_REGISTER_CPU(Eigen::bfloat16)
NESTAD_REGISTER_CPU(float)
NESTAD_REGISTER_CPU(double)
#undef NESTAD_REGISTER_CPU

}  // namespace
}  // namespace nestad
