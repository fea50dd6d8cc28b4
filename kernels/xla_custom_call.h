// The contract between nestad's XLA lowering (xla_lowering.cc, TF side) and its
// XLA FFI handlers (xla_cpu_ffi.cc for platform "Host", cuda/xla_gpu_ffi.cc for
// "CUDA"): custom-call target names and how the ops' attributes travel as FFI
// attributes. Free of TensorFlow; needs only XLA's header-only FFI API.
//
// Every op becomes one `custom-call` (API_VERSION_TYPED_FFI) whose backend
// config is an MLIR dictionary of attributes:
//   activation = "<kernel name>", params = array<i32: ...>
//   format = "<storage format>", bits = <n> : i32,
//   breakpoints = array<i32: ...>, levels = array<i32: ...>, range = array<i32: ...>
// Float lists travel as the bit patterns of their float32 values, so that every
// value (-0.0, denormals, any rounding) reaches the handler exactly.
#ifndef NESTAD_KERNELS_XLA_CUSTOM_CALL_H_
#define NESTAD_KERNELS_XLA_CUSTOM_CALL_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fused_activation.h"
#include "storage.h"
#include "xla/ffi/api/ffi.h"

namespace xla::ffi {
// Exported by libtensorflow_cc (declared in xla/ffi/ffi_api.h, which is not
// self-contained enough to include here): the FFI API of XLA's custom-call
// registry, where the handlers register.
const XLA_FFI_Api* GetXlaFfiApi();
}  // namespace xla::ffi

namespace nestad {
namespace xla_call {

// One custom-call target per op (the handlers register these names).
constexpr const char kFusedActivation[] = "nestad_fused_activation";
constexpr const char kFusedActivationGrad[] = "nestad_fused_activation_grad";
constexpr const char kActivationForward[] = "nestad_activation_forward";
constexpr const char kActivationGradFromOutput[] = "nestad_activation_grad_from_output";
constexpr const char kFusedActivationQuantized[] = "nestad_fused_activation_quantized";
constexpr const char kActivationGradQuantized[] = "nestad_activation_grad_quantized";
constexpr const char kBatchNormActivation[] = "nestad_batch_norm_activation";
constexpr const char kBatchNormActivationGrad[] = "nestad_batch_norm_activation_grad";

// ---- Encoding (the lowering) ----

inline std::string FloatBits(const std::vector<float>& values) {
  std::string out = "array<i32";
  for (size_t i = 0; i < values.size(); ++i) {
    int32_t bits;
    std::memcpy(&bits, &values[i], sizeof(bits));
    out += (i ? ", " : ": ") + std::to_string(bits);
  }
  return out + ">";
}

inline std::string ActivationConfig(const std::string& activation,
                                    const std::vector<float>& params) {
  return "activation = \"" + activation + "\", params = " + FloatBits(params);
}

inline std::string QuantizerConfig(const std::string& format, int bits,
                                   const std::vector<float>& breakpoints,
                                   const std::vector<float>& levels,
                                   const std::vector<float>& range) {
  return "format = \"" + format + "\", bits = " + std::to_string(bits) +
         " : i32, breakpoints = " + FloatBits(breakpoints) + ", levels = " + FloatBits(levels) +
         ", range = " + FloatBits(range);
}

// The normalization attributes of BatchNormActivation(Grad): epsilon as float bits,
// the normalized (non-negative) axis, training as 0 or 1.
inline std::string NormConfig(float epsilon, int axis, bool training) {
  return "epsilon = " + FloatBits({epsilon}) + ", axis = " + std::to_string(axis) +
         " : i32, training = " + std::to_string(training ? 1 : 0) + " : i32";
}

// The backend config of a custom call: a dictionary of the given entries.
inline std::string Dictionary(const std::string& entries) { return "{" + entries + "}"; }

// ---- Decoding (the handlers) ----

using BitsSpan = ::xla::ffi::Span<const int32_t>;

inline std::vector<float> FromBits(BitsSpan bits) {
  std::vector<float> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) std::memcpy(&values[i], &bits[i], sizeof(float));
  return values;
}

// The activation of a call, validated like the TF kernels do (ResolveActivation).
struct Activation {
  Kind kind = Kind::k_linear;
  std::vector<float> params;
};

inline ::xla::ffi::Error DecodeActivation(const char* target, std::string_view name,
                                          BitsSpan param_bits, Activation* out) {
  out->params = FromBits(param_bits);
  const std::string error = ResolveActivation(std::string(name), out->params, &out->kind);
  if (error.empty()) return ::xla::ffi::Error::Success();
  return ::xla::ffi::Error::InvalidArgument(std::string(target) + ": " + error);
}

inline ::xla::ffi::Error DecodeQuantizer(const char* target, std::string_view format, int32_t bits,
                                         BitsSpan breakpoints, BitsSpan levels, BitsSpan range,
                                         Quantizer* out) {
  const std::string error = MakeQuantizer(std::string(format), bits, FromBits(breakpoints),
                                          FromBits(levels), FromBits(range), out);
  if (error.empty()) return ::xla::ffi::Error::Success();
  return ::xla::ffi::Error::InvalidArgument(std::string(target) + ": " + error);
}

// InvalidArgument unless a and b hold the same number of elements of the same type.
inline ::xla::ffi::Error SameElements(const char* target, const ::xla::ffi::AnyBuffer& a,
                                      const ::xla::ffi::AnyBuffer& b) {
  if (a.element_type() == b.element_type() && a.element_count() == b.element_count()) {
    return ::xla::ffi::Error::Success();
  }
  return ::xla::ffi::Error::InvalidArgument(std::string(target) +
                                            ": operands differ in element type or count");
}

// InvalidArgument unless `code` holds the packed codes of n elements at `bits` bits.
inline ::xla::ffi::Error CheckCodes(const char* target, const ::xla::ffi::AnyBuffer& code,
                                    int64_t n, int bits) {
  if (static_cast<int64_t>(code.element_count()) == PackedBytes(n, bits)) {
    return ::xla::ffi::Error::Success();
  }
  return ::xla::ffi::Error::InvalidArgument(std::string(target) + ": code must hold " +
                                            std::to_string(PackedBytes(n, bits)) + " bytes");
}

// Returns the ffi::Error of `expr` from the enclosing function if it failed.
#define NESTAD_FFI_RETURN_IF_ERROR(expr)                                          \
  do {                                                                            \
    if (::xla::ffi::Error nestad_ffi_error = (expr); nestad_ffi_error.failure()) { \
      return nestad_ffi_error;                                                    \
    }                                                                             \
  } while (0)

// The checks of each op's call, the same on every platform: its attributes
// decoded and validated, and its buffers consistent with them.
inline ::xla::ffi::Error DecodeGradFromOutput(const char* target, std::string_view name,
                                              BitsSpan params, const ::xla::ffi::AnyBuffer& dy,
                                              const ::xla::ffi::AnyBuffer& y, Activation* a) {
  NESTAD_FFI_RETURN_IF_ERROR(DecodeActivation(target, name, params, a));
  if (const std::string error = DerivativeFromOutputError(a->kind, a->params.data());
      !error.empty()) {
    return ::xla::ffi::Error::InvalidArgument(std::string(target) + ": " + error);
  }
  return SameElements(target, dy, y);
}

inline ::xla::ffi::Error DecodeQuantizedForward(
    const char* target, std::string_view name, BitsSpan params, std::string_view format,
    int32_t bits, BitsSpan breakpoints, BitsSpan levels, BitsSpan range,
    const ::xla::ffi::AnyBuffer& x, const ::xla::ffi::AnyBuffer& code, Activation* a,
    Quantizer* q) {
  NESTAD_FFI_RETURN_IF_ERROR(DecodeActivation(target, name, params, a));
  NESTAD_FFI_RETURN_IF_ERROR(DecodeQuantizer(target, format, bits, breakpoints, levels, range, q));
  return CheckCodes(target, code, static_cast<int64_t>(x.element_count()), q->bits);
}

inline ::xla::ffi::Error DecodeQuantizedBackward(const char* target, std::string_view format,
                                                 int32_t bits, BitsSpan breakpoints,
                                                 BitsSpan levels, BitsSpan range,
                                                 const ::xla::ffi::AnyBuffer& dy,
                                                 const ::xla::ffi::AnyBuffer& code, Quantizer* q) {
  NESTAD_FFI_RETURN_IF_ERROR(DecodeQuantizer(target, format, bits, breakpoints, levels, range, q));
  return CheckCodes(target, code, static_cast<int64_t>(dy.element_count()), q->bits);
}

// The FFI attributes of the ops that take an activation, and of those that
// take a quantizer, appended to a handler's binding (after its buffers).
template <typename Binding>
auto BindActivation(Binding binding) {
  return std::move(binding).template Attr<std::string_view>("activation").template Attr<BitsSpan>(
      "params");
}

template <typename Binding>
auto BindNorm(Binding binding) {
  return std::move(binding)
      .template Attr<std::string_view>("activation")
      .template Attr<BitsSpan>("params")
      .template Attr<BitsSpan>("epsilon")
      .template Attr<int32_t>("axis")
      .template Attr<int32_t>("training");
}

template <typename Binding>
auto BindQuantizer(Binding binding) {
  return std::move(binding)
      .template Attr<std::string_view>("format")
      .template Attr<int32_t>("bits")
      .template Attr<BitsSpan>("breakpoints")
      .template Attr<BitsSpan>("levels")
      .template Attr<BitsSpan>("range");
}

}  // namespace xla_call
}  // namespace nestad

// Defines the FFI handler symbol k<Op><Suffix> of each op from the function
// <Op><Suffix> (its platform context `Context` first, then the buffers and
// attributes the op's binding lists) and registers it for `platform` with
// TensorFlow's XLA. With NESTAD_XLA_FFI_UNREGISTERED (the TF-free CUDA library
// of Keras' JAX backend, nestad_tf/_nestad_cuda.so) nothing registers at load:
// JAX registers the handlers it looks up (HandlerFor below) with jax.ffi.
#ifdef NESTAD_XLA_FFI_UNREGISTERED
#define NESTAD_XLA_FFI_HANDLER(Op, Suffix, platform, binding) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(k##Op##Suffix, Op##Suffix, binding)
#else
#define NESTAD_XLA_FFI_HANDLER(Op, Suffix, platform, binding)                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(k##Op##Suffix, Op##Suffix, binding);                \
  XLA_FFI_REGISTER_HANDLER(::xla::ffi::GetXlaFfiApi(), ::nestad::xla_call::k##Op,   \
                           platform, k##Op##Suffix)
#endif

namespace nestad {
namespace xla_call {

// A custom-call target and its handler, for runtimes other than TensorFlow's that
// register handlers themselves (JAX's jax.ffi.register_ffi_target).
struct HandlerEntry {
  const char* target;
  XLA_FFI_Error* (*handler)(XLA_FFI_CallFrame*);
};

// The handler of `target` among `entries` as an address, or nullptr.
template <size_t N>
void* HandlerFor(const char* target, const HandlerEntry (&entries)[N]) {
  for (const HandlerEntry& entry : entries) {
    if (target != nullptr && std::string_view(target) == entry.target) {
      return reinterpret_cast<void*>(entry.handler);
    }
  }
  return nullptr;
}

}  // namespace xla_call
}  // namespace nestad

// One HandlerEntry: op Op's target and its handler k<Op><Suffix>.
#define NESTAD_XLA_FFI_ENTRY(Op, Suffix) {::nestad::xla_call::k##Op, ::nestad::k##Op##Suffix}
#define NESTAD_XLA_FFI_BUFFERS(Context) \
  ::xla::ffi::Ffi::Bind().Ctx<Context>().Arg<::xla::ffi::AnyBuffer>()
#define NESTAD_XLA_FFI_HANDLERS(Suffix, Context, platform)                                \
  NESTAD_XLA_FFI_HANDLER(                                                                 \
      FusedActivation, Suffix, platform,                                                  \
      ::nestad::xla_call::BindActivation(NESTAD_XLA_FFI_BUFFERS(Context)                  \
                                             .Ret<::xla::ffi::AnyBuffer>()                \
                                             .Ret<::xla::ffi::AnyBuffer>()));             \
  NESTAD_XLA_FFI_HANDLER(FusedActivationGrad, Suffix, platform,                           \
                         NESTAD_XLA_FFI_BUFFERS(Context)                                  \
                             .Arg<::xla::ffi::AnyBuffer>()                                \
                             .Ret<::xla::ffi::AnyBuffer>());                              \
  NESTAD_XLA_FFI_HANDLER(                                                                 \
      ActivationForward, Suffix, platform,                                                \
      ::nestad::xla_call::BindActivation(NESTAD_XLA_FFI_BUFFERS(Context)                  \
                                             .Ret<::xla::ffi::AnyBuffer>()));             \
  NESTAD_XLA_FFI_HANDLER(                                                                 \
      ActivationGradFromOutput, Suffix, platform,                                         \
      ::nestad::xla_call::BindActivation(NESTAD_XLA_FFI_BUFFERS(Context)                  \
                                             .Arg<::xla::ffi::AnyBuffer>()                \
                                             .Ret<::xla::ffi::AnyBuffer>()));             \
  NESTAD_XLA_FFI_HANDLER(                                                                 \
      FusedActivationQuantized, Suffix, platform,                                         \
      ::nestad::xla_call::BindQuantizer(::nestad::xla_call::BindActivation(               \
          NESTAD_XLA_FFI_BUFFERS(Context)                                                 \
              .Ret<::xla::ffi::AnyBuffer>()                                               \
              .Ret<::xla::ffi::AnyBuffer>())));                                           \
  NESTAD_XLA_FFI_HANDLER(                                                                 \
      ActivationGradQuantized, Suffix, platform,                                          \
      ::nestad::xla_call::BindQuantizer(NESTAD_XLA_FFI_BUFFERS(Context)                   \
                                            .Arg<::xla::ffi::AnyBuffer>()                 \
                                            .Ret<::xla::ffi::AnyBuffer>()))

#endif  // NESTAD_KERNELS_XLA_CUSTOM_CALL_H_
