// The CPU element loops of every nestad op, free of TensorFlow, so that the
// TF OpKernels (fused_activation_ops.cc, storage_ops.cc) and the XLA FFI
// handlers (xla_cpu_ffi.cc) run the same vectorized code and give bit-identical
// results.
//
// Each Run* function computes one op over n elements. It hands the work to
// `parallel_for(num_blocks, cost_per_block, fn)`, which must call
// fn(first_block, last_block) over a partition of [0, num_blocks) (TF's
// intra-op pool, XLA's FFI thread pool, or inline). Elements go to threads in
// kBlock-aligned ranges, so every element runs through the same code path
// (vector body or scalar tail) whatever the number of threads.
#ifndef NESTAD_KERNELS_CPU_LOOPS_H_
#define NESTAD_KERNELS_CPU_LOOPS_H_

#include <algorithm>
#include <cstdint>

#include "fused_activation.h"
#include "storage.h"

namespace nestad {

// Elements per block handed to one thread: a multiple of the 8-element packing group.
constexpr int64_t kBlock = 256;

// Element loops are compiled for AVX-512, AVX2+FMA and baseline x86-64; the
// loader picks the clone for the running CPU. Other architectures get one version.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NESTAD_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NESTAD_CPU_CLONES
#endif

// y = f(x) and d = f'(x) over [begin, end), d in the storage type (the fused op)
// or the compute type (a block buffer the quantized op encodes from).
template <typename Functor, typename S, typename D>
NESTAD_CPU_CLONES void ForwardRange(const Functor f, const S* x, S* y, D* __restrict d,
                                    int64_t begin, int64_t end) {
  using C = typename ComputeType<S>::type;
  for (int64_t i = begin; i < end; ++i) {
    C yc, dc;
    FusedForwardCompute(f, static_cast<C>(x[i]), yc, dc);
    y[i] = static_cast<S>(yc);
    d[i] = static_cast<D>(dc);
  }
}

template <typename S>
NESTAD_CPU_CLONES void BackwardRange(const S* dy, const S* d, S* dx, int64_t begin,
                                     int64_t end) {
  for (int64_t i = begin; i < end; ++i) dx[i] = FusedBackwardElement(dy[i], d[i]);
}

template <typename Functor, typename S>
NESTAD_CPU_CLONES void ForwardOnlyRange(const Functor f, const S* x, S* y, int64_t begin,
                                        int64_t end) {
  for (int64_t i = begin; i < end; ++i) y[i] = ForwardOnlyElement(f, x[i]);
}

template <typename Functor, typename S>
NESTAD_CPU_CLONES void BackwardFromOutputRange(const Functor f, const S* dy, const S* y, S* dx,
                                               int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) dx[i] = BackwardFromOutputElement(f, dy[i], y[i]);
}

// begin is a multiple of kBlock; the last group may be partial (padded with code 0).
// Per block, y and f' come from the same vectorized loop as the fused op (so y is
// bit-identical to it); f' lives only in a block-sized stack buffer before encoding.
template <typename Functor, typename S>
void QuantizedForwardRange(const Functor f, const Quantizer& q, const S* x, S* y, uint8_t* code,
                           int64_t begin, int64_t end) {
  using C = typename ComputeType<S>::type;
  C d[kBlock];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t count = std::min(kBlock, end - start);
    ForwardRange(f, x + start, y + start, d, 0, count);
    for (int64_t g = 0; g < count; g += kGroup) {
      uint32_t codes[kGroup] = {};
      for (int i = 0; i < kGroup && g + i < count; ++i) {
        codes[i] = q.Encode(static_cast<C>(x[start + g + i]), d[g + i]);
      }
      PackGroup(codes, q.bits, code + (start + g) / kGroup * q.bits);
    }
  }
}

template <typename S>
void QuantizedBackwardRange(const Quantizer& q, const S* dy, const uint8_t* code, S* dx, int64_t n,
                            int64_t begin, int64_t end) {
  using C = typename ComputeType<S>::type;
  for (int64_t g = begin; g < end; g += kGroup) {
    uint32_t codes[kGroup];
    UnpackGroup(code + g / kGroup * q.bits, q.bits, codes);
    for (int i = 0; i < kGroup && g + i < n; ++i) {
      dx[g + i] = static_cast<S>(static_cast<C>(dy[g + i]) * static_cast<C>(q.Decode(codes[i])));
    }
  }
}

// Calls fn(begin, end) over [0, n) in kBlock-aligned element ranges through parallel_for.
template <typename ParallelFor, typename Fn>
void ForBlocks(const ParallelFor& parallel_for, int64_t n, int64_t cost_per_element, Fn fn) {
  if (n <= 0) return;
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  parallel_for(num_blocks, kBlock * cost_per_element, [&](int64_t first, int64_t last) {
    fn(first * kBlock, std::min(last * kBlock, n));
  });
}

// ---- The ops, one function each (the costs are per element, for sharding) ----

// FusedActivation: y = f(x), d = f'(x).
template <typename S, typename ParallelFor>
void RunFusedForward(const ParallelFor& pf, Kind kind, const float* params, const S* x, S* y,
                     S* d, int64_t n) {
  ForBlocks(pf, n, 40, [&](int64_t begin, int64_t end) {
    VisitActivation(kind, params, [&](auto f) {
      ForwardRange(f, x, y, d, begin, end);
      return 0;
    });
  });
}

// FusedActivationGrad: dx = dy * d.
template <typename S, typename ParallelFor>
void RunFusedBackward(const ParallelFor& pf, const S* dy, const S* d, S* dx, int64_t n) {
  ForBlocks(pf, n, 2, [&](int64_t begin, int64_t end) { BackwardRange(dy, d, dx, begin, end); });
}

// ActivationForward: y = f(x) alone.
template <typename S, typename ParallelFor>
void RunForwardOnly(const ParallelFor& pf, Kind kind, const float* params, const S* x, S* y,
                    int64_t n) {
  ForBlocks(pf, n, 30, [&](int64_t begin, int64_t end) {
    VisitActivation(kind, params, [&](auto f) {
      ForwardOnlyRange(f, x, y, begin, end);
      return 0;
    });
  });
}

// ActivationGradFromOutput: dx = dy * f'(x), f' from y (callers check
// HasDerivativeFromOutput first; other activations leave dx untouched).
template <typename S, typename ParallelFor>
void RunBackwardFromOutput(const ParallelFor& pf, Kind kind, const float* params, const S* dy,
                           const S* y, S* dx, int64_t n) {
  ForBlocks(pf, n, 10, [&](int64_t begin, int64_t end) {
    VisitActivation(kind, params, [&](auto f) {
      if constexpr (SupportsDerivativeFromOutput<decltype(f)>::value) {
        BackwardFromOutputRange(f, dy, y, dx, begin, end);
      }
      return 0;
    });
  });
}

// FusedActivationQuantized: y = f(x) and f'(x) packed into PackedBytes(n, q.bits) codes.
template <typename S, typename ParallelFor>
void RunQuantizedForward(const ParallelFor& pf, Kind kind, const float* params,
                         const Quantizer& q, const S* x, S* y, uint8_t* code, int64_t n) {
  ForBlocks(pf, n, 50, [&](int64_t begin, int64_t end) {
    VisitActivation(kind, params, [&](auto f) {
      QuantizedForwardRange(f, q, x, y, code, begin, end);
      return 0;
    });
  });
}

// ActivationGradQuantized: dx = dy * f'(x), decoded from the packed codes.
template <typename S, typename ParallelFor>
void RunQuantizedBackward(const ParallelFor& pf, const Quantizer& q, const S* dy,
                          const uint8_t* code, S* dx, int64_t n) {
  ForBlocks(pf, n, 6, [&](int64_t begin, int64_t end) {
    QuantizedBackwardRange(q, dy, code, dx, n, begin, end);
  });
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_CPU_LOOPS_H_
