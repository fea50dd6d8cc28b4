// XLA FFI handlers of nestad's ops for platform "Host" (XLA:CPU): the custom
// calls that xla_lowering.cc emits under jit_compile. They run the same element
// loops as the TF CPU kernels (cpu_loops.h), sharded in the same kBlock-aligned
// ranges over XLA's intra-op thread pool, so results are bit-identical to graph
// mode. Attributes are validated again here (the lowering validated them at
// compile time); a bad one is an InvalidArgument naming the target.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "Eigen/Core"
#include "batch_norm_activation.h"
#include "cpu_loops.h"
#include "xla/ffi/api/ffi.h"
#include "xla_custom_call.h"

namespace nestad {
namespace {

namespace ffi = ::xla::ffi;
using xla_call::BitsSpan;

// The parallel_for of cpu_loops.h on XLA's FFI thread pool. The calling thread
// claims blocks too, and waits only until every block is done (not until every
// scheduled task has started), so it cannot deadlock when the pool is busy or
// when it is itself a pool thread; a task that starts late finds no block left
// and touches only the shared counters.
class FfiParallelFor {
 public:
  explicit FfiParallelFor(ffi::ThreadPool pool) : pool_(pool) {}

  template <typename Fn>
  void operator()(int64_t num_blocks, int64_t cost_per_block, Fn fn) const {
    // ~100k cycles of work per task at least, as Eigen's cost model aims for.
    constexpr int64_t kMinCostPerTask = 100000;
    const int64_t by_cost = std::max<int64_t>(1, num_blocks * cost_per_block / kMinCostPerTask);
    const int64_t tasks = std::min<int64_t>({pool_.num_threads() + 1, by_cost, num_blocks});
    if (tasks <= 1) {
      fn(0, num_blocks);
      return;
    }
    struct State {
      std::atomic<int64_t> next{0};
      int64_t done = 0;
      std::mutex mu;
      std::condition_variable all_done;
    };
    auto state = std::make_shared<State>();
    // Several chunks per task, so that threads that start late still get work.
    const int64_t chunk = std::max<int64_t>(1, num_blocks / (tasks * 4));
    const Fn* body = &fn;
    auto work = [state, body, num_blocks, chunk]() {
      for (;;) {
        const int64_t first = state->next.fetch_add(chunk);
        if (first >= num_blocks) return;
        const int64_t last = std::min(first + chunk, num_blocks);
        (*body)(first, last);
        std::lock_guard<std::mutex> lock(state->mu);
        state->done += last - first;
        if (state->done == num_blocks) state->all_done.notify_all();
      }
    };
    for (int64_t t = 1; t < tasks; ++t) pool_.Schedule(decltype(work)(work));  // a copy each
    work();
    std::unique_lock<std::mutex> lock(state->mu);
    state->all_done.wait(lock, [&] { return state->done == num_blocks; });
  }

 private:
  mutable ffi::ThreadPool pool_;
};

// Calls fn(S()) for the storage type S of `type`; InvalidArgument for other types.
template <typename Fn>
ffi::Error ForStorageType(const char* target, ffi::DataType type, Fn fn) {
  switch (type) {
    case ffi::DataType::F16:
      return fn(Eigen::half());
    case ffi::DataType::BF16:
      return fn(Eigen::bfloat16());
    case ffi::DataType::F32:
      return fn(float());
    case ffi::DataType::F64:
      return fn(double());
    default:
      return ffi::Error::InvalidArgument(std::string(target) +
                                         ": x must be float16, bfloat16, float32 or float64");
  }
}

template <typename S>
S* Data(const ffi::AnyBuffer& buffer) {
  return static_cast<S*>(buffer.untyped_data());
}

ffi::Error FusedActivationHost(ffi::ThreadPool pool, ffi::AnyBuffer x,
                               ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> d,
                               std::string_view activation, BitsSpan params) {
  const char* target = xla_call::kFusedActivation;
  xla_call::Activation a;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeActivation(target, activation, params, &a));
  return ForStorageType(target, x.element_type(), [&](auto s) {
    using S = decltype(s);
    RunFusedForward(FfiParallelFor(pool), a.kind, a.params.data(), Data<const S>(x), Data<S>(*y),
                    Data<S>(*d), static_cast<int64_t>(x.element_count()));
    return ffi::Error::Success();
  });
}

ffi::Error FusedActivationGradHost(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer d,
                                   ffi::Result<ffi::AnyBuffer> dx) {
  const char* target = xla_call::kFusedActivationGrad;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::SameElements(target, dy, d));
  return ForStorageType(target, dy.element_type(), [&](auto s) {
    using S = decltype(s);
    RunFusedBackward(FfiParallelFor(pool), Data<const S>(dy), Data<const S>(d), Data<S>(*dx),
                     static_cast<int64_t>(dy.element_count()));
    return ffi::Error::Success();
  });
}

ffi::Error ActivationForwardHost(ffi::ThreadPool pool, ffi::AnyBuffer x,
                                 ffi::Result<ffi::AnyBuffer> y, std::string_view activation,
                                 BitsSpan params) {
  const char* target = xla_call::kActivationForward;
  xla_call::Activation a;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeActivation(target, activation, params, &a));
  return ForStorageType(target, x.element_type(), [&](auto s) {
    using S = decltype(s);
    RunForwardOnly(FfiParallelFor(pool), a.kind, a.params.data(), Data<const S>(x), Data<S>(*y),
                   static_cast<int64_t>(x.element_count()));
    return ffi::Error::Success();
  });
}

ffi::Error ActivationGradFromOutputHost(ffi::ThreadPool pool, ffi::AnyBuffer dy,
                                        ffi::AnyBuffer y, ffi::Result<ffi::AnyBuffer> dx,
                                        std::string_view activation, BitsSpan params) {
  const char* target = xla_call::kActivationGradFromOutput;
  xla_call::Activation a;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeGradFromOutput(target, activation, params, dy, y, &a));
  return ForStorageType(target, dy.element_type(), [&](auto s) {
    using S = decltype(s);
    RunBackwardFromOutput(FfiParallelFor(pool), a.kind, a.params.data(), Data<const S>(dy),
                          Data<const S>(y), Data<S>(*dx),
                          static_cast<int64_t>(dy.element_count()));
    return ffi::Error::Success();
  });
}

ffi::Error FusedActivationQuantizedHost(ffi::ThreadPool pool, ffi::AnyBuffer x,
                                        ffi::Result<ffi::AnyBuffer> y,
                                        ffi::Result<ffi::AnyBuffer> code,
                                        std::string_view activation, BitsSpan params,
                                        std::string_view format, int32_t bits,
                                        BitsSpan breakpoints, BitsSpan levels, BitsSpan range) {
  const char* target = xla_call::kFusedActivationQuantized;
  xla_call::Activation a;
  Quantizer q;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeQuantizedForward(
      target, activation, params, format, bits, breakpoints, levels, range, x, *code, &a, &q));
  const int64_t n = static_cast<int64_t>(x.element_count());
  return ForStorageType(target, x.element_type(), [&](auto s) {
    using S = decltype(s);
    RunQuantizedForward(FfiParallelFor(pool), a.kind, a.params.data(), q, Data<const S>(x),
                        Data<S>(*y), Data<uint8_t>(*code), n);
    return ffi::Error::Success();
  });
}

ffi::Error ActivationGradQuantizedHost(ffi::ThreadPool pool, ffi::AnyBuffer dy,
                                       ffi::AnyBuffer code, ffi::Result<ffi::AnyBuffer> dx,
                                       std::string_view format, int32_t bits,
                                       BitsSpan breakpoints, BitsSpan levels, BitsSpan range) {
  const char* target = xla_call::kActivationGradQuantized;
  Quantizer q;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeQuantizedBackward(
      target, format, bits, breakpoints, levels, range, dy, code, &q));
  const int64_t n = static_cast<int64_t>(dy.element_count());
  return ForStorageType(target, dy.element_type(), [&](auto s) {
    using S = decltype(s);
    RunQuantizedBackward(FfiParallelFor(pool), q, Data<const S>(dy), Data<const uint8_t>(code),
                         Data<S>(*dx), n);
    return ffi::Error::Success();
  });
}

// A BatchNormActivation(Grad) call's attributes and layout.
struct NormCall {
  xla_call::Activation activation;
  NormLayout layout;
  float epsilon = 0.0f;
};

// Decodes a call's attributes and checks them against its buffers: z of a float
// type, the per-channel buffers (gamma, beta, mean, variance) of z's compute type.
ffi::Error DecodeNorm(const char* target, const ffi::AnyBuffer& z,
                      const ffi::AnyBuffer (&vectors)[4], std::string_view activation,
                      BitsSpan params, BitsSpan epsilon, int32_t axis, NormCall* call) {
  NESTAD_FFI_RETURN_IF_ERROR(
      xla_call::DecodeActivation(target, activation, params, &call->activation));
  NormLayout* layout = &call->layout;
  const std::vector<int64_t> dims(z.dimensions().begin(), z.dimensions().end());
  std::string error = epsilon.size() == 1 ? "" : "epsilon must be one value";
  if (error.empty()) {
    error = MakeNormLayout(dims.data(), static_cast<int>(dims.size()), axis, "(rank " +
                           std::to_string(dims.size()) + ")", layout);
  }
  const ffi::DataType stats =
      z.element_type() == ffi::DataType::F64 ? ffi::DataType::F64 : ffi::DataType::F32;
  for (int i = 0; i < 4 && error.empty(); ++i) {
    error = CheckChannelInput(kChannelInputNames[i], static_cast<int>(vectors[i].dimensions().size()),
                              static_cast<int64_t>(vectors[i].element_count()), axis, *layout,
                              "(" + std::to_string(vectors[i].element_count()) + " elements)");
    if (error.empty() && vectors[i].element_type() != stats) {
      error = std::string(kChannelInputNames[i]) + " must be float32 (float64 for float64 z)";
    }
  }
  if (!error.empty()) return ffi::Error::InvalidArgument(std::string(target) + ": " + error);
  call->epsilon = xla_call::FromBits(epsilon)[0];
  return ffi::Error::Success();
}

template <typename S>
using Stats = typename ComputeType<S>::type;

ffi::Error BatchNormActivationHost(ffi::ThreadPool pool, ffi::AnyBuffer z, ffi::AnyBuffer gamma,
                                   ffi::AnyBuffer beta, ffi::AnyBuffer mean,
                                   ffi::AnyBuffer variance, ffi::Result<ffi::AnyBuffer> y,
                                   ffi::Result<ffi::AnyBuffer> batch_mean,
                                   ffi::Result<ffi::AnyBuffer> batch_variance,
                                   std::string_view activation, BitsSpan params,
                                   BitsSpan epsilon, int32_t axis, int32_t training) {
  const char* target = xla_call::kBatchNormActivation;
  NormCall c;
  NESTAD_FFI_RETURN_IF_ERROR(DecodeNorm(target, z, {gamma, beta, mean, variance}, activation,
                                        params, epsilon, axis, &c));
  return ForStorageType(target, z.element_type(), [&](auto s) {
    using S = decltype(s);
    using U = Stats<S>;
    RunBatchNormActivation<S, U>(FfiParallelFor(pool), c.activation.kind,
                                 c.activation.params.data(), c.layout, c.epsilon, training != 0, Data<const S>(z), Data<const U>(gamma),
                                 Data<const U>(beta), Data<const U>(mean),
                                 Data<const U>(variance), Data<S>(*y), Data<U>(*batch_mean),
                                 Data<U>(*batch_variance));
    return ffi::Error::Success();
  });
}

ffi::Error BatchNormActivationGradHost(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer z,
                                       ffi::AnyBuffer gamma, ffi::AnyBuffer beta,
                                       ffi::AnyBuffer mean, ffi::AnyBuffer variance,
                                       ffi::Result<ffi::AnyBuffer> dz,
                                       ffi::Result<ffi::AnyBuffer> dgamma,
                                       ffi::Result<ffi::AnyBuffer> dbeta,
                                       std::string_view activation, BitsSpan params,
                                       BitsSpan epsilon, int32_t axis, int32_t training) {
  const char* target = xla_call::kBatchNormActivationGrad;
  NormCall c;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::SameElements(target, dy, z));
  NESTAD_FFI_RETURN_IF_ERROR(DecodeNorm(target, z, {gamma, beta, mean, variance}, activation,
                                        params, epsilon, axis, &c));
  return ForStorageType(target, z.element_type(), [&](auto s) {
    using S = decltype(s);
    using U = Stats<S>;
    RunBatchNormActivationGrad<S, U>(
        FfiParallelFor(pool), c.activation.kind, c.activation.params.data(), c.layout,
        c.epsilon, training != 0,
        Data<const S>(dy), Data<const S>(z), Data<const U>(gamma), Data<const U>(beta),
        Data<const U>(mean), Data<const U>(variance), Data<S>(*dz), Data<U>(*dgamma),
        Data<U>(*dbeta));
    return ffi::Error::Success();
  });
}

}  // namespace

// The bindings (in the order of each handler's parameters) and registrations.
NESTAD_XLA_FFI_HANDLERS(Host, ::xla::ffi::ThreadPool, "Host");

#define NESTAD_NORM_BUFFERS(binding)                                                   \
  binding.Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()            \
      .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()               \
      .Ret<ffi::AnyBuffer>()
// XLA:CPU only: the fused normalization has no CUDA kernels yet.
NESTAD_XLA_FFI_HANDLER(BatchNormActivation, Host, "Host",
                       xla_call::BindNorm(NESTAD_NORM_BUFFERS(
                           NESTAD_XLA_FFI_BUFFERS(ffi::ThreadPool))));
NESTAD_XLA_FFI_HANDLER(BatchNormActivationGrad, Host, "Host",
                       xla_call::BindNorm(NESTAD_NORM_BUFFERS(
                           NESTAD_XLA_FFI_BUFFERS(ffi::ThreadPool).Arg<ffi::AnyBuffer>())));
#undef NESTAD_NORM_BUFFERS

}  // namespace nestad

// The Host handler of a custom-call target, for XLA runtimes other than
// TensorFlow's (JAX: nestad_tf/frameworks/jax_backend.py registers them with
// jax.ffi); nullptr
// for an unknown target. The handlers speak XLA's versioned C FFI API.
extern "C" __attribute__((visibility("default"))) void* nestad_xla_ffi_host_handler(
    const char* target) {
  static constexpr ::nestad::xla_call::HandlerEntry kHandlers[] = {
      NESTAD_XLA_FFI_ENTRY(FusedActivation, Host),
      NESTAD_XLA_FFI_ENTRY(FusedActivationGrad, Host),
      NESTAD_XLA_FFI_ENTRY(ActivationForward, Host),
      NESTAD_XLA_FFI_ENTRY(ActivationGradFromOutput, Host),
      NESTAD_XLA_FFI_ENTRY(FusedActivationQuantized, Host),
      NESTAD_XLA_FFI_ENTRY(ActivationGradQuantized, Host),
      NESTAD_XLA_FFI_ENTRY(BatchNormActivation, Host),
      NESTAD_XLA_FFI_ENTRY(BatchNormActivationGrad, Host),
  };
  return ::nestad::xla_call::HandlerFor(target, kHandlers);
}
