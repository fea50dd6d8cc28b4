// What nestad's OpKernels share on every device: reading the activation
// attributes and checking that two inputs have the same shape.
#ifndef NESTAD_KERNELS_OP_UTIL_H_
#define NESTAD_KERNELS_OP_UTIL_H_

#include <string>
#include <vector>

#include "fused_activation.h"
#include "tensorflow/core/framework/op_kernel.h"

// Every op's full name: NESTAD_OP("FusedActivation") is
// "Import_nestad_tf>FusedActivation". The namespace reads as the fix on purpose:
// a graph holding these ops (a training-capable SavedModel) loaded in a process
// that has not imported nestad_tf fails inside TensorFlow with "Op type not
// registered 'Import_nestad_tf>...'", the only text of ours that reaches that
// message. nestad_tf/_loader.py OP_NAMESPACE must say the same.
#define NESTAD_OP_NAMESPACE "Import_nestad_tf"
#define NESTAD_OP(name) NESTAD_OP_NAMESPACE ">" name

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

}  // namespace nestad

#endif  // NESTAD_KERNELS_OP_UTIL_H_
