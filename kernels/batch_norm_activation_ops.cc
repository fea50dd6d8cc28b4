// TensorFlow ops and CPU kernels of fused batch normalization + activation:
//   BatchNormActivation:     (z, gamma, beta, mean, variance) -> (y = f(BN(z)), batch_mean,
//                            batch_variance); the statistics of the batch when training,
//                            the given (moving) ones otherwise;
//   BatchNormActivationGrad: (dy, z, gamma, beta, mean, variance) -> (dz, dgamma, dbeta),
//                            recomputing BN(z) and f' from z (kernels/batch_norm_activation.h).
// A training step keeps only z and per-channel statistics for this block.
#include <string>

#include "batch_norm_activation.h"
#include "cpu_kernel_util.h"
#include "norm_op_util.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace nestad {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Shape function of both ops: z (input z_index) of known rank, `axis` in range, and
// the per-channel inputs [first_vector, first_vector + 4) vectors of z's channel size.
absl::Status NormShape(InferenceContext* c, const char* op, int z_index, int first_vector) {
  ShapeHandle z = c->input(z_index);
  int axis = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("axis", &axis));
  DimensionHandle channels = c->UnknownDim();
  if (c->RankKnown(z)) {
    const int rank = c->Rank(z);
    if (rank < 1 || axis < -rank || axis >= rank) {
      return absl::InvalidArgumentError(std::string(op) + ": axis " + std::to_string(axis) +
                                        " is out of range for z of rank " +
                                        std::to_string(rank));
    }
    channels = c->Dim(z, axis < 0 ? axis + rank : axis);
  }
  for (int i = 0; i < 4; ++i) {
    ShapeHandle v = c->input(first_vector + i);
    ShapeHandle vector;
    DimensionHandle merged;
    if (!c->WithRank(v, 1, &vector).ok() || !c->Merge(c->Dim(vector, 0), channels, &merged).ok()) {
      return absl::InvalidArgumentError(
          std::string(op) + ": " + kChannelInputNames[i] + " must be a vector of z's size along axis " +
          std::to_string(axis) + " (" + c->DebugString(channels) + "), got shape " +
          c->DebugString(v));
    }
    channels = merged;
  }
  return absl::OkStatus();
}

// The attributes both ops take (the grad op gets the forward op's).
#define NESTAD_NORM_ATTRS                          \
  .Attr("T: {half, bfloat16, float, double}")      \
      .Attr("U: {float, double}")                  \
      .Attr("activation: string")                  \
      .Attr("params: list(float) = []")            \
      .Attr("epsilon: float = 0.001")              \
      .Attr("axis: int = -1")                      \
      .Attr("training: bool = true")

REGISTER_OP(NESTAD_OP("BatchNormActivation"))
    .Input("z: T")
    .Input("gamma: U")
    .Input("beta: U")
    .Input("mean: U")
    .Input("variance: U")
    .Output("y: T")
    .Output("batch_mean: U")
    .Output("batch_variance: U")
    NESTAD_NORM_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(NormShape(c, NESTAD_OP("BatchNormActivation"), 0, 1));
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(1));
      return absl::OkStatus();
    })
    .Doc(R"doc(
y = f(gamma * (z - mean) / sqrt(variance + epsilon) + beta) along `axis`, in one pass
after the statistics. training: mean and variance are those of the batch (biased
variance, like tf.nn.moments) and are returned; else the inputs mean and variance
are used and returned. U is float (double for double z).
)doc");

REGISTER_OP(NESTAD_OP("BatchNormActivationGrad"))
    .Input("dy: T")
    .Input("z: T")
    .Input("gamma: U")
    .Input("beta: U")
    .Input("mean: U")
    .Input("variance: U")
    .Output("dz: T")
    .Output("dgamma: U")
    .Output("dbeta: U")
    NESTAD_NORM_ATTRS
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(NormShape(c, NESTAD_OP("BatchNormActivationGrad"), 1, 2));
      ShapeHandle merged;
      if (!c->Merge(c->input(0), c->input(1), &merged).ok()) {
        return absl::InvalidArgumentError(NESTAD_OP("BatchNormActivationGrad") ": dy and z must "
                                          "have the same shape, got " +
                                          c->DebugString(c->input(0)) + " and " +
                                          c->DebugString(c->input(1)));
      }
      c->set_output(0, merged);
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Backward pass of BatchNormActivation: (dz, dgamma, dbeta), with BN(z) and f'
recomputed from z; mean and variance are the statistics the forward pass used.
)doc");

template <typename S, typename U>
class BatchNormActivationOp : public OpKernel {
 public:
  explicit BatchNormActivationOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("BatchNormActivation")));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& z = ctx->input(0);
    NormLayout layout;
    OP_REQUIRES_OK(ctx, CheckNormInputs(NESTAD_OP("BatchNormActivation"), attrs_.axis, z, ctx, 1,
                                        &layout));
    Tensor *y = nullptr, *mean = nullptr, *variance = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, z.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(1).shape(), &variance));
    RunBatchNormActivation<S, U>(
        IntraOpParallelFor(ctx), attrs_.activation.kind, attrs_.activation.params.data(), layout,
        attrs_.epsilon, attrs_.training, z.flat<S>().data(), ctx->input(1).flat<U>().data(),
        ctx->input(2).flat<U>().data(), ctx->input(3).flat<U>().data(),
        ctx->input(4).flat<U>().data(), y->flat<S>().data(), mean->flat<U>().data(),
        variance->flat<U>().data());
  }

 private:
  NormAttrs attrs_;
};

template <typename S, typename U>
class BatchNormActivationGradOp : public OpKernel {
 public:
  explicit BatchNormActivationGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, NESTAD_OP("BatchNormActivationGrad")));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& z = ctx->input(1);
    OP_REQUIRES_OK(ctx, SameShape(NESTAD_OP("BatchNormActivationGrad"), "dy", dy, "z", z));
    NormLayout layout;
    OP_REQUIRES_OK(ctx, CheckNormInputs(NESTAD_OP("BatchNormActivationGrad"), attrs_.axis, z, ctx,
                                        2, &layout));
    Tensor *dz = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, z.shape(), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(2).shape(), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(2).shape(), &dbeta));
    RunBatchNormActivationGrad<S, U>(
        IntraOpParallelFor(ctx), attrs_.activation.kind, attrs_.activation.params.data(), layout,
        attrs_.epsilon, attrs_.training, dy.flat<S>().data(), z.flat<S>().data(),
        ctx->input(2).flat<U>().data(), ctx->input(3).flat<U>().data(),
        ctx->input(4).flat<U>().data(), ctx->input(5).flat<U>().data(), dz->flat<S>().data(),
        dgamma->flat<U>().data(), dbeta->flat<U>().data());
  }

 private:
  NormAttrs attrs_;
};

// T with its statistics type U (the compute type: float, or double for double).
#define NESTAD_REGISTER_CPU(S, U)                                                           \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP("BatchNormActivation"))                            \
                              .Device(::tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<S>("T")                                       \
                              .TypeConstraint<U>("U"),                                      \
                          BatchNormActivationOp<S, U>);                                     \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP("BatchNormActivationGrad"))                        \
                              .Device(::tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<S>("T")                                       \
                              .TypeConstraint<U>("U"),                                      \
                          BatchNormActivationGradOp<S, U>);
NESTAD_REGISTER_CPU(Eigen::half, float)
NESTAD_REGISTER_CPU(Eigen::bfloat16, float)
NESTAD_REGISTER_CPU(float, float)
NESTAD_REGISTER_CPU(double, double)
#undef NESTAD_REGISTER_CPU

}  // namespace
}  // namespace nestad
