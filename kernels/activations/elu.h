#ifndef NESTAD_KERNELS_ACTIVATIONS_ELU_H_
#define NESTAD_KERNELS_ACTIVATIONS_ELU_H_

#include "../common.h"

namespace nestad {

// elu: y = x if x > 0 else alpha * (exp(x) - 1); f' = 1 if x > 0 else alpha * exp(x).
// Tails: -inf gives (-alpha, 0); +inf gives (+inf, 1).
struct Elu : NoParamCheck {
  static constexpr int kNumParams = 1;  // alpha
  float alpha;
  NESTAD_HD explicit Elu(const float* p) : alpha(p[0]) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T a = T(alpha);
    const T u = Min(x, T(0));
    y = x > T(0) ? x : a * Expm1(u);
    d = x > T(0) ? T(1) : a * Exp(u);
  }

  // f' from the output y alone: alpha*exp(x) = y + alpha for x <= 0 (alpha > 0).
  NESTAD_HD bool HasDerivativeFromOutput() const { return alpha > 0.0f; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y > T(0) ? T(1) : y + T(alpha);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_ELU_H_
