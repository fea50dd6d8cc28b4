#ifndef NESTAD_KERNELS_ACTIVATIONS_SILU_H_
#define NESTAD_KERNELS_ACTIVATIONS_SILU_H_

#include "../common.h"

namespace nestad {

// silu (swish): y = x * sigmoid(x); f' = sigmoid(x) + x * sigmoid(x) * (1 - sigmoid(x)).
// Tails: -inf gives (0, 0); +inf gives (+inf, 1).
struct Silu : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Silu(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T z = Exp(-Abs(x));
    const T sig = SigmoidFromZ(x, z);
    y = MulVanishing(x, sig);
    d = sig + MulVanishing(x, z / ((T(1) + z) * (T(1) + z)));
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SILU_H_
