// What the CPU OpKernels of nestad share: the element loops (cpu_loops.h,
// shared with the XLA FFI handlers) run on TF's intra-op thread pool.
#ifndef NESTAD_KERNELS_CPU_KERNEL_UTIL_H_
#define NESTAD_KERNELS_CPU_KERNEL_UTIL_H_

#define EIGEN_USE_THREADS

#include <cstdint>

#include "cpu_loops.h"
#include "op_util.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace nestad {

// The parallel_for of cpu_loops.h on the op's intra-op thread pool.
class IntraOpParallelFor {
 public:
  explicit IntraOpParallelFor(tensorflow::OpKernelContext* ctx)
      : pool_(ctx->device()->tensorflow_cpu_worker_threads()->workers) {}

  template <typename Fn>
  void operator()(int64_t num_blocks, int64_t cost_per_block, Fn fn) const {
    pool_->ParallelFor(num_blocks, cost_per_block, fn);
  }

 private:
  tensorflow::thread::ThreadPool* pool_;
};

}  // namespace nestad

#endif  // NESTAD_KERNELS_CPU_KERNEL_UTIL_H_
