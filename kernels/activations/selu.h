#ifndef NESTAD_KERNELS_ACTIVATIONS_SELU_H_
#define NESTAD_KERNELS_ACTIVATIONS_SELU_H_

#include "../common.h"

namespace nestad {

// selu: y = scale * (x if x > 0 else alpha * (exp(x) - 1)); f' = scale * (1 if x > 0 else alpha * exp(x)),
// with alpha = 1.6732632423543772, scale = 1.0507009873554805 (as tf.nn.selu).
// Tails: -inf gives (-scale * alpha, 0); +inf gives (+inf, scale).
struct Selu : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Selu(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T alpha = T(1.6732632423543772848170429916717);
    const T scale = T(1.0507009873554804934193349852946);
    const T u = Min(x, T(0));
    y = x > T(0) ? scale * x : (scale * alpha) * Expm1(u);
    d = x > T(0) ? scale : (scale * alpha) * Exp(u);
  }

  // f' from the output y alone: scale*alpha*exp(x) = y + scale*alpha for x <= 0.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y > T(0) ? T(1.0507009873554804934193349852946) : y + T(1.0507009873554804934193349852946 * 1.6732632423543772848170429916717);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SELU_H_
