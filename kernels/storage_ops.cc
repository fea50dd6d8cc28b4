// TF ops and CPU kernels for the cheaper storage forms of f'(x):
//   ActivationForward:          x -> y (no f'; for activations whose f' comes from y)
//   ActivationGradFromOutput:   (dy, y) -> dx = dy * f'(x), f' recovered from y
//   FusedActivationQuantized:   x -> (y, code): f' packed (see storage.h)
//   ActivationGradQuantized:    (dy, code) -> dx, decoding on the fly
#include <algorithm>
#include <string>
#include <vector>

#include "cpu_kernel_util.h"
#include "fused_activation.h"
#include "storage.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace nestad {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

absl::Status MergeSameShape(InferenceContext* c, const char* op, const char* a, const char* b) {
  ShapeHandle merged;
  if (!c->Merge(c->input(0), c->input(1), &merged).ok()) {
    return absl::InvalidArgumentError(std::string(op) + ": " + a + " and " + b +
                                      " must have the same shape, got " +
                                      c->DebugString(c->input(0)) + " and " +
                                      c->DebugString(c->input(1)));
  }
  c->set_output(0, merged);
  return absl::OkStatus();
}

REGISTER_OP(NESTAD_OP("ActivationForward"))
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("activation: string")
    .Attr("params: list(float) = []")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc("y = f(x) alone, for activations whose derivative is recovered from y.");

REGISTER_OP(NESTAD_OP("ActivationGradFromOutput"))
    .Input("dy: T")
    .Input("y: T")
    .Output("dx: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("activation: string")
    .Attr("params: list(float) = []")
    .SetShapeFn([](InferenceContext* c) {
      return MergeSameShape(c, NESTAD_OP("ActivationGradFromOutput"), "dy", "y");
    })
    .Doc("dx = dy * f'(x), with f'(x) computed from the output y = f(x).");

REGISTER_OP(NESTAD_OP("FusedActivationQuantized"))
    .Input("x: T")
    .Output("y: T")
    .Output("code: uint8")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("activation: string")
    .Attr("params: list(float) = []")
    .Attr("format: string")
    .Attr("bits: int")
    .Attr("breakpoints: list(float) = []")
    .Attr("levels: list(float) = []")
    .Attr("range: list(float) = []")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      int bits = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("bits", &bits));
      const int64_t n = c->Value(c->NumElements(c->input(0)));
      c->set_output(1, c->Vector(n < 0 ? InferenceContext::kUnknownDim : PackedBytes(n, bits)));
      return absl::OkStatus();
    })
    .Doc("y = f(x) and f'(x) packed into `bits` bits per element (kernels/storage.h).");

REGISTER_OP(NESTAD_OP("ActivationGradQuantized"))
    .Input("dy: T")
    .Input("code: uint8")
    .Output("dx: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("format: string")
    .Attr("bits: int")
    .Attr("breakpoints: list(float) = []")
    .Attr("levels: list(float) = []")
    .Attr("range: list(float) = []")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    })
    .Doc("dx = dy * f'(x), decoding f'(x) from the packed codes of FusedActivationQuantized.");

template <typename S>
class ActivationForwardOp : public OpKernel {
 public:
  explicit ActivationForwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("ActivationForward")));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    RunForwardOnly(IntraOpParallelFor(ctx), attrs_.kind, attrs_.params.data(),
                   x.flat<S>().data(), y->flat<S>().data(), x.NumElements());
  }

 private:
  ActivationAttrs attrs_;
};

template <typename S>
class ActivationGradFromOutputOp : public OpKernel {
 public:
  explicit ActivationGradFromOutputOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("ActivationGradFromOutput")));
    OP_REQUIRES_OK(ctx, CheckDerivativeFromOutput(NESTAD_OP("ActivationGradFromOutput"), attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& y = ctx->input(1);
    OP_REQUIRES_OK(ctx, SameShape(NESTAD_OP("ActivationGradFromOutput"), "dy", dy, "y", y));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, dy.shape(), &dx));
    RunBackwardFromOutput(IntraOpParallelFor(ctx), attrs_.kind, attrs_.params.data(),
                          dy.flat<S>().data(), y.flat<S>().data(), dx->flat<S>().data(),
                          dy.NumElements());
  }

 private:
  ActivationAttrs attrs_;
};

template <typename S>
class FusedActivationQuantizedOp : public OpKernel {
 public:
  explicit FusedActivationQuantizedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("FusedActivationQuantized")));
    OP_REQUIRES_OK(ctx, ReadQuantizer(ctx, NESTAD_OP("FusedActivationQuantized"), &quantizer_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const int64_t n = x.NumElements();
    Tensor* y = nullptr;
    Tensor* code = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({PackedBytes(n, quantizer_.bits)}),
                                             &code));
    RunQuantizedForward(IntraOpParallelFor(ctx), attrs_.kind, attrs_.params.data(), quantizer_,
                        x.flat<S>().data(), y->flat<S>().data(), code->flat<uint8_t>().data(), n);
  }

 private:
  ActivationAttrs attrs_;
  Quantizer quantizer_;
};

template <typename S>
class ActivationGradQuantizedOp : public OpKernel {
 public:
  explicit ActivationGradQuantizedOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
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
    RunQuantizedBackward(IntraOpParallelFor(ctx), quantizer_, dy.flat<S>().data(),
                         code.flat<uint8_t>().data(), dx->flat<S>().data(), n);
  }

 private:
  Quantizer quantizer_;
};

#define NESTAD_REGISTER_STORAGE_CPU(S)                                                      \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP("ActivationForward"))                                  \
                              .Device(::tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<S>("T"),                                      \
                          ActivationForwardOp<S>);                                          \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP("ActivationGradFromOutput"))                           \
                              .Device(::tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<S>("T"),                                      \
                          ActivationGradFromOutputOp<S>);                                   \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP("FusedActivationQuantized"))                           \
                              .Device(::tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<S>("T"),                                      \
                          FusedActivationQuantizedOp<S>);                                   \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP("ActivationGradQuantized"))                            \
                              .Device(::tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<S>("T"),                                      \
                          ActivationGradQuantizedOp<S>);
NESTAD_REGISTER_STORAGE_CPU(Eigen::half)
NESTAD_REGISTER_STORAGE_CPU(Eigen::bfloat16)
NESTAD_REGISTER_STORAGE_CPU(float)
NESTAD_REGISTER_STORAGE_CPU(double)
#undef NESTAD_REGISTER_STORAGE_CPU

}  // namespace
}  // namespace nestad
