#ifndef NESTAD_KERNELS_ACTIVATIONS_THRESHOLD_H_
#define NESTAD_KERNELS_ACTIVATIONS_THRESHOLD_H_

#include "../common.h"

namespace nestad {

// threshold: y = x if x > threshold else default_value; f' = 1 if x > threshold else 0.
struct Threshold : NoParamCheck {
  static constexpr int kNumParams = 2;  // threshold, default_value
  float threshold, default_value;
  NESTAD_HD explicit Threshold(const float* p) : threshold(p[0]), default_value(p[1]) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const bool above = x > T(threshold);
    y = above ? x : T(default_value);
    d = above ? T(1) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_THRESHOLD_H_
