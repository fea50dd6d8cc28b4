// What the BatchNormActivation OpKernels share: their attributes, validated,
// and the checks of z and the per-channel inputs (the shape function checks
// the same at graph construction; eager calls reach only these).
#ifndef NESTAD_KERNELS_NORM_OP_UTIL_H_
#define NESTAD_KERNELS_NORM_OP_UTIL_H_

#include <cmath>
#include <string>

#include "batch_norm_activation.h"
#include "op_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace nestad {

struct NormAttrs {
  ActivationAttrs activation;
  float epsilon = 1e-3f;
  int axis = -1;
  bool training = true;

  absl::Status Read(tensorflow::OpKernelConstruction* ctx, const std::string& op_name) {
    TF_RETURN_IF_ERROR(activation.Read(ctx, op_name));
    TF_RETURN_IF_ERROR(ctx->GetAttr("epsilon", &epsilon));
    TF_RETURN_IF_ERROR(ctx->GetAttr("axis", &axis));
    TF_RETURN_IF_ERROR(ctx->GetAttr("training", &training));
    if (!(epsilon >= 0.0f) || !std::isfinite(epsilon)) {
      return absl::InvalidArgumentError(op_name + ": epsilon must be finite and >= 0, got " +
                                        std::to_string(epsilon));
    }
    return absl::OkStatus();
  }
};

// Checks z against `axis` and inputs first_vector .. first_vector + 3 (gamma, beta,
// mean, variance) against z's channels; sets *layout.
inline absl::Status CheckNormInputs(const std::string& op_name, int axis,
                                    const tensorflow::Tensor& z,
                                    tensorflow::OpKernelContext* ctx, int first_vector,
                                    NormLayout* layout) {
  const int rank = z.dims();
  if (rank < 1 || axis < -rank || axis >= rank) {
    return absl::InvalidArgumentError(op_name + ": axis " + std::to_string(axis) +
                                      " is out of range for z of shape " +
                                      z.shape().DebugString());
  }
  const int a = axis < 0 ? axis + rank : axis;
  layout->outer = 1;
  layout->inner = 1;
  for (int i = 0; i < a; ++i) layout->outer *= z.dim_size(i);
  for (int i = a + 1; i < rank; ++i) layout->inner *= z.dim_size(i);
  layout->channels = z.dim_size(a);
  static const char* kNames[] = {"gamma", "beta", "mean", "variance"};
  for (int i = 0; i < 4; ++i) {
    const tensorflow::Tensor& v = ctx->input(first_vector + i);
    if (v.dims() != 1 || v.dim_size(0) != layout->channels) {
      return absl::InvalidArgumentError(
          op_name + ": " + kNames[i] + " must be a vector of z's size along axis " +
          std::to_string(axis) + " (" + std::to_string(layout->channels) + "), got shape " +
          v.shape().DebugString());
    }
  }
  return absl::OkStatus();
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_NORM_OP_UTIL_H_
