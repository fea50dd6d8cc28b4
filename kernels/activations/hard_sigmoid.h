#ifndef NESTAD_KERNELS_ACTIVATIONS_HARD_SIGMOID_H_
#define NESTAD_KERNELS_ACTIVATIONS_HARD_SIGMOID_H_

#include "../common.h"

namespace nestad {

// hard_sigmoid (Keras 3): y = relu6(x + 3) / 6; f' = 1/6 if -3 < x < 3 else 0.
struct HardSigmoid : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit HardSigmoid(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = Min(Max(x + T(3), T(0)), T(6)) / T(6);
    d = (x > T(-3) && x < T(3)) ? T(1) / T(6) : T(0);
  }

  // f' from the output y alone: 0 < y < 1 exactly where -3 < x < 3.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return (y > T(0) && y < T(1)) ? T(1) / T(6) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_HARD_SIGMOID_H_
