#ifndef NESTAD_KERNELS_ACTIVATIONS_RELU6_H_
#define NESTAD_KERNELS_ACTIVATIONS_RELU6_H_

#include "../common.h"

namespace nestad {

// relu6: y = min(max(x, 0), 6); f' = 1 if 0 < x < 6 else 0.
struct Relu6 : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Relu6(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = Min(Max(x, T(0)), T(6));
    d = (x > T(0) && x < T(6)) ? T(1) : T(0);
  }

  // f' from the output y alone: 0 < y < 6 exactly where 0 < x < 6.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return (y > T(0) && y < T(6)) ? T(1) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_RELU6_H_
