// What nestad's OpKernels share on every device: reading and validating the
// activation and storage attributes, and checking input shapes, so that the
// CPU and GPU kernels of an op give the same errors.
#ifndef NESTAD_KERNELS_OP_UTIL_H_
#define NESTAD_KERNELS_OP_UTIL_H_

#include <string>
#include <vector>

#include "fused_activation.h"
#include "storage.h"
#include "tensorflow/core/framework/op_kernel.h"

// Every op's full name: NESTAD_OP("FusedActivation") is
// "Import_nestad_tf>FusedActivation". The namespace reads as the fix on purpose:
// a graph holding these ops (a training-capable SavedModel) loaded in a process
// that has not imported nestad_tf fails inside TensorFlow with "Op type not
// registered 'Import_nestad_tf>...'", the only text of ours that reaches that
// message. nestad_tf/_loader.py OP_NAMESPACE must say the same.
#define NESTAD_OP_NAMESPACE "Import_nestad_tf"
#define NESTAD_OP(name) NESTAD_OP_NAMESPACE ">" name

// Registers OpKernel class template Kernel<S> for op NESTAD_OP(name) on `device`
// (DEVICE_CPU, DEVICE_GPU) with attribute T = S.
#define NESTAD_REGISTER_KERNEL(name, device, S, Kernel)                                   \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name(NESTAD_OP(name)).Device(::tensorflow::device).TypeConstraint<S>("T"), Kernel<S>)

namespace nestad {

// The `activation` and `params` attributes, validated.
struct ActivationAttrs {
  Kind kind = Kind::k_linear;
  std::vector<float> params;

  absl::Status Read(tensorflow::OpKernelConstruction* ctx, const std::string& op_name) {
    std::string name;
    absl::Status status = ctx->GetAttr("activation", &name);
    if (status.ok()) status = ctx->GetAttr("params", &params);
    if (!status.ok()) return status;
    const std::string error = ResolveActivation(name, params, &kind);
    return error.empty() ? absl::OkStatus() : absl::InvalidArgumentError(op_name + ": " + error);
  }
};

// InvalidArgument naming both inputs unless a and b have the same shape.
inline absl::Status SameShape(const std::string& op_name, const char* a_name,
                              const tensorflow::Tensor& a, const char* b_name,
                              const tensorflow::Tensor& b) {
  if (a.shape() == b.shape()) return absl::OkStatus();
  return absl::InvalidArgumentError(op_name + ": " + a_name + " and " + b_name +
                                    " must have the same shape, got " + a.shape().DebugString() +
                                    " and " + b.shape().DebugString());
}

// InvalidArgument unless f' of the activation can be recovered from its output y
// with these parameters (the ActivationGradFromOutput kernels).
inline absl::Status CheckDerivativeFromOutput(const std::string& op_name,
                                              const ActivationAttrs& attrs) {
  const std::string error = DerivativeFromOutputError(attrs.kind, attrs.params.data());
  return error.empty() ? absl::OkStatus() : absl::InvalidArgumentError(op_name + ": " + error);
}

// The storage attributes (format, bits, breakpoints, levels, range) as given,
// and validated into a Quantizer (kernels/storage.h).
struct QuantizerAttrs {
  std::string format;
  int bits = 0;
  std::vector<float> breakpoints, levels, range;
  Quantizer quantizer;

  absl::Status Read(tensorflow::OpKernelConstruction* ctx, const std::string& op_name) {
    TF_RETURN_IF_ERROR(ctx->GetAttr("format", &format));
    TF_RETURN_IF_ERROR(ctx->GetAttr("bits", &bits));
    TF_RETURN_IF_ERROR(ctx->GetAttr("breakpoints", &breakpoints));
    TF_RETURN_IF_ERROR(ctx->GetAttr("levels", &levels));
    TF_RETURN_IF_ERROR(ctx->GetAttr("range", &range));
    const std::string error = MakeQuantizer(format, bits, breakpoints, levels, range, &quantizer);
    return error.empty() ? absl::OkStatus() : absl::InvalidArgumentError(op_name + ": " + error);
  }
};

inline absl::Status ReadQuantizer(tensorflow::OpKernelConstruction* ctx,
                                  const std::string& op_name, Quantizer* q) {
  QuantizerAttrs attrs;
  TF_RETURN_IF_ERROR(attrs.Read(ctx, op_name));
  *q = attrs.quantizer;
  return absl::OkStatus();
}

// InvalidArgument unless `code_elements` bytes are the packed codes of n
// elements at `bits` bits per element, in a vector (code_dims == 1).
inline absl::Status CheckPackedCodes(const std::string& op_name, int code_dims,
                                     int64_t code_elements, const std::string& code_shape,
                                     int64_t n, int bits) {
  if (code_dims == 1 && code_elements == PackedBytes(n, bits)) return absl::OkStatus();
  return absl::InvalidArgumentError(op_name + ": code must be a vector of " +
                                    std::to_string(PackedBytes(n, bits)) + " bytes for " +
                                    std::to_string(n) + " elements at " + std::to_string(bits) +
                                    " bits, got shape " + code_shape);
}

inline absl::Status CheckPackedCodes(const std::string& op_name, const tensorflow::Tensor& code,
                                     int64_t n, int bits) {
  return CheckPackedCodes(op_name, code.dims(), code.NumElements(), code.shape().DebugString(), n,
                          bits);
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_OP_UTIL_H_
