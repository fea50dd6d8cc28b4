#ifndef NESTAD_KERNELS_ACTIVATIONS_LEAKY_RELU_H_
#define NESTAD_KERNELS_ACTIVATIONS_LEAKY_RELU_H_

#include "../common.h"

namespace nestad {

// leaky_relu: y = x if x > 0 else negative_slope * x; f' = 1 if x > 0 else negative_slope.
// Tails: -inf gives (-inf * negative_slope, negative_slope), and (0, 0) when negative_slope = 0.
struct LeakyRelu : NoParamCheck {
  static constexpr int kNumParams = 1;  // negative_slope
  float slope;
  NESTAD_HD explicit LeakyRelu(const float* p) : slope(p[0]) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = x > T(0) ? x : MulVanishing(x, T(slope));
    d = x > T(0) ? T(1) : T(slope);
  }

  // f' from the output y alone: y > 0 exactly where x > 0 (negative_slope > 0).
  NESTAD_HD bool HasDerivativeFromOutput() const { return slope > 0.0f; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return y > T(0) ? T(1) : T(slope);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_LEAKY_RELU_H_
