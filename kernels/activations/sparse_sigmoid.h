#ifndef NESTAD_KERNELS_ACTIVATIONS_SPARSE_SIGMOID_H_
#define NESTAD_KERNELS_ACTIVATIONS_SPARSE_SIGMOID_H_

#include "../common.h"

namespace nestad {

// sparse_sigmoid: y = 0 for x <= -1, (x + 1) / 2 for -1 < x < 1, 1 for x >= 1;
// f' = 1/2 for -1 < x < 1 else 0.
struct SparseSigmoid : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit SparseSigmoid(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    y = x <= T(-1) ? T(0) : (x >= T(1) ? T(1) : T(0.5) * (x + T(1)));
    d = (x > T(-1) && x < T(1)) ? T(0.5) : T(0);
  }

  // f' from the output y alone: 0 < y < 1 exactly where -1 < x < 1.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return (y > T(0) && y < T(1)) ? T(0.5) : T(0);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SPARSE_SIGMOID_H_
