// XLA lowering of every nestad op: under jit_compile (tf.function(jit_compile=True),
// Keras' jit_compile=True / "auto" on GPU), each op becomes one XLA custom call
// (API_VERSION_TYPED_FFI) to the handlers of xla_cpu_ffi.cc ("Host") and
// cuda/xla_gpu_ffi.cc ("CUDA"). No element math here: the handlers run the
// same loops as the TF kernels. Attributes are validated at compile time with
// the TF kernels' own checks (op_util.h), so errors read the same.
//
// Registered with REGISTER_KERNEL_BUILDER on the XLA JIT devices rather than
// REGISTER_XLA_OP: the latter only takes effect when the library is loaded
// before TensorFlow runs its first op, the former at any time.
#include <string>
#include <vector>

#include "batch_norm_activation.h"
#include "norm_op_util.h"
#include "op_util.h"
#include "storage.h"
#include "tensorflow/compiler/tf2xla/shape_util.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"
#include "xla_custom_call.h"

namespace nestad {
namespace {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::XlaOpKernel;
using ::tensorflow::XlaOpKernelContext;

// What one op lowers to: the custom-call target, its backend config, and
// which of the op's inputs must have the same shape as input 0.
class CustomCallLowering : public XlaOpKernel {
 public:
  CustomCallLowering(OpKernelConstruction* ctx, const char* op_name, const char* target)
      : XlaOpKernel(ctx), op_name_(op_name), target_(target) {}

 protected:
  // The static shape of input `index` (XLA needs one), or a failed status on ctx.
  bool StaticShape(XlaOpKernelContext* ctx, int index, xla::Shape* shape) {
    absl::StatusOr<xla::Shape> result = ctx->InputXlaShape(index);
    if (!result.ok()) {
      ctx->CtxFailure(result.status());
      return false;
    }
    if (!result->is_static()) {
      ctx->CtxFailure(absl::InvalidArgumentError(
          op_name_ + ": under XLA the input shape must be static, got " + result->ToString()));
      return false;
    }
    *shape = *result;
    return true;
  }

  // Emits the custom call on the op's operands and sets the op's outputs.
  void Emit(XlaOpKernelContext* ctx, std::vector<xla::XlaOp> operands,
            const std::vector<xla::Shape>& results, const std::string& config) {
    const bool tuple = results.size() > 1;
    const xla::Shape shape = tuple ? xla::ShapeUtil::MakeTupleShape(results) : results[0];
    xla::XlaOp call = xla::CustomCall(
        ctx->builder(), target_, operands, shape, xla_call::Dictionary(config),
        /*has_side_effect=*/false, /*output_operand_aliasing=*/{}, /*literal=*/nullptr,
        xla::CustomCallSchedule::SCHEDULE_NONE,
        xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    for (size_t i = 0; i < results.size(); ++i) {
      ctx->SetOutput(static_cast<int>(i), tuple ? xla::GetTupleElement(call, i) : call);
    }
  }

  // Checks that inputs 0 and 1 have the same shape (the TF kernels' SameShape).
  bool SameShape(XlaOpKernelContext* ctx, const char* a, const char* b, xla::Shape* shape) {
    xla::Shape other;
    if (!StaticShape(ctx, 0, shape) || !StaticShape(ctx, 1, &other)) return false;
    if (xla::ShapeUtil::Compatible(*shape, other)) return true;
    ctx->CtxFailure(absl::InvalidArgumentError(op_name_ + ": " + a + " and " + b +
                                               " must have the same shape, got " +
                                               shape->ToString() + " and " + other.ToString()));
    return false;
  }

  std::string ActivationConfig(const ActivationAttrs& attrs) const {
    return xla_call::ActivationConfig(Info(attrs.kind).name, attrs.params);
  }

  static std::string QuantizerConfig(const QuantizerAttrs& q) {
    return xla_call::QuantizerConfig(q.format, q.bits, q.breakpoints, q.levels, q.range);
  }

  const std::string op_name_;
  const char* const target_;
};

class FusedActivationLowering : public CustomCallLowering {
 public:
  explicit FusedActivationLowering(OpKernelConstruction* ctx)
      : CustomCallLowering(ctx, NESTAD_OP("FusedActivation"), xla_call::kFusedActivation) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, op_name_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    xla::Shape x;
    if (!StaticShape(ctx, 0, &x)) return;
    Emit(ctx, {ctx->Input(0)}, {x, x}, ActivationConfig(attrs_));
  }

 private:
  ActivationAttrs attrs_;
};

class FusedActivationGradLowering : public CustomCallLowering {
 public:
  explicit FusedActivationGradLowering(OpKernelConstruction* ctx)
      : CustomCallLowering(ctx, NESTAD_OP("FusedActivationGrad"),
                           xla_call::kFusedActivationGrad) {}

  void Compile(XlaOpKernelContext* ctx) override {
    xla::Shape dy;
    if (!SameShape(ctx, "dy", "derivative", &dy)) return;
    Emit(ctx, {ctx->Input(0), ctx->Input(1)}, {dy}, "");
  }
};

class ActivationForwardLowering : public CustomCallLowering {
 public:
  explicit ActivationForwardLowering(OpKernelConstruction* ctx)
      : CustomCallLowering(ctx, NESTAD_OP("ActivationForward"), xla_call::kActivationForward) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, op_name_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    xla::Shape x;
    if (!StaticShape(ctx, 0, &x)) return;
    Emit(ctx, {ctx->Input(0)}, {x}, ActivationConfig(attrs_));
  }

 private:
  ActivationAttrs attrs_;
};

class ActivationGradFromOutputLowering : public CustomCallLowering {
 public:
  explicit ActivationGradFromOutputLowering(OpKernelConstruction* ctx)
      : CustomCallLowering(ctx, NESTAD_OP("ActivationGradFromOutput"),
                           xla_call::kActivationGradFromOutput) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, op_name_));
    OP_REQUIRES_OK(ctx, CheckDerivativeFromOutput(op_name_, attrs_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    xla::Shape dy;
    if (!SameShape(ctx, "dy", "y", &dy)) return;
    Emit(ctx, {ctx->Input(0), ctx->Input(1)}, {dy}, ActivationConfig(attrs_));
  }

 private:
  ActivationAttrs attrs_;
};

class FusedActivationQuantizedLowering : public CustomCallLowering {
 public:
  explicit FusedActivationQuantizedLowering(OpKernelConstruction* ctx)
      : CustomCallLowering(ctx, NESTAD_OP("FusedActivationQuantized"),
                           xla_call::kFusedActivationQuantized) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, op_name_));
    OP_REQUIRES_OK(ctx, quantizer_.Read(ctx, op_name_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    xla::Shape x;
    if (!StaticShape(ctx, 0, &x)) return;
    const xla::Shape code = xla::ShapeUtil::MakeShape(
        xla::U8, {PackedBytes(xla::ShapeUtil::ElementsIn(x), quantizer_.bits)});
    Emit(ctx, {ctx->Input(0)}, {x, code},
         ActivationConfig(attrs_) + ", " + QuantizerConfig(quantizer_));
  }

 private:
  ActivationAttrs attrs_;
  QuantizerAttrs quantizer_;
};

class ActivationGradQuantizedLowering : public CustomCallLowering {
 public:
  explicit ActivationGradQuantizedLowering(OpKernelConstruction* ctx)
      : CustomCallLowering(ctx, NESTAD_OP("ActivationGradQuantized"),
                           xla_call::kActivationGradQuantized) {
    OP_REQUIRES_OK(ctx, quantizer_.Read(ctx, op_name_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    xla::Shape dy, code;
    if (!StaticShape(ctx, 0, &dy) || !StaticShape(ctx, 1, &code)) return;
    OP_REQUIRES_OK(ctx, CheckPackedCodes(op_name_, code.dimensions().size(),
                                         xla::ShapeUtil::ElementsIn(code), code.ToString(),
                                         xla::ShapeUtil::ElementsIn(dy), quantizer_.bits));
    Emit(ctx, {ctx->Input(0), ctx->Input(1)}, {dy}, QuantizerConfig(quantizer_));
  }

 private:
  QuantizerAttrs quantizer_;
};

// BatchNormActivation and its grad: z (input z_index) and four per-channel
// vectors after it; outputs one z-shaped tensor and two vectors. XLA:CPU only
// (the fused normalization has no CUDA kernels yet).
class BatchNormActivationLowering : public CustomCallLowering {
 public:
  BatchNormActivationLowering(OpKernelConstruction* ctx, const char* op_name, const char* target,
                              int z_index)
      : CustomCallLowering(ctx, op_name, target), z_index_(z_index) {
    OP_REQUIRES_OK(ctx, attrs_.Read(ctx, op_name_));
    ::tensorflow::DataType t, u;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &t));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("U", &u));
    OP_REQUIRES(ctx, (t == ::tensorflow::DT_DOUBLE) == (u == ::tensorflow::DT_DOUBLE),
                absl::InvalidArgumentError(op_name_ + ": U must be float (double for double z)"));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    xla::Shape z;
    if (!StaticShape(ctx, z_index_, &z)) return;
    if (z_index_ == 1) {
      xla::Shape dy;
      if (!SameShape(ctx, "dy", "z", &dy)) return;
    }
    const std::vector<int64_t> dims(z.dimensions().begin(), z.dimensions().end());
    NormLayout layout;
    std::string error = MakeNormLayout(dims.data(), static_cast<int>(dims.size()), attrs_.axis,
                                       z.ToString(), &layout);
    xla::Shape vector;
    for (int i = 0; i < 4 && error.empty(); ++i) {
      if (!StaticShape(ctx, z_index_ + 1 + i, &vector)) return;
      error = CheckChannelInput(kChannelInputNames[i], vector.dimensions().size(),
                                xla::ShapeUtil::ElementsIn(vector), attrs_.axis, layout,
                                vector.ToString());
    }
    OP_REQUIRES(ctx, error.empty(), absl::InvalidArgumentError(op_name_ + ": " + error));
    std::vector<xla::XlaOp> operands;
    for (int i = 0; i < z_index_ + 5; ++i) operands.push_back(ctx->Input(i));
    const int axis = attrs_.axis < 0 ? attrs_.axis + static_cast<int>(dims.size()) : attrs_.axis;
    Emit(ctx, operands, {z, vector, vector},
         ActivationConfig(attrs_.activation) + ", " +
             xla_call::NormConfig(attrs_.epsilon, axis, attrs_.training));
  }

 private:
  const int z_index_;
  NormAttrs attrs_;  // read and checked as the TF kernels do
};

class BatchNormActivationForwardLowering : public BatchNormActivationLowering {
 public:
  explicit BatchNormActivationForwardLowering(OpKernelConstruction* ctx)
      : BatchNormActivationLowering(ctx, NESTAD_OP("BatchNormActivation"),
                                    xla_call::kBatchNormActivation, 0) {}
};

class BatchNormActivationGradLowering : public BatchNormActivationLowering {
 public:
  explicit BatchNormActivationGradLowering(OpKernelConstruction* ctx)
      : BatchNormActivationLowering(ctx, NESTAD_OP("BatchNormActivationGrad"),
                                    xla_call::kBatchNormActivationGrad, 1) {}
};

#define NESTAD_REGISTER_NORM_LOWERING(name, Lowering)                                    \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP(name))                                          \
                              .Device("XLA_CPU_JIT")                                     \
                              .TypeConstraint("T", {::tensorflow::DT_HALF,               \
                                                    ::tensorflow::DT_BFLOAT16,           \
                                                    ::tensorflow::DT_FLOAT,              \
                                                    ::tensorflow::DT_DOUBLE})            \
                              .TypeConstraint("U", {::tensorflow::DT_FLOAT,              \
                                                    ::tensorflow::DT_DOUBLE}),           \
                          Lowering)
NESTAD_REGISTER_NORM_LOWERING("BatchNormActivation", BatchNormActivationForwardLowering);
NESTAD_REGISTER_NORM_LOWERING("BatchNormActivationGrad", BatchNormActivationGradLowering);
#undef NESTAD_REGISTER_NORM_LOWERING

#define NESTAD_REGISTER_LOWERING(name, Lowering)                                         \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP(name))                                          \
                              .Device("XLA_CPU_JIT")                                     \
                              .TypeConstraint("T", {::tensorflow::DT_HALF,               \
                                                    ::tensorflow::DT_BFLOAT16,           \
                                                    ::tensorflow::DT_FLOAT,              \
                                                    ::tensorflow::DT_DOUBLE}),           \
                          Lowering);                                                     \
  REGISTER_KERNEL_BUILDER(Name(NESTAD_OP(name))                                          \
                              .Device("XLA_GPU_JIT")                                     \
                              .TypeConstraint("T", {::tensorflow::DT_HALF,               \
                                                    ::tensorflow::DT_BFLOAT16,           \
                                                    ::tensorflow::DT_FLOAT,              \
                                                    ::tensorflow::DT_DOUBLE}),           \
                          Lowering)
NESTAD_REGISTER_LOWERING("FusedActivation", FusedActivationLowering);
NESTAD_REGISTER_LOWERING("FusedActivationGrad", FusedActivationGradLowering);
NESTAD_REGISTER_LOWERING("ActivationForward", ActivationForwardLowering);
NESTAD_REGISTER_LOWERING("ActivationGradFromOutput", ActivationGradFromOutputLowering);
NESTAD_REGISTER_LOWERING("FusedActivationQuantized", FusedActivationQuantizedLowering);
NESTAD_REGISTER_LOWERING("ActivationGradQuantized", ActivationGradQuantizedLowering);
#undef NESTAD_REGISTER_LOWERING

}  // namespace
}  // namespace nestad
