// What the CPU OpKernels of nestad share: the element loops' clone attribute,
// the fused forward loop and block-wise sharding over TF's intra-op thread pool.
#ifndef NESTAD_KERNELS_CPU_KERNEL_UTIL_H_
#define NESTAD_KERNELS_CPU_KERNEL_UTIL_H_

#define EIGEN_USE_THREADS

#include <algorithm>
#include <string>
#include <vector>

#include "fused_activation.h"
#include "op_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace nestad {

// Elements are handed to threads in blocks of this many (a multiple of the
// 8-element packing group), so that every element is computed by the same code
// path (vector body or scalar tail) whatever the number of threads: results
// are bit-identical across thread counts.
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

// Runs fn(begin, end) over [0, n) in kBlock-aligned ranges on the intra-op pool.
template <typename Fn>
void ParallelForBlocks(tensorflow::OpKernelContext* ctx, int64_t n, int64_t cost_per_element,
                       Fn fn) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(num_blocks, kBlock * cost_per_element, [&](int64_t first, int64_t last) {
    fn(first * kBlock, std::min(last * kBlock, n));
  });
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_CPU_KERNEL_UTIL_H_
