// The CUDA kernels of the storage forms of f' (kernels/storage.h), for nvcc only:
//   kFromOutput  ActivationForward (y = f(x) alone) and ActivationGradFromOutput
//                (dx = dy * f'(x), f' recovered from y): 16-byte packs, like the
//                fused pair (ForEachPack);
//   kQuantized   FusedActivationQuantized (y and f' packed into codes) and
//                ActivationGradQuantized (dx = dy * decoded f'): one packed group of
//                kGroup = 8 elements per thread and step (ForEachGroup), so a thread
//                owns whole bytes of codes: `bits` bytes per group, one access when
//                that is a power of two (all but bits = 3), 16-byte packs for the
//                elements.
// Element math only through the shared headers: ForwardOnlyElement,
// BackwardFromOutputElement and FusedForwardCompute (fused_activation.h),
// Quantizer::Encode / Decode and PackGroup / UnpackGroup (storage.h), with the
// CPU kernels' expressions, so that the codes are the bytes the CPU writes for
// the same f' and either device decodes the other's codes.
//
// As in fused_activation_gpu_kernels.cuh, each thread's work is a host/device
// function that tools/gpu_check --self-check also runs on the CPU. The
// launchers ForwardStorageFor<S> / BackwardStorageFor<S> are instantiated per
// storage type in fused_activation_gpu_<type>.cu.
#ifndef NESTAD_KERNELS_CUDA_STORAGE_GPU_KERNELS_CUH_
#define NESTAD_KERNELS_CUDA_STORAGE_GPU_KERNELS_CUH_

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../storage.h"
#include "fused_activation_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

// kFromOutput ---------------------------------------------------------------

// y = f(x) for thread `thread`'s share of [0, n) (no f' is computed or stored).
template <typename Functor, typename S, int kVec>
NESTAD_HD void ForwardOnlyThread(const Functor& f, const S* x, S* y, int64_t n, int64_t thread,
                                 int64_t threads) {
  using C = typename ComputeType<S>::type;
  ForEachPack<kVec>(n, thread, threads, [&](int64_t i, auto width) {
    constexpr int kWidth = decltype(width)::value;
    C values[kWidth];
    LoadPack<S, C, kWidth>(x + i, values);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) values[k] = ForwardOnlyElement(f, values[k]);
    StorePack<S, C, kWidth>(values, y + i);
  });
}

// dx = dy * f'(x), f' recovered from y, for thread `thread`'s share of [0, n).
template <typename Functor, typename S, int kVec>
NESTAD_HD void BackwardFromOutputThread(const Functor& f, const S* dy, const S* y, S* dx,
                                        int64_t n, int64_t thread, int64_t threads) {
  using C = typename ComputeType<S>::type;
  ForEachPack<kVec>(n, thread, threads, [&](int64_t i, auto width) {
    constexpr int kWidth = decltype(width)::value;
    C grads[kWidth], outputs[kWidth];
    LoadPack<S, C, kWidth>(dy + i, grads);
    LoadPack<S, C, kWidth>(y + i, outputs);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) grads[k] = BackwardFromOutputElement(f, grads[k], outputs[k]);
    StorePack<S, C, kWidth>(grads, dx + i);
  });
}

// kQuantized: packed groups ---------------------------------------------------

// Calls body(g, count) for the packed groups g of thread `thread`'s share of
// [0, n) (elements g * kGroup ... + count): whole groups (count = kGroup), then
// the last, partial group (count < kGroup) by the thread whose turn it is in the
// grid-stride order. One body serves both, so the activation is compiled once
// per kernel.
template <typename Body>
NESTAD_HD void ForEachGroup(int64_t n, int64_t thread, int64_t threads, Body&& body) {
  const int64_t whole_groups = n / kGroup;
  for (int64_t g = thread; g < whole_groups; g += threads) body(g, kGroup);
  if (n % kGroup != 0 && whole_groups % threads == thread) {
    body(whole_groups, static_cast<int>(n % kGroup));
  }
}

// The kGroup elements at p in the compute type: 16-byte packs when `aligned`
// (p 16-byte aligned) and the group is whole, else `count` elements one by one
// and zeros after.
template <typename S, typename C>
NESTAD_HD void LoadGroup(const S* p, int count, bool aligned, C (&values)[kGroup]) {
  constexpr int kVec = VectorWidth<S>();
  if (aligned && count == kGroup) {
#pragma unroll
    for (int k = 0; k < kGroup; k += kVec) {
      C pack[kVec];
      LoadPack<S, C, kVec>(p + k, pack);
#pragma unroll
      for (int j = 0; j < kVec; ++j) values[k + j] = pack[j];
    }
  } else {
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      C one[1] = {C(0)};
      if (k < count) LoadPack<S, C, 1>(p + k, one);
      values[k] = one[0];
    }
  }
}

template <typename S, typename C>
NESTAD_HD void StoreGroup(const C (&values)[kGroup], int count, bool aligned, S* p) {
  constexpr int kVec = VectorWidth<S>();
  if (aligned && count == kGroup) {
#pragma unroll
    for (int k = 0; k < kGroup; k += kVec) {
      C pack[kVec];
#pragma unroll
      for (int j = 0; j < kVec; ++j) pack[j] = values[k + j];
      StorePack<S, C, kVec>(pack, p + k);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      const C one[1] = {values[k]};
      if (k < count) StorePack<S, C, 1>(one, p + k);
    }
  }
}

// The unsigned type of kBytes bytes, for one access to a group's codes.
template <int kBytes> struct WordOf { using type = void; };
template <> struct WordOf<1> { using type = uint8_t; };
template <> struct WordOf<2> { using type = uint16_t; };
template <> struct WordOf<4> { using type = uint32_t; };
template <> struct WordOf<8> { using type = uint64_t; };
template <> struct WordOf<16> { using type = uint4; };

// The kBytes bytes of one group's codes at p: one access when `aligned` (p is
// then aligned to kBytes: the codes start 16-byte aligned and a group takes
// kBytes bytes) and kBytes is a power of two; byte by byte otherwise.
template <int kBytes>
NESTAD_HD void StoreBytes(const uint8_t (&bytes)[kBytes], bool aligned, uint8_t* p) {
  using Word = typename WordOf<kBytes>::type;
  if constexpr (!std::is_void<Word>::value) {
    if (aligned) {
      Word word;
      memcpy(&word, bytes, kBytes);
      *reinterpret_cast<Word*>(p) = word;
      return;
    }
  }
#pragma unroll
  for (int b = 0; b < kBytes; ++b) p[b] = bytes[b];
}

template <int kBytes>
NESTAD_HD void LoadBytes(const uint8_t* p, bool aligned, uint8_t (&bytes)[kBytes]) {
  using Word = typename WordOf<kBytes>::type;
  if constexpr (!std::is_void<Word>::value) {
    if (aligned) {
      const Word word = *reinterpret_cast<const Word*>(p);
      memcpy(bytes, &word, kBytes);
      return;
    }
  }
#pragma unroll
  for (int b = 0; b < kBytes; ++b) bytes[b] = p[b];
}

// Whether `bits` is a packing width of storage.h (every value MakeQuantizer accepts).
NESTAD_HD bool IsPackingWidth(int bits) {
  return bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8 || bits == 16;
}

// Calls fn(integral_constant<int, bits>) for a packing width known only at run
// time, so that PackGroup / UnpackGroup unroll into register operations.
template <typename Fn>
NESTAD_HD void WithPackingWidth(int bits, Fn&& fn) {
  switch (bits) {
    case 1: fn(std::integral_constant<int, 1>()); break;
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 3: fn(std::integral_constant<int, 3>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    case 8: fn(std::integral_constant<int, 8>()); break;
    case 16: fn(std::integral_constant<int, 16>()); break;
    default: break;  // rejected by the launchers (IsPackingWidth)
  }
}

// Codes of group g <-> its q.bits bytes (little-endian bit order of storage.h).
NESTAD_HD void StoreCodes(const uint32_t (&codes)[kGroup], int bits, int64_t g, bool aligned,
                          uint8_t* code) {
  WithPackingWidth(bits, [&](auto width) {
    constexpr int kBits = decltype(width)::value;
    uint8_t bytes[kBits];
    PackGroup(codes, kBits, bytes);
    StoreBytes<kBits>(bytes, aligned, code + g * kBits);
  });
}

NESTAD_HD void LoadCodes(const uint8_t* code, int bits, int64_t g, bool aligned,
                         uint32_t (&codes)[kGroup]) {
  WithPackingWidth(bits, [&](auto width) {
    constexpr int kBits = decltype(width)::value;
    uint8_t bytes[kBits];
    LoadBytes<kBits>(code + g * kBits, aligned, bytes);
    UnpackGroup(bytes, kBits, codes);
  });
}

// kGroup values passed by value (in registers).
template <typename T>
struct Group {
  T v[kGroup];
};

// The codes of one group (0 past `count`). A function of its own, called once
// per group: Quantizer::Encode's four formats and their loops outweigh most
// activations, and inlined for kGroup elements in every activation's kernel they
// would multiply the code size and compile time several times over.
template <typename C>
__host__ __device__ __noinline__ Group<uint32_t> EncodeGroup(const Quantizer& q, Group<C> x,
                                                             Group<C> d, int count) {
  Group<uint32_t> codes;
#pragma unroll
  for (int k = 0; k < kGroup; ++k) codes.v[k] = k < count ? q.Encode(x.v[k], d.v[k]) : 0u;
  return codes;
}

// y = f(x) and the packed codes of f'(x) for thread `thread`'s share of the
// groups of [0, n); the padding codes of a partial last group are 0 (as on the
// CPU). A group's x is loaded before its y is stored, so y may equal x.
// aligned: x, y and code 16-byte aligned (16-byte packs and one access per
// group's codes); otherwise element by element and byte by byte.
template <typename Functor, typename S>
NESTAD_HD void QuantizedForwardThread(const Functor& f, const Quantizer& q, const S* x, S* y,
                                      uint8_t* code, int64_t n, bool aligned, int64_t thread,
                                      int64_t threads) {
  using C = typename ComputeType<S>::type;
  ForEachGroup(n, thread, threads, [&](int64_t g, int count) {
    Group<C> xs, ds;
    C ys[kGroup];
    LoadGroup<S, C>(x + g * kGroup, count, aligned, xs.v);
#pragma unroll
    for (int k = 0; k < kGroup; ++k) FusedForwardCompute(f, xs.v[k], ys[k], ds.v[k]);
    const Group<uint32_t> codes = EncodeGroup(q, xs, ds, count);
    StoreGroup<S, C>(ys, count, aligned, y + g * kGroup);
    StoreCodes(codes.v, q.bits, g, aligned, code);
  });
}

// dx = dy * f'(x), f' decoded from the packed codes, for thread `thread`'s share
// of the groups of [0, n); dx may equal dy.
template <typename S>
NESTAD_HD void QuantizedBackwardThread(const Quantizer& q, const S* dy, const uint8_t* code,
                                       S* dx, int64_t n, bool aligned, int64_t thread,
                                       int64_t threads) {
  using C = typename ComputeType<S>::type;
  ForEachGroup(n, thread, threads, [&](int64_t g, int count) {
    C grads[kGroup];
    uint32_t codes[kGroup];
    LoadCodes(code, q.bits, g, aligned, codes);
    LoadGroup<S, C>(dy + g * kGroup, count, aligned, grads);
#pragma unroll
    for (int k = 0; k < kGroup; ++k) grads[k] = grads[k] * static_cast<C>(q.Decode(codes[k]));
    StoreGroup<S, C>(grads, count, aligned, dx + g * kGroup);
  });
}

// Kernel launches ----------------------------------------------------------

template <typename Functor, typename S, int kVec>
__global__ void __launch_bounds__(kThreadsPerBlock)
    ForwardOnlyKernel(Functor f, const S* x, S* y, int64_t n) {
  ForwardOnlyThread<Functor, S, kVec>(f, x, y, n, GridThread(), GridThreads());
}

template <typename Functor, typename S, int kVec>
__global__ void __launch_bounds__(kThreadsPerBlock)
    BackwardFromOutputKernel(Functor f, const S* dy, const S* y, S* dx, int64_t n) {
  BackwardFromOutputThread<Functor, S, kVec>(f, dy, y, dx, n, GridThread(), GridThreads());
}

// The block's copy of q in shared memory (call from every thread of the block,
// before any use): Decode reads its table at data-dependent indices, which
// constant (parameter) memory would serialize across a warp.
__device__ inline const Quantizer& SharedQuantizer(const Quantizer& q) {
  static_assert(sizeof(Quantizer) % sizeof(uint32_t) == 0 && alignof(Quantizer) <= 4,
                "Quantizer is copied as 32-bit words");
  constexpr int kWords = sizeof(Quantizer) / sizeof(uint32_t);
  __shared__ uint32_t words[kWords];
  const uint32_t* source = reinterpret_cast<const uint32_t*>(&q);
  for (int i = threadIdx.x; i < kWords; i += blockDim.x) words[i] = source[i];
  __syncthreads();
  return *reinterpret_cast<const Quantizer*>(words);
}

// The Quantizer (1.1 KB) is a __grid_constant__ parameter: read in place, never
// copied per thread.
template <typename Functor, typename S>
__global__ void __launch_bounds__(kThreadsPerBlock)
    QuantizedForwardKernel(Functor f, const __grid_constant__ Quantizer q, const S* x, S* y,
                           uint8_t* code, int64_t n, bool aligned) {
  QuantizedForwardThread<Functor, S>(f, SharedQuantizer(q), x, y, code, n, aligned, GridThread(),
                                     GridThreads());
}

template <typename S>
__global__ void __launch_bounds__(kThreadsPerBlock)
    QuantizedBackwardKernel(const __grid_constant__ Quantizer q, const S* dy,
                            const uint8_t* code, S* dx, int64_t n, bool aligned) {
  QuantizedBackwardThread<S>(SharedQuantizer(q), dy, code, dx, n, aligned, GridThread(),
                             GridThreads());
}

// nullptr when a launch with this storage form and quantizer can go ahead
// (kQuantized, a quantizer with a packing width), else why not.
inline const char* CheckQuantized(DerivativeStorage storage, const Quantizer* quantizer) {
  if (storage != DerivativeStorage::kQuantized) return "nestad gpu: not a storage form";
  if (quantizer == nullptr) return "nestad gpu: kQuantized needs a quantizer";
  if (!IsPackingWidth(quantizer->bits)) return "nestad gpu: unsupported number of bits per code";
  return nullptr;
}

// Launchers for storage type S (args.n > 0 and the tensor pointers checked by
// the callers in fused_activation_gpu.cu).
template <typename S>
const char* ForwardStorageFor(const ForwardArgs& args, cudaStream_t stream) {
  constexpr int kVec = VectorWidth<S>();
  const S* x = static_cast<const S*>(args.x);
  S* y = static_cast<S*>(args.y);
  const int64_t n = args.n;
  if (args.storage == DerivativeStorage::kFromOutput) {
    const bool vectorized = PacksAligned<kVec>(x, y);
    return VisitActivation(args.kind, args.params, [&](auto f) {
      using Functor = decltype(f);
      return ErrorMessage(
          vectorized
              ? LaunchGridStride(&ForwardOnlyKernel<Functor, S, kVec>, n / kVec, stream, f, x, y, n)
              : LaunchGridStride(&ForwardOnlyKernel<Functor, S, 1>, n, stream, f, x, y, n));
    });
  }
  if (const char* error = CheckQuantized(args.storage, args.quantizer)) return error;
  const Quantizer& q = *args.quantizer;
  uint8_t* code = static_cast<uint8_t*>(args.derivative);
  const bool aligned = PacksAligned<kVec>(x, y) && PacksAligned<16>(code);
  const int64_t groups = (n + kGroup - 1) / kGroup;
  return VisitActivation(args.kind, args.params, [&](auto f) {
    return ErrorMessage(LaunchGridStride(&QuantizedForwardKernel<decltype(f), S>, groups, stream,
                                         f, q, x, y, code, n, aligned));
  });
}

template <typename S>
const char* BackwardStorageFor(const BackwardArgs& args, cudaStream_t stream) {
  constexpr int kVec = VectorWidth<S>();
  const S* dy = static_cast<const S*>(args.dy);
  S* dx = static_cast<S*>(args.dx);
  const int64_t n = args.n;
  if (args.storage == DerivativeStorage::kFromOutput) {
    const S* y = static_cast<const S*>(args.derivative);
    const bool vectorized = PacksAligned<kVec>(dy, y, dx);
    return VisitActivation(args.kind, args.params, [&](auto f) -> const char* {
      using Functor = decltype(f);
      if constexpr (SupportsDerivativeFromOutput<Functor>::value) {
        if (!f.HasDerivativeFromOutput()) {
          return "nestad gpu: f' cannot be recovered from the output with these parameters";
        }
        return ErrorMessage(
            vectorized ? LaunchGridStride(&BackwardFromOutputKernel<Functor, S, kVec>, n / kVec,
                                          stream, f, dy, y, dx, n)
                       : LaunchGridStride(&BackwardFromOutputKernel<Functor, S, 1>, n, stream, f,
                                          dy, y, dx, n));
      } else {
        return "nestad gpu: f' of this activation cannot be recovered from its output";
      }
    });
  }
  if (const char* error = CheckQuantized(args.storage, args.quantizer)) return error;
  const Quantizer& q = *args.quantizer;
  const uint8_t* code = static_cast<const uint8_t*>(args.derivative);
  const int64_t groups = (n + kGroup - 1) / kGroup;
  const bool aligned = PacksAligned<kVec>(dy, dx) && PacksAligned<16>(code);
  return ErrorMessage(LaunchGridStride(&QuantizedBackwardKernel<S>, groups, stream, q, dy, code,
                                       dx, n, aligned));
}

}  // namespace gpu
}  // namespace nestad

#endif  // NESTAD_KERNELS_CUDA_STORAGE_GPU_KERNELS_CUH_
