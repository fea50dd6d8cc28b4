#ifndef NESTAD_KERNELS_ACTIVATIONS_SOFTPLUS_H_
#define NESTAD_KERNELS_ACTIVATIONS_SOFTPLUS_H_

#include "../common.h"

namespace nestad {

// softplus: y = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); f' = sigmoid(x).
// Tails: -inf gives (0, 0); +inf gives (+inf, 1).
struct Softplus : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Softplus(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T z = Exp(-Abs(x));
    y = Max(x, T(0)) + Log1p(z);
    d = SigmoidFromZ(x, z);
  }

  // f' from the output y alone: sigmoid(x) = 1 - exp(-y).
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return -Expm1(-y);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SOFTPLUS_H_
