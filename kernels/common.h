// Shared helpers for the per-activation functors in kernels/activations/.
//
// Every functor is compiled twice from the same source: by g++ for the CPU
// kernels (fused_activation.cc) and by nvcc for the CUDA kernels (cuda/).
// Functors compute in `float` (for float16, bfloat16 and float32 tensors) or
// `double` (for float64 tensors); see AccumulatorType below.
#ifndef NESTAD_KERNELS_COMMON_H_
#define NESTAD_KERNELS_COMMON_H_

#include <math.h>

#if defined(__CUDACC__)
#define NESTAD_HD __host__ __device__ __forceinline__
#else
#define NESTAD_HD inline

// glibc declares SIMD variants of its math functions (libmvec) only under
// -ffast-math. We never build with -ffast-math (it would change the whole
// process' floating-point state), so we declare them ourselves: with
// -fno-math-errno, g++ then calls the vector variants from vectorized loops.
// The IEEE semantics of the scalar functions are kept.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && \
    !defined(__clang__) && !defined(NESTAD_NO_LIBMVEC)
#define NESTAD_SIMD_DECL __attribute__((__simd__("notinbranch")))
extern "C" {
NESTAD_SIMD_DECL float expf(float) noexcept;
NESTAD_SIMD_DECL double exp(double) noexcept;
NESTAD_SIMD_DECL float logf(float) noexcept;
NESTAD_SIMD_DECL double log(double) noexcept;
#if __GLIBC_PREREQ(2, 35)
NESTAD_SIMD_DECL float expm1f(float) noexcept;
NESTAD_SIMD_DECL double expm1(double) noexcept;
NESTAD_SIMD_DECL float log1pf(float) noexcept;
NESTAD_SIMD_DECL double log1p(double) noexcept;
NESTAD_SIMD_DECL float tanhf(float) noexcept;
NESTAD_SIMD_DECL double tanh(double) noexcept;
NESTAD_SIMD_DECL float erfcf(float) noexcept;
NESTAD_SIMD_DECL double erfc(double) noexcept;
#endif
}
#undef NESTAD_SIMD_DECL
#endif  // x86-64 glibc g++
#endif  // __CUDACC__

namespace nestad {

// Scalar math for the two compute types. Global C functions are called on
// purpose: they are what libmvec (host) and libdevice (CUDA) provide.
NESTAD_HD float Exp(float x) { return ::expf(x); }
NESTAD_HD double Exp(double x) { return ::exp(x); }
NESTAD_HD float Expm1(float x) { return ::expm1f(x); }
NESTAD_HD double Expm1(double x) { return ::expm1(x); }
NESTAD_HD float Log1p(float x) { return ::log1pf(x); }
NESTAD_HD double Log1p(double x) { return ::log1p(x); }
NESTAD_HD float Tanh(float x) { return ::tanhf(x); }
NESTAD_HD double Tanh(double x) { return ::tanh(x); }
NESTAD_HD float Erfc(float x) { return ::erfcf(x); }
NESTAD_HD double Erfc(double x) { return ::erfc(x); }
NESTAD_HD float Sqrt(float x) { return ::sqrtf(x); }
NESTAD_HD double Sqrt(double x) { return ::sqrt(x); }

// Branch-free helpers (they compile to selects, so loops stay vectorizable).
// NaN handling is done once by the generic kernels, not here.
template <typename T>
NESTAD_HD T Abs(T x) { return x < T(0) ? -x : x; }
template <typename T>
NESTAD_HD T Min(T a, T b) { return b < a ? b : a; }
template <typename T>
NESTAD_HD T Max(T a, T b) { return a < b ? b : a; }
template <typename T>
NESTAD_HD T Infinity() { return T(HUGE_VAL); }
template <typename T>
NESTAD_HD bool IsInf(T x) { return Abs(x) == Infinity<T>(); }

// x * v for a factor v that decays faster than x grows (x * exp(-x),
// x * sigmoid(x) at -inf, ...): the limit 0 once v has underflowed to 0, so
// that x = +-inf gives 0 instead of NaN.
template <typename T>
NESTAD_HD T MulVanishing(T x, T v) { return v == T(0) ? T(0) : x * v; }

// The logistic function and its complement from z = exp(-|x|), without
// overflow or cancellation anywhere on the real line.
template <typename T>
NESTAD_HD T SigmoidFromZ(T x, T z) {
  return x >= T(0) ? T(1) / (T(1) + z) : z / (T(1) + z);
}

// Every functor has this shape:
//   struct Name : NoParamCheck {
//     static constexpr int kNumParams = ...;
//     NESTAD_HD explicit Name(const float* params);
//     template <typename T> NESTAD_HD void operator()(T x, T& y, T& d) const;
//   };
// computing y = f(x) and d = f'(x) together. A functor with constraints on
// its parameters overrides Check() (returns an error message or nullptr).
struct NoParamCheck {
  static const char* Check(const float* /*params*/) { return nullptr; }
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_COMMON_H_
