#ifndef NESTAD_KERNELS_ACTIVATIONS_SQUAREPLUS_H_
#define NESTAD_KERNELS_ACTIVATIONS_SQUAREPLUS_H_

#include "../common.h"

namespace nestad {

// squareplus: y = (x + r) / 2 with r = sqrt(x^2 + b); f' = (1 + x / r) / 2.
// For x < 0 both are rewritten without cancellation: y = b / (2 (r - x)),
// f' = b / (2 r (r - x)); r is computed as |x| sqrt(1 + b / x^2) for |x| > 1 so
// that x^2 never overflows, and y = x/2 + r/2 so that x + r cannot overflow near the
// largest finite x. With b = 0 (relu), f'(0) is the right derivative, 1.
// Tails: -inf gives (0, 0); +inf gives (+inf, 1).
struct Squareplus {
  static constexpr int kNumParams = 1;  // b
  float b;
  NESTAD_HD explicit Squareplus(const float* p) : b(p[0]) {}
  static const char* Check(const float* p) {
    return p[0] >= 0.0f && !IsInf(p[0]) ? nullptr : "squareplus: b must be finite and >= 0";
  }
  template <typename T>
  NESTAD_HD void operator()(T x, T& y, T& d) const {
    const T bb = T(b), ax = Abs(x);
    const T r = ax > T(1) ? ax * Sqrt(T(1) + (bb / ax) / ax) : Sqrt(x * x + bb);
    const T x_over_r = r == T(0) ? T(1) : (IsInf(x) ? T(1) : x / r);
    // b = 0, x < 0: exactly 0 (r * (r - x) = 2x^2 underflows to 0 for tiny x: no 0/0).
    const bool zero = bb == T(0);
    y = x >= T(0) ? T(0.5) * x + T(0.5) * r : (zero ? T(0) : T(0.5) * bb / (r - x));
    d = x >= T(0) ? T(0.5) * (T(1) + x_over_r) : (zero ? T(0) : T(0.5) * bb / (r * (r - x)));
  }

  // f' from the output y alone: x = y - b/(4y), so f' = 4y^2 / (4y^2 + b) (b > 0).
  NESTAD_HD bool HasDerivativeFromOutput() const { return b > 0.0f; }
  template <typename T>
  NESTAD_HD T DerivativeFromOutput(T y) const {
    const T q = T(b) / (T(4) * y * y);  // +inf as y -> 0+, 0 as y -> inf: no inf/inf
    return T(1) / (T(1) + q);
  }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_ACTIVATIONS_SQUAREPLUS_H_
