#ifndef NESTAD_KERNELS_ACTIVATIONS_SOFT_SHRINK_H_
#define NESTAD_KERNELS_ACTIVATIONS_SOFT_SHRINK_H_

#include "../common.h"

namespace nestad {

// soft_shrink: y = x - threshold if x > threshold, x + threshold if x < -threshold, else 0;
// f' = 1 if |x| > threshold else 0.
struct SoftShrink : NoParamCheck {
  static constexpr int kNumParams = 1;  // threshold
  float threshold;
  NESTAD_HD explicit SoftShrink(const float* p) : threshold(p[0]) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T t = T(threshold);
    y = x > t ? x - t : (x < -t ? x + t : T(0));
    d = (x > t || x < -t) ? T(1) : T(0);
  }

  // f' from the output y alone: y != 0 exactly where |x| > threshold (threshold >= 0).
  NESTAD_HD bool HasDerivativeFromOutput() const { return threshold >= 0.0f; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y != T(0) ? T(1) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SOFT_SHRINK_H_
