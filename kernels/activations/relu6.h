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
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_RELU6_H_
