// The generic part of the fused activation kernels, free of TensorFlow so that
// the CPU op, the CUDA kernels and the standalone GPU check all share it:
//   * Kind: one enumerator per line of activations.def;
//   * ResolveActivation: attribute values -> Kind, with clear errors;
//   * VisitActivation: calls a visitor with the activation's functor;
//   * FusedForwardElement / FusedBackwardElement: one element of each op.
#ifndef NESTAD_KERNELS_FUSED_ACTIVATION_H_
#define NESTAD_KERNELS_FUSED_ACTIVATION_H_

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"

// First pass over the list: pulls in every activation's header.
#define NESTAD_ACTIVATION(name, Functor)
#include "activations.def"

namespace nestad {

enum class Kind : int {
#define NESTAD_ACTIVATION(name, Functor) k_##name,
#include "activations.def"
  kCount
};

struct KindInfo {
  const char* name;
  int num_params;
  const char* (*check)(const float* params);
};

inline const KindInfo& Info(Kind kind) {
  static const KindInfo kTable[] = {
#define NESTAD_ACTIVATION(name, Functor) {#name, Functor::kNumParams, &Functor::Check},
#include "activations.def"
  };
  return kTable[static_cast<int>(kind)];
}

inline std::string KnownActivationNames() {
  std::string names;
  for (int i = 0; i < static_cast<int>(Kind::kCount); ++i) {
    names += (i ? ", " : "") + std::string(Info(static_cast<Kind>(i)).name);
  }
  return names;
}

// Validates an activation name and its parameters. Returns "" and sets *kind,
// or returns a message saying what is wrong.
inline std::string ResolveActivation(const std::string& name, const std::vector<float>& params,
                                     Kind* kind) {
  for (int i = 0; i < static_cast<int>(Kind::kCount); ++i) {
    const KindInfo& info = Info(static_cast<Kind>(i));
    if (name != info.name) continue;
    if (static_cast<int>(params.size()) != info.num_params) {
      return "activation '" + name + "' takes " + std::to_string(info.num_params) +
             " parameter(s), got " + std::to_string(params.size());
    }
    for (float p : params) {
      if (p != p) return "activation '" + name + "': parameters must not be NaN";
    }
    if (const char* error = info.check(params.data())) return error;
    *kind = static_cast<Kind>(i);
    return "";
  }
  return "unknown activation '" + name + "'; the kernels know: " + KnownActivationNames();
}

// Calls visitor(Functor(params)) for the functor of `kind` and returns its result.
template <typename Visitor>
auto VisitActivation(Kind kind, const float* params, Visitor&& visitor)
    -> decltype(visitor(Linear(params))) {
  switch (kind) {
#define NESTAD_ACTIVATION(name, Functor) \
  case Kind::k_##name:                   \
    return visitor(Functor(params));
#include "activations.def"
    default:
      return visitor(Linear(params));  // unreachable: kinds come from ResolveActivation
  }
}

// Compute type: float for float16/bfloat16/float32 tensors, double for float64.
template <typename Storage>
struct ComputeType {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};

// y = f(x) and d = f'(x) in the compute type C; NaN in gives NaN out in both.
template <typename Functor, typename C>
NESTAD_HD void FusedForwardCompute(const Functor& f, C x, C& y, C& d) {
  f(x, y, d);
  y = x != x ? x : y;
  d = x != x ? x : d;
}

// One element of the fused forward op, rounded to the storage type.
template <typename Functor, typename Storage>
NESTAD_HD void FusedForwardElement(const Functor& f, Storage x_in, Storage& y_out,
                                   Storage& d_out) {
  using C = typename ComputeType<Storage>::type;
  C y, d;
  FusedForwardCompute(f, static_cast<C>(x_in), y, d);
  y_out = static_cast<Storage>(y);
  d_out = static_cast<Storage>(d);
}

// y = f(x) alone (the unused f' is dead code after inlining); NaN in gives NaN out.
template <typename Functor, typename Storage>
NESTAD_HD Storage ForwardOnlyElement(const Functor& f, Storage x_in) {
  using C = typename ComputeType<Storage>::type;
  const C x = static_cast<C>(x_in);
  C y, d;
  f(x, y, d);
  return static_cast<Storage>(x != x ? x : y);
}

// Whether a functor can give f' from its output y (a DerivativeFromOutput method);
// HasDerivativeFromOutput() then says whether it can for its parameter values.
template <typename Functor, typename = void>
struct SupportsDerivativeFromOutput : std::false_type {};
template <typename Functor>
struct SupportsDerivativeFromOutput<
    Functor, std::void_t<decltype(std::declval<const Functor&>().HasDerivativeFromOutput())>>
    : std::true_type {};

// "" when f' of `kind` can be recovered from its output y with these
// parameters (DerivativeFromOutput), else a message saying it cannot.
inline std::string DerivativeFromOutputError(Kind kind, const float* params) {
  const bool supported = VisitActivation(kind, params, [](auto f) {
    if constexpr (SupportsDerivativeFromOutput<decltype(f)>::value) {
      return f.HasDerivativeFromOutput();
    } else {
      return false;
    }
  });
  if (supported) return "";
  return "f' of '" + std::string(Info(kind).name) +
         "' cannot be recovered from its output with these parameters";
}

// dx = dy * f'(x) with f' recovered from y; NaN y gives NaN.
template <typename Functor, typename Storage>
NESTAD_HD Storage BackwardFromOutputElement(const Functor& f, Storage dy, Storage y_in) {
  using C = typename ComputeType<Storage>::type;
  const C y = static_cast<C>(y_in);
  const C d = y != y ? y : f.DerivativeFromOutput(y);
  return static_cast<Storage>(static_cast<C>(dy) * d);
}

// dx = dy * d for one element, in the compute type.
template <typename Storage>
NESTAD_HD Storage FusedBackwardElement(Storage dy, Storage d) {
  using C = typename ComputeType<Storage>::type;
  return static_cast<Storage>(static_cast<C>(dy) * static_cast<C>(d));
}

}  // namespace nestad

#endif  // NESTAD_KERNELS_FUSED_ACTIVATION_H_
