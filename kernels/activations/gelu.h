#ifndef NESTAD_KERNELS_ACTIVATIONS_GELU_H_
#define NESTAD_KERNELS_ACTIVATIONS_GELU_H_

#include "../common.h"

namespace nestad {

// gelu (exact): y = x * Phi(x), Phi(x) = erfc(-x / sqrt(2)) / 2; f' = Phi(x) + x * phi(x).
// Phi uses erfc, so the far negative tail keeps its relative accuracy instead of
// cancelling to 0. Tails: -inf gives (0, 0); +inf gives (+inf, 1).
struct Gelu : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Gelu(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T cdf = T(0.5) * Erfc(x * T(-0.7071067811865476));
    const T pdf = T(0.3989422804014327) * Exp(T(-0.5) * x * x);
    y = MulVanishing(x, cdf);
    d = cdf + MulVanishing(x, pdf);
  }
};

// gelu (approximate=True, the tanh form of tf.nn.gelu): y = x/2 * (1 + tanh(u)),
// u = sqrt(2/pi) * (x + 0.044715 x^3); f' = (1 + t)/2 + x/2 * (1 - t^2) * du/dx.
// With z = exp(-2|u|): 1 + t = 2/(1 + z) (u >= 0) or 2z/(1 + z) (u < 0) and
// 1 - t^2 = 4z/(1 + z)^2, so neither tail cancels. Past |x| = 10, t is +-1 in
// every compute type (and x^3 could overflow). Tails: -inf gives (0, 0); +inf gives (+inf, 1).
struct GeluApproximate : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit GeluApproximate(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T k0 = T(0.7978845608028654), k1 = T(0.044715);
    const bool saturated = Abs(x) > T(10);
    const T xc = saturated ? T(0) : x;
    const T u = k0 * (xc + k1 * xc * xc * xc);
    const T z = Exp(T(-2) * Abs(u));
    const T one_plus_t = (u >= T(0) ? T(2) : T(2) * z) / (T(1) + z);
    const T sech2 = T(4) * z / ((T(1) + z) * (T(1) + z));
    const T y_mid = T(0.5) * xc * one_plus_t;
    const T d_mid = T(0.5) * one_plus_t + T(0.5) * xc * sech2 * k0 * (T(1) + T(3) * k1 * xc * xc);
    y = saturated ? (x > T(0) ? x : T(0)) : y_mid;
    d = saturated ? (x > T(0) ? T(1) : T(0)) : d_mid;
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_GELU_H_
