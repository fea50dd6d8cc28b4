#ifndef NESTAD_KERNELS_ACTIVATIONS_MISH_H_
#define NESTAD_KERNELS_ACTIVATIONS_MISH_H_

#include "../common.h"

namespace nestad {

// mish: y = x * tanh(softplus(x)); f' = t + x * sigmoid(x) * (1 - t^2), t = tanh(softplus(x)).
// With e = exp(x) and n = e * (e + 2): t = n / (n + 2), 1 - t^2 = 4 (n + 1) / (n + 2)^2,
// which has no cancellation in either tail. Past x = 20 (float) / 40 (double), t and
// f' are 1 to within rounding. Tails: -inf gives (0, 0); +inf gives (+inf, 1).
struct Mish : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Mish(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T cut = sizeof(T) == 4 ? T(20) : T(40);
    const T e = Exp(Min(x, cut));
    const T n = e * (e + T(2));
    const T t = n / (n + T(2));
    const T sig = e / (T(1) + e);
    const T sech2 = T(4) * (n + T(1)) / ((n + T(2)) * (n + T(2)));
    y = x > cut ? x : MulVanishing(x, t);
    d = x > cut ? T(1) : t + MulVanishing(x, sig * sech2);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_MISH_H_
