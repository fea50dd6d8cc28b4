#ifndef NESTAD_KERNELS_ACTIVATIONS_SOFTSIGN_H_
#define NESTAD_KERNELS_ACTIVATIONS_SOFTSIGN_H_

#include "../common.h"

namespace nestad {

// softsign: y = x / (1 + |x|); f' = 1 / (1 + |x|)^2. Tails: +-inf gives (+-1, 0).
// y is a division, not x * q: q = 1 / (1 + |x|) is subnormal for |x| > 1 / FLT_MIN,
// and TensorFlow runs kernels with subnormals flushed to zero (y would be 0, not +-1).
struct Softsign : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Softsign(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T q = T(1) / (T(1) + Abs(x));
    y = IsInf(x) ? (x > T(0) ? T(1) : T(-1)) : x / (T(1) + Abs(x));
    d = q * q;
  }

  // f' from the output y alone: 1/(1+|x|) = 1 - |y|.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return (T(1) - Abs(y)) * (T(1) - Abs(y));
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SOFTSIGN_H_
