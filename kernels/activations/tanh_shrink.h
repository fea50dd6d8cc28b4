#ifndef NESTAD_KERNELS_ACTIVATIONS_TANH_SHRINK_H_
#define NESTAD_KERNELS_ACTIVATIONS_TANH_SHRINK_H_

#include "../common.h"

namespace nestad {

// tanh_shrink: y = x - tanh(x); f' = tanh(x)^2. Tails: +-inf gives (+-inf, 1).
struct TanhShrink : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit TanhShrink(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T t = Tanh(x);
    y = x - t;
    d = t * t;
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_TANH_SHRINK_H_
