#ifndef NESTAD_KERNELS_ACTIVATIONS_SPARSE_PLUS_H_
#define NESTAD_KERNELS_ACTIVATIONS_SPARSE_PLUS_H_

#include "../common.h"

namespace nestad {

// sparse_plus: y = 0 for x <= -1, (x + 1)^2 / 4 for -1 < x < 1, x for x >= 1;
// f' = 0, (x + 1) / 2, 1 on the same pieces.
struct SparsePlus : NoParamCheck {
  static constexpr int kNumParams = 0;
  NESTAD_HD explicit SparsePlus(const float*) {}
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T h = T(0.5) * (x + T(1));
    y = x <= T(-1) ? T(0) : (x < T(1) ? h * h : x);
    d = x <= T(-1) ? T(0) : (x < T(1) ? h : T(1));
  }

  // f' from the output y alone: (x+1)/2 = sqrt(y) on the middle piece, 0 and 1 outside.
  NESTAD_HD bool HasDerivativeFromOutput() const { return true; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    return Min(Sqrt(y), T(1));
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SPARSE_PLUS_H_
