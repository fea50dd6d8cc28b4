#ifndef NESTAD_KERNELS_ACTIVATIONS_EXPONENTIAL_H_
#define NESTAD_KERNELS_ACTIVATIONS_EXPONENTIAL_H_

#include "../common.h"

namespace nestad {

// exponential: y = exp(x); f' = exp(x). Tails: -inf gives (0, 0); +inf gives (+inf, +inf).
struct Exponential : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Exponential(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = Exp(x);
    d = y;
  }

  // f' from the output y alone: exp(x) = y.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y;
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_EXPONENTIAL_H_
