#ifndef NESTAD_KERNELS_ACTIVATIONS_LOG_SIGMOID_H_
#define NESTAD_KERNELS_ACTIVATIONS_LOG_SIGMOID_H_

#include "../common.h"

namespace nestad {

// log_sigmoid: y = log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)); f' = sigmoid(-x).
// Tails: -inf gives (-inf, 1); +inf gives (0, 0).
struct LogSigmoid : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit LogSigmoid(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T z = Exp(-Abs(x));
    y = Min(x, T(0)) - Log1p(z);
    d = SigmoidFromZ(-x, z);
  }

  // f' from the output y alone: sigmoid(-x) = 1 - exp(y).
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return -Expm1(y);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_LOG_SIGMOID_H_
