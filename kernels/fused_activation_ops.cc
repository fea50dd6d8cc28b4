// TensorFlow ops and CPU kernels of the fused activation pair:
//   Nestad>FusedActivation:     x -> (y = f(x), derivative = f'(x)), one pass over memory;
//   Nestad>FusedActivationGrad: (dy, derivative) -> dx = dy * derivative.
// The activation is an attribute; its f and f' come from kernels/activations/.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <string>
#include <vector>

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

REGISTER_OP("Nestad>FusedActivation")
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

REGISTER_OP("Nestad>FusedActivationGrad")
    .Input("dy: T")
    .Input("derivative: T")
    .Output("dx: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle merged;
      absl::Status status = c->Merge(c->input(0), c->input(1), &merged);
      if (!status.ok()) {
        return absl::InvalidArgumentError(
            "Nestad>FusedActivationGrad: dy and derivative must have the same shape, got " +
            c->DebugString(c->input(0)) + " and " + c->DebugString(c->input(1)));
      }
      c->set_output(0, merged);
      return absl::OkStatus();
    })
    .Doc("Backward pass of Nestad>FusedActivation: dx = dy * derivative.");

// Elements are handed to threads in blocks of this many, so that every element
// is computed by the same code path (vector body or scalar tail) whatever the
// number of threads: results are bit-identical across thread counts.
constexpr int64_t kBlock = 256;

// The element loops are compiled for AVX-512, AVX2+FMA and baseline x86-64; the
// loader picks the clone for the running CPU. Other architectures get one version.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NESTAD_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NESTAD_CPU_CLONES
#endif

template <typename Functor, typename S>
NESTAD_CPU_CLONES void ForwardRange(const Functor f, const S* x, S* y, S* __restrict d,
                                    int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) FusedForwardElement(f, x[i], y[i], d[i]);
}

template <typename S>
NESTAD_CPU_CLONES void BackwardRange(const S* dy, const S* d, S* dx, int64_t begin,
                                     int64_t end) {
  for (int64_t i = begin; i < end; ++i) dx[i] = FusedBackwardElement(dy[i], d[i]);
}

// Runs fn(begin, end) over [0, n) on the op's intra-op thread pool.
template <typename Fn>
void ParallelForBlocks(OpKernelContext* ctx, int64_t n, int64_t cost_per_element, Fn fn) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(num_blocks, kBlock * cost_per_element, [&](int64_t first, int64_t last) {
    fn(first * kBlock, std::min(last * kBlock, n));
  });
}

template <typename S>
class FusedActivationOp : public OpKernel {
 public:
  explicit FusedActivationOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string name;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation", &name));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("params", &params_));
    const std::string error = ResolveActivation(name, params_, &kind_);
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError("Nestad>FusedActivation: " + error));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    Tensor* d = nullptr;
    // y may take over x's buffer when nothing else holds x.
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, x.shape(), &d));
    const int64_t n = x.NumElements();
    if (n == 0) return;
    const S* xp = x.flat<S>().data();
    S* yp = y->flat<S>().data();
    S* dp = d->flat<S>().data();
    ParallelForBlocks(ctx, n, /*cost_per_element=*/40, [&](int64_t begin, int64_t end) {
      VisitActivation(kind_, params_.data(), [&](auto f) {
        ForwardRange(f, xp, yp, dp, begin, end);
        return 0;
      });
    });
  }

 private:
  std::vector<float> params_;
  Kind kind_ = Kind::k_linear;
};

template <typename S>
class FusedActivationGradOp : public OpKernel {
 public:
  explicit FusedActivationGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& d = ctx->input(1);
    OP_REQUIRES(ctx, dy.shape() == d.shape(),
                absl::InvalidArgumentError(
                    "Nestad>FusedActivationGrad: dy and derivative must have the same shape, got " +
                    dy.shape().DebugString() + " and " + d.shape().DebugString()));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0, 1}, 0, dy.shape(), &dx));
    const int64_t n = dy.NumElements();
    if (n == 0) return;
    const S* dyp = dy.flat<S>().data();
    const S* dp = d.flat<S>().data();
    S* dxp = dx->flat<S>().data();
    ParallelForBlocks(ctx, n, /*cost_per_element=*/2, [&](int64_t begin, int64_t end) {
      BackwardRange(dyp, dp, dxp, begin, end);
    });
  }
};

#define NESTAD_REGISTER_CPU(S)                                                          \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("Nestad>FusedActivation").Device(::tensorflow::DEVICE_CPU).TypeConstraint<S>("T"), \
      FusedActivationOp<S>);                                                            \
  REGISTER_KERNEL_BUILDER(Name("Nestad>FusedActivationGrad")                            \
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
