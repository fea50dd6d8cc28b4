#ifndef NESTAD_KERNELS_ACTIVATIONS_TANH_H_
#define NESTAD_KERNELS_ACTIVATIONS_TANH_H_

#include "../common.h"

namespace nestad {

// tanh: y = tanh(x); f' = 1 - tanh(x)^2, computed as 4z / (1 + z)^2 with z = exp(-2|x|)
// (no cancellation as |x| grows). Tails: +-inf gives (+-1, 0).
struct HyperbolicTangent : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit HyperbolicTangent(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T z = Exp(T(-2) * Abs(x));
    y = Tanh(x);
    d = T(4) * z / ((T(1) + z) * (T(1) + z));
  }

  // f' from the output y alone: 1 - y^2.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return (T(1) - y) * (T(1) + y);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_TANH_H_
