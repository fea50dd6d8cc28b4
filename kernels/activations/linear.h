#ifndef NESTAD_KERNELS_ACTIVATIONS_LINEAR_H_
#define NESTAD_KERNELS_ACTIVATIONS_LINEAR_H_

#include "../common.h"

namespace nestad {

// linear: y = x; f' = 1.
struct Linear : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit Linear(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = x;
    d = T(1);
  }

  // f' from the output y alone: constant.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return T(1);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_LINEAR_H_
