#ifndef NESTAD_KERNELS_ACTIVATIONS_HARD_SHRINK_H_
#define NESTAD_KERNELS_ACTIVATIONS_HARD_SHRINK_H_

#include "../common.h"

namespace nestad {

// hard_shrink: y = x if |x| > threshold else 0; f' = 1 if |x| > threshold else 0.
struct HardShrink : NoParamCheck {
  static constexpr int kNumParams = 1;  // threshold
  float threshold;
  NESTAD_HD explicit HardShrink(const float* p) : threshold(p[0]) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const bool pass = Abs(x) > T(threshold);
    y = pass ? x : T(0);
    d = pass ? T(1) : T(0);
  }

  // f' from the output y alone: y != 0 exactly where |x| > threshold (threshold >= 0).
  NESTAD_HD bool HasDerivativeFromOutput() const { return threshold >= 0.0f; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y != T(0) ? T(1) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_HARD_SHRINK_H_
