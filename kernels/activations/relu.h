#ifndef NESTAD_KERNELS_ACTIVATIONS_RELU_H_
#define NESTAD_KERNELS_ACTIVATIONS_RELU_H_

#include "../common.h"

namespace nestad {

// relu (Keras 3 semantics, all three parameters):
//   p = x if x > threshold else 0; p = clip(p, 0, max_value) when max_value is given;
//   y = p + negative_slope * min(x - threshold, 0).
//   f' = [x > threshold and (no max_value or 0 < x < max_value)] + negative_slope * [x <= threshold].
// max_value = +inf means "no max_value" (Keras' None). Tails follow the formula.
struct Relu {
  static constexpr int kNumParams = 3;  // negative_slope, max_value, threshold
  float slope, max_value, threshold;
  NESTAD_HD explicit Relu(const float* p) : slope(p[0]), max_value(p[1]), threshold(p[2]) {}
  static const char* Check(const float* p) {
    return IsInf(p[0]) || IsInf(p[2]) ? "relu: negative_slope and threshold must be finite"
                                      : nullptr;
  }
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T thr = T(threshold), m = T(max_value), s = T(slope);
    const bool has_max = !IsInf(m);
    const bool above = x > thr;
    const T p = above ? x : T(0);
    const T p_clipped = has_max ? Min(Max(p, T(0)), m) : p;
    const bool below = slope != 0.0f && x <= thr;  // at x == threshold: the left derivative
    y = p_clipped + (below ? s * (x - thr) : T(0));
    const bool passes = above && (!has_max || (x > T(0) && x < m));
    d = (passes ? T(1) : T(0)) + (below ? s : T(0));
  }

  // f' from the output y alone: y > 0 (and below max_value) exactly where f' = 1 (negative_slope = 0, threshold >= 0).
  NESTAD_HD bool HasDerivativeFromOutput() const { return slope == 0.0f && threshold >= 0.0f; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return (y > T(0) && (IsInf(T(max_value)) || y < T(max_value))) ? T(1) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_RELU_H_
