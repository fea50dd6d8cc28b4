#ifndef NESTAD_KERNELS_ACTIVATIONS_HARD_TANH_H_
#define NESTAD_KERNELS_ACTIVATIONS_HARD_TANH_H_

#include "../common.h"

namespace nestad {

// hard_tanh: y = clip(x, -1, 1); f' = 1 if |x| < 1 else 0.
struct HardTanh : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit HardTanh(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = Min(Max(x, T(-1)), T(1));
    d = Abs(x) < T(1) ? T(1) : T(0);
  }

  // f' from the output y alone: |y| < 1 exactly where |x| < 1.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return Abs(y) < T(1) ? T(1) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_HARD_TANH_H_
