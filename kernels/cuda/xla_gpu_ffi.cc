// XLA FFI handlers of nestad's ops for platform "CUDA" (XLA:GPU): the custom
// calls that kernels/xla_lowering.cc emits under jit_compile, launched through
// the TF-free API of fused_activation_gpu.h on the stream XLA passes, so XLA
// runs the same CUDA kernels as the TF GPU ops (the same f' codes, byte for
// byte). Compiled by the C++ compiler against XLA's header-only FFI API (no
// CUDA or TF headers), into the TF GPU library, and with
// NESTAD_XLA_FFI_UNREGISTERED into the TF-free CUDA library of Keras' JAX
// backend (nestad_tf/_nestad_cuda.so), which hands them to jax.ffi through
// nestad_xla_ffi_cuda_handler.
#include <cstdint>
#include <string>
#include <string_view>

#include "../storage.h"
#include "../xla_custom_call.h"
#include "fused_activation_gpu.h"
#include "xla/ffi/api/ffi.h"

namespace nestad {
namespace {

namespace ffi = ::xla::ffi;
using xla_call::BitsSpan;

// The element type of a buffer, or false for a type the kernels do not take.
bool ElementTypeOf(const ffi::AnyBuffer& buffer, gpu::ElementType* type) {
  switch (buffer.element_type()) {
    case ffi::DataType::F16:
      *type = gpu::ElementType::kFloat16;
      return true;
    case ffi::DataType::BF16:
      *type = gpu::ElementType::kBFloat16;
      return true;
    case ffi::DataType::F32:
      *type = gpu::ElementType::kFloat32;
      return true;
    case ffi::DataType::F64:
      *type = gpu::ElementType::kFloat64;
      return true;
    default:
      return false;
  }
}

ffi::Error TypeError(const char* target) {
  return ffi::Error::InvalidArgument(std::string(target) +
                                     ": x must be float16, bfloat16, float32 or float64");
}

ffi::Error LaunchError(const char* target, const char* error) {
  if (error == nullptr) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(target) + " GPU launch: " + error);
}

ffi::Error Forward(const char* target, CUstream_st* stream, const xla_call::Activation& a,
                   gpu::DerivativeStorage storage, const ffi::AnyBuffer& x, void* y,
                   void* derivative, const Quantizer* quantizer) {
  gpu::ForwardArgs args;
  if (!ElementTypeOf(x, &args.type)) return TypeError(target);
  args.kind = a.kind;
  args.params = a.params.data();
  args.storage = storage;
  args.n = static_cast<int64_t>(x.element_count());
  args.x = x.untyped_data();
  args.y = y;
  args.derivative = derivative;
  args.quantizer = quantizer;
  return LaunchError(target, gpu::LaunchFusedForward(args, stream));
}

ffi::Error Backward(const char* target, CUstream_st* stream, gpu::BackwardArgs args,
                    const ffi::AnyBuffer& dy, const void* derivative, void* dx) {
  if (!ElementTypeOf(dy, &args.type)) return TypeError(target);
  args.n = static_cast<int64_t>(dy.element_count());
  args.dy = dy.untyped_data();
  args.derivative = derivative;
  args.dx = dx;
  return LaunchError(target, gpu::LaunchFusedBackward(args, stream));
}

ffi::Error FusedActivationCuda(CUstream_st* stream, ffi::AnyBuffer x,
                               ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> d,
                               std::string_view activation, BitsSpan params) {
  const char* target = xla_call::kFusedActivation;
  xla_call::Activation a;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeActivation(target, activation, params, &a));
  return Forward(target, stream, a, gpu::DerivativeStorage::kExact, x, y->untyped_data(),
                 d->untyped_data(), nullptr);
}

ffi::Error FusedActivationGradCuda(CUstream_st* stream, ffi::AnyBuffer dy, ffi::AnyBuffer d,
                                   ffi::Result<ffi::AnyBuffer> dx) {
  const char* target = xla_call::kFusedActivationGrad;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::SameElements(target, dy, d));
  gpu::BackwardArgs args;
  args.storage = gpu::DerivativeStorage::kExact;
  return Backward(target, stream, args, dy, d.untyped_data(), dx->untyped_data());
}

ffi::Error ActivationForwardCuda(CUstream_st* stream, ffi::AnyBuffer x,
                                 ffi::Result<ffi::AnyBuffer> y, std::string_view activation,
                                 BitsSpan params) {
  const char* target = xla_call::kActivationForward;
  xla_call::Activation a;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeActivation(target, activation, params, &a));
  return Forward(target, stream, a, gpu::DerivativeStorage::kFromOutput, x, y->untyped_data(),
                 nullptr, nullptr);
}

ffi::Error ActivationGradFromOutputCuda(CUstream_st* stream, ffi::AnyBuffer dy, ffi::AnyBuffer y,
                                        ffi::Result<ffi::AnyBuffer> dx,
                                        std::string_view activation, BitsSpan params) {
  const char* target = xla_call::kActivationGradFromOutput;
  xla_call::Activation a;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeGradFromOutput(target, activation, params, dy, y, &a));
  gpu::BackwardArgs args;
  args.storage = gpu::DerivativeStorage::kFromOutput;
  args.kind = a.kind;
  args.params = a.params.data();
  return Backward(target, stream, args, dy, y.untyped_data(), dx->untyped_data());
}

ffi::Error FusedActivationQuantizedCuda(CUstream_st* stream, ffi::AnyBuffer x,
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
  return Forward(target, stream, a, gpu::DerivativeStorage::kQuantized, x, y->untyped_data(),
                 code->untyped_data(), &q);
}

ffi::Error ActivationGradQuantizedCuda(CUstream_st* stream, ffi::AnyBuffer dy,
                                       ffi::AnyBuffer code, ffi::Result<ffi::AnyBuffer> dx,
                                       std::string_view format, int32_t bits,
                                       BitsSpan breakpoints, BitsSpan levels, BitsSpan range) {
  const char* target = xla_call::kActivationGradQuantized;
  Quantizer q;
  NESTAD_FFI_RETURN_IF_ERROR(xla_call::DecodeQuantizedBackward(
      target, format, bits, breakpoints, levels, range, dy, code, &q));
  gpu::BackwardArgs args;
  args.storage = gpu::DerivativeStorage::kQuantized;
  args.quantizer = &q;  // host memory: the launch copies it into the kernel's arguments
  return Backward(target, stream, args, dy, code.untyped_data(), dx->untyped_data());
}

}  // namespace

// The bindings (in the order of each handler's parameters) and registrations.
NESTAD_XLA_FFI_HANDLERS(Cuda, ::xla::ffi::PlatformStream<CUstream_st*>, "CUDA");

}  // namespace nestad

// The CUDA handler of a custom-call target, for XLA runtimes other than
// TensorFlow's (JAX: nestad_tf/frameworks/jax_backend.py registers them with
// jax.ffi for platform "CUDA"); nullptr for an unknown target.
extern "C" __attribute__((visibility("default"))) void* nestad_xla_ffi_cuda_handler(
    const char* target) {
  static constexpr ::nestad::xla_call::HandlerEntry kHandlers[] = {
      NESTAD_XLA_FFI_ENTRY(FusedActivation, Cuda),
      NESTAD_XLA_FFI_ENTRY(FusedActivationGrad, Cuda),
      NESTAD_XLA_FFI_ENTRY(ActivationForward, Cuda),
      NESTAD_XLA_FFI_ENTRY(ActivationGradFromOutput, Cuda),
      NESTAD_XLA_FFI_ENTRY(FusedActivationQuantized, Cuda),
      NESTAD_XLA_FFI_ENTRY(ActivationGradQuantized, Cuda),
  };
  return ::nestad::xla_call::HandlerFor(target, kHandlers);
}
