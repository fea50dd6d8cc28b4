#ifndef NESTAD_KERNELS_ACTIVATIONS_HARD_SILU_H_
#define NESTAD_KERNELS_ACTIVATIONS_HARD_SILU_H_

#include "../common.h"

namespace nestad {

// hard_silu (hard_swish): y = x * relu6(x + 3) / 6; f' = 0 for x <= -3, 1 for x >= 3,
// (2x + 3) / 6 between. Tails: -inf gives (0, 0); +inf gives (+inf, 1).
struct HardSilu : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit HardSilu(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = x <= T(-3) ? T(0) : (x >= T(3) ? x : x * (x + T(3)) / T(6));
    d = x <= T(-3) ? T(0) : (x >= T(3) ? T(1) : (T(2) * x + T(3)) / T(6));
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_HARD_SILU_H_
