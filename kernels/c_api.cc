// A C interface to nestad's CPU element loops, for frameworks other than
// TensorFlow (Keras 3 on torch: nestad_tf/frameworks/torch_backend.py calls it
// with ctypes on the tensors' memory). The same loops (cpu_loops.h) as the TF kernels and the
// XLA FFI handlers, so results are bit-identical to them; attributes are
// validated by the same functions (ResolveActivation, MakeQuantizer,
// DerivativeFromOutputError); c_api_util.h has what kernels/cuda/c_api_gpu.cc
// (the CUDA kernels' interface) shares with this file.
//
// Every function returns 0, or 1 after writing what is wrong (NUL-terminated,
// at most error_size bytes) to `error`. Tensors are contiguous arrays of n
// elements of `dtype` (c_api_util.h's kDtype*); `threads` is how many threads may run
// the loops (the caller's intra-op thread count): on the caller's OpenMP team
// where it has handed one over (nestad_use_openmp), else on std::threads.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "Eigen/Core"
#include "batch_norm_activation.h"
#include "c_api_util.h"
#include "cpu_loops.h"

namespace nestad {
namespace {

using c_api::Fail;
using c_api::Quantize;
using c_api::Resolve;

// The caller's OpenMP runtime (libgomp's ABI, which LLVM's and Intel's runtimes
// also export), handed over by nestad_use_openmp: torch runs its own ops on this
// team, whose idle threads spin for a while after each op, so threads of our own
// would compete with them for the cores instead of adding any.
struct OpenMP {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                            // omp_get_thread_num
  int (*num_threads)() = nullptr;                                           // omp_get_num_threads
};
OpenMP g_openmp;

template <typename Fn>
struct TeamWork {
  const Fn* fn;
  int64_t num_blocks;

  // Runs on every thread of the team: thread t of T takes the t-th of T ranges.
  static void Run(void* data) {
    const auto* work = static_cast<const TeamWork*>(data);
    const int64_t t = g_openmp.thread_num(), team = std::max(1, g_openmp.num_threads());
    const int64_t begin = work->num_blocks * t / team, end = work->num_blocks * (t + 1) / team;
    if (begin < end) (*work->fn)(begin, end);
  }
};

// The parallel_for of cpu_loops.h on up to `threads` threads (this one included),
// each taking a contiguous range of blocks: the OpenMP team where one was handed
// over, else std::threads.
class ThreadParallelFor {
 public:
  explicit ThreadParallelFor(int threads) : threads_(std::max(1, threads)) {}

  template <typename Fn>
  void operator()(int64_t num_blocks, int64_t cost_per_block, Fn fn) const {
    // ~1M cycles of work per thread at least: a thread start costs ~10-50k.
    constexpr int64_t kMinCostPerThread = 1000000;
    const int64_t by_cost = std::max<int64_t>(1, num_blocks * cost_per_block / kMinCostPerThread);
    const int64_t tasks = std::min<int64_t>({threads_, by_cost, num_blocks});
    if (tasks <= 1) {
      fn(0, num_blocks);
      return;
    }
    if (g_openmp.parallel != nullptr) {
      TeamWork<Fn> work{&fn, num_blocks};
      g_openmp.parallel(&TeamWork<Fn>::Run, &work, static_cast<unsigned>(tasks), 0);
      return;
    }
    std::vector<std::thread> workers;
    workers.reserve(tasks - 1);
    for (int64_t t = 1; t < tasks; ++t) {
      workers.emplace_back([&fn, t, tasks, num_blocks] {
        fn(num_blocks * t / tasks, num_blocks * (t + 1) / tasks);
      });
    }
    fn(0, num_blocks / tasks);
    for (std::thread& worker : workers) worker.join();
  }

 private:
  int threads_;
};

// Calls fn(S()) for the storage type S of dtype; false for an unknown dtype.
template <typename Fn>
bool ForDtype(int dtype, Fn fn) {
  switch (dtype) {
    case c_api::kDtypeFloat16:
      fn(Eigen::half());
      return true;
    case c_api::kDtypeBfloat16:
      fn(Eigen::bfloat16());
      return true;
    case c_api::kDtypeFloat32:
      fn(float());
      return true;
    case c_api::kDtypeFloat64:
      fn(double());
      return true;
    default:
      return false;
  }
}

// Every entry point: 1 and the message if the checks found something wrong (`checked`
// non-empty) or dtype is unknown, else fn(S()) for dtype's storage type S and 0.
template <typename Fn>
int Run(const std::string& checked, int dtype, char* error, int64_t error_size, Fn fn) {
  if (!checked.empty()) return Fail(checked, error, error_size);
  return ForDtype(dtype, fn) ? 0 : Fail(c_api::kBadDtype, error, error_size);
}

// A fused normalization call's activation and layout, its epsilon checked; "" or what
// is wrong.
std::string ResolveNorm(const char* activation, const float* params, int num_params,
                        const int64_t* dims, int rank, int axis, float epsilon, Kind* kind,
                        std::vector<float>* values, NormLayout* layout) {
  if (std::string e = Resolve(activation, params, num_params, kind, values); !e.empty()) return e;
  if (dims == nullptr || rank < 1) return "z must have rank >= 1";
  if (!(epsilon >= 0.0f) || IsInf(epsilon)) return "epsilon must be finite and >= 0";
  std::string shape = "[";
  for (int i = 0; i < rank; ++i) shape += (i ? ", " : "") + std::to_string(dims[i]);
  return MakeNormLayout(dims, rank, axis, shape + "]", layout);
}

}  // namespace
}  // namespace nestad

// Runs the loops' threads on the caller's OpenMP team from now on: the addresses
// of GOMP_parallel, omp_get_thread_num and omp_get_num_threads of the runtime the
// caller's own ops use (all three, or all null for std::threads). Call it before
// any other function, from one thread.
NESTAD_C_API int nestad_use_openmp(void* parallel, void* thread_num, void* num_threads) {
  using namespace nestad;  // NOLINT
  if ((parallel == nullptr) != (thread_num == nullptr) ||
      (parallel == nullptr) != (num_threads == nullptr)) {
    return 1;
  }
  g_openmp.parallel = reinterpret_cast<decltype(g_openmp.parallel)>(parallel);
  g_openmp.thread_num = reinterpret_cast<decltype(g_openmp.thread_num)>(thread_num);
  g_openmp.num_threads = reinterpret_cast<decltype(g_openmp.num_threads)>(num_threads);
  return 0;
}

// y = f(x), d = f'(x) (FusedActivation).
NESTAD_C_API int nestad_fused_forward(const char* activation, const float* params, int num_params,
                                      int dtype, const void* x, void* y, void* d, int64_t n,
                                      int threads, char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  Kind kind;
  std::vector<float> values;
  return Run(Resolve(activation, params, num_params, &kind, &values), dtype, error, error_size,
             [&](auto s) {
    using S = decltype(s);
    RunFusedForward(ThreadParallelFor(threads), kind, values.data(), static_cast<const S*>(x),
                    static_cast<S*>(y), static_cast<S*>(d), n);
  });
}

// dx = dy * d (FusedActivationGrad).
NESTAD_C_API int nestad_fused_backward(int dtype, const void* dy, const void* d, void* dx,
                                       int64_t n, int threads, char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  return Run("", dtype, error, error_size, [&](auto s) {
    using S = decltype(s);
    RunFusedBackward(ThreadParallelFor(threads), static_cast<const S*>(dy),
                     static_cast<const S*>(d), static_cast<S*>(dx), n);
  });
}

// y = f(x) alone (ActivationForward).
NESTAD_C_API int nestad_forward_only(const char* activation, const float* params, int num_params,
                                     int dtype, const void* x, void* y, int64_t n, int threads,
                                     char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  Kind kind;
  std::vector<float> values;
  return Run(Resolve(activation, params, num_params, &kind, &values), dtype, error, error_size,
             [&](auto s) {
    using S = decltype(s);
    RunForwardOnly(ThreadParallelFor(threads), kind, values.data(), static_cast<const S*>(x),
                   static_cast<S*>(y), n);
  });
}

// dx = dy * f'(x), f' recomputed from y (ActivationGradFromOutput).
NESTAD_C_API int nestad_backward_from_output(const char* activation, const float* params,
                                             int num_params, int dtype, const void* dy,
                                             const void* y, void* dx, int64_t n, int threads,
                                             char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  Kind kind;
  std::vector<float> values;
  std::string e = Resolve(activation, params, num_params, &kind, &values);
  if (e.empty()) e = DerivativeFromOutputError(kind, values.data());
  return Run(e, dtype, error, error_size, [&](auto s) {
    using S = decltype(s);
    RunBackwardFromOutput(ThreadParallelFor(threads), kind, values.data(),
                          static_cast<const S*>(dy), static_cast<const S*>(y),
                          static_cast<S*>(dx), n);
  });
}

// Bytes of packed codes for n elements at `bits` bits (what `code` must hold).
NESTAD_C_API int64_t nestad_packed_bytes(int64_t n, int bits) {
  return nestad::PackedBytes(n, bits);
}

// y = f(x), f'(x) packed into nestad_packed_bytes(n, bits) codes (FusedActivationQuantized).
NESTAD_C_API int nestad_quantized_forward(const char* activation, const float* params,
                                          int num_params, const char* format, int bits,
                                          const float* breakpoints, int num_breakpoints,
                                          const float* levels, int num_levels, const float* range,
                                          int num_range, int dtype, const void* x, void* y,
                                          void* code, int64_t n, int threads, char* error,
                                          int64_t error_size) {
  using namespace nestad;  // NOLINT
  Kind kind;
  std::vector<float> values;
  Quantizer q;
  std::string e = Resolve(activation, params, num_params, &kind, &values);
  if (e.empty()) {
    e = Quantize(format, bits, breakpoints, num_breakpoints, levels, num_levels, range, num_range,
                 &q);
  }
  return Run(e, dtype, error, error_size, [&](auto s) {
    using S = decltype(s);
    RunQuantizedForward(ThreadParallelFor(threads), kind, values.data(), q,
                        static_cast<const S*>(x), static_cast<S*>(y),
                        static_cast<uint8_t*>(code), n);
  });
}

// dx = dy * f'(x), f' decoded from the packed codes (ActivationGradQuantized).
NESTAD_C_API int nestad_quantized_backward(const char* format, int bits, const float* breakpoints,
                                           int num_breakpoints, const float* levels,
                                           int num_levels, const float* range, int num_range,
                                           int dtype, const void* dy, const void* code, void* dx,
                                           int64_t n, int threads, char* error,
                                           int64_t error_size) {
  using namespace nestad;  // NOLINT
  Quantizer q;
  return Run(Quantize(format, bits, breakpoints, num_breakpoints, levels, num_levels, range,
                      num_range, &q),
             dtype, error, error_size, [&](auto s) {
    using S = decltype(s);
    RunQuantizedBackward(ThreadParallelFor(threads), q, static_cast<const S*>(dy),
                         static_cast<const uint8_t*>(code), static_cast<S*>(dx), n);
  });
}

// y = f(BN(z)) and the statistics used (BatchNormActivation). z has `rank` dims and
// `dtype`; gamma, beta, mean, variance, batch_mean, batch_variance are vectors of
// z's size along `axis`, float32 (float64 for float64 z).
NESTAD_C_API int nestad_batch_norm_activation(
    const char* activation, const float* params, int num_params, float epsilon, int axis,
    int training, int dtype, const int64_t* dims, int rank, const void* z, const void* gamma,
    const void* beta, const void* mean, const void* variance, void* y, void* batch_mean,
    void* batch_variance, int threads, char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  Kind kind;
  std::vector<float> values;
  NormLayout layout;
  return Run(ResolveNorm(activation, params, num_params, dims, rank, axis, epsilon, &kind,
                         &values, &layout),
             dtype, error, error_size, [&](auto s) {
    using S = decltype(s);
    using U = typename ComputeType<S>::type;
    RunBatchNormActivation<S, U>(ThreadParallelFor(threads), kind, values.data(), layout,
                                 epsilon, training != 0, static_cast<const S*>(z),
                                 static_cast<const U*>(gamma), static_cast<const U*>(beta),
                                 static_cast<const U*>(mean), static_cast<const U*>(variance),
                                 static_cast<S*>(y), static_cast<U*>(batch_mean),
                                 static_cast<U*>(batch_variance));
  });
}

// dz, dgamma, dbeta of the block above, f'(x) recomputed from z (BatchNormActivationGrad);
// mean and variance are the statistics the forward pass used.
NESTAD_C_API int nestad_batch_norm_activation_grad(
    const char* activation, const float* params, int num_params, float epsilon, int axis,
    int training, int dtype, const int64_t* dims, int rank, const void* dy, const void* z,
    const void* gamma, const void* beta, const void* mean, const void* variance, void* dz,
    void* dgamma, void* dbeta, int threads, char* error, int64_t error_size) {
  using namespace nestad;  // NOLINT
  Kind kind;
  std::vector<float> values;
  NormLayout layout;
  return Run(ResolveNorm(activation, params, num_params, dims, rank, axis, epsilon, &kind,
                         &values, &layout),
             dtype, error, error_size, [&](auto s) {
    using S = decltype(s);
    using U = typename ComputeType<S>::type;
    RunBatchNormActivationGrad<S, U>(
        ThreadParallelFor(threads), kind, values.data(), layout, epsilon, training != 0,
        static_cast<const S*>(dy), static_cast<const S*>(z), static_cast<const U*>(gamma),
        static_cast<const U*>(beta), static_cast<const U*>(mean),
        static_cast<const U*>(variance), static_cast<S*>(dz), static_cast<U*>(dgamma),
        static_cast<U*>(dbeta));
  });
}
