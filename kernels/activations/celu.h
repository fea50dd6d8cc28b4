#ifndef NESTAD_KERNELS_ACTIVATIONS_CELU_H_
#define NESTAD_KERNELS_ACTIVATIONS_CELU_H_

#include "../common.h"

namespace nestad {

// celu: y = x if x > 0 else alpha * (exp(x / alpha) - 1); f' = 1 if x > 0 else exp(x / alpha).
// Tails: -inf gives (-alpha, 0); +inf gives (+inf, 1).
struct Celu {
  static constexpr int kNumParams = 1;  // alpha
  float alpha;
  NESTAD_HD explicit Celu(const float* p) : alpha(p[0]) {}
  static const char* Check(const float* p) {
    return p[0] == 0.0f ? "celu: alpha must be non-zero" : nullptr;
  }
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T a = T(alpha);
    const T u = Min(x, T(0)) / a;
    y = x > T(0) ? x : a * Expm1(u);
    d = x > T(0) ? T(1) : Exp(u);
  }

  // f' from the output y alone: exp(x/alpha) = y/alpha + 1 for x <= 0 (alpha > 0).
  NESTAD_HD bool HasDerivativeFromOutput() const { return alpha > 0.0f; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y > T(0) ? T(1) : y / T(alpha) + T(1);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_CELU_H_
