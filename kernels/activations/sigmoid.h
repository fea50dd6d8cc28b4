#ifndef NESTAD_KERNELS_ACTIVATIONS_SIGMOID_H_
#define NESTAD_KERNELS_ACTIVATIONS_SIGMOID_H_

#include "../common.h"

namespace nestad {

// sigmoid: y = 1 / (1 + exp(-x)); f' = y * (1 - y), computed as z / (1 + z)^2 with z = exp(-|x|)
// so that both tails keep relative accuracy. Tails: -inf gives (0, 0); +inf gives (1, 0).
struct Sigmoid : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Sigmoid(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T z = Exp(-Abs(x));
    y = SigmoidFromZ(x, z);
    d = z / ((T(1) + z) * (T(1) + z));
  }

  // f' from the output y alone: sigmoid' = y (1 - y).
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y * (T(1) - y);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SIGMOID_H_
