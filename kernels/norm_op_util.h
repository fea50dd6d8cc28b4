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
  const auto dims = z.shape().dim_sizes();
  std::string error = MakeNormLayout(dims.data(), z.dims(), axis, z.shape().DebugString(), layout);
  for (int i = 0; i < 4 && error.empty(); ++i) {
    const tensorflow::Tensor& v = ctx->input(first_vector + i);
    error = CheckChannelInput(kChannelInputNames[i], v.dims(), v.NumElements(), axis, *layout,
                              v.shape().DebugString());
  }
  return error.empty() ? absl::OkStatus() : absl::InvalidArgumentError(op_name + ": " + error);
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_NORM_OP_UTIL_H_
