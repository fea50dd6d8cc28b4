// The CUDA kernels of the fused activation pair, for nvcc only, and what the
// storage-form kernels (storage_gpu_kernels.cuh) share with them.
//
// The work of one thread is a host/device function (ForwardThread,
// BackwardThread): the __global__ kernels call it with their grid position,
// and tools/gpu_check also runs it on the CPU over a fake grid to check the
// indexing without a GPU.
//
// Each thread walks a grid-stride loop over 16-byte packs (ForEachPack: 8
// half/bfloat16, 4 float, 2 double elements), converts half types to float in
// pairs (half2/bfloat162 conversions), applies FusedForwardElement /
// FusedBackwardElement from kernels/fused_activation.h (the same code as the
// CPU kernels), and finishes the < kVec tail elements one by one. Indices are
// 64-bit. kVec = 1 is the path for pointers that are not 16-byte aligned.
//
// ForwardFor<S> / BackwardFor<S> launch them for one storage type; each type
// is instantiated in its own fused_activation_gpu_<type>.cu (with the storage
// forms of storage_gpu_kernels.cuh), so that the four compile in parallel.
#ifndef NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_KERNELS_CUH_
#define NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../fused_activation.h"
#include "fused_activation_gpu.h"

namespace nestad {
namespace gpu {

// The CUDA type that stores each ElementType.
template <ElementType kType> struct StorageOf;
template <> struct StorageOf<ElementType::kFloat16> { using type = __half; };
template <> struct StorageOf<ElementType::kBFloat16> { using type = __nv_bfloat16; };
template <> struct StorageOf<ElementType::kFloat32> { using type = float; };
template <> struct StorageOf<ElementType::kFloat64> { using type = double; };

// Elements per 16-byte access.
template <typename S>
NESTAD_HD constexpr int VectorWidth() { return static_cast<int>(16 / sizeof(S)); }

// kVec elements loaded or stored with one instruction (16 bytes for the
// vector path; requires the pointer to be aligned to the whole pack).
template <typename S, int kVec>
struct alignas(sizeof(S) * kVec) Pack {
  S v[kVec];
};

// Storage <-> compute type, kVec elements at a time. Half types convert in
// pairs when kVec is even: one cvt.f16x2 / cvt.bf16x2 instruction for two
// elements on sm_80+.
template <typename S, typename C, int kVec, bool kPairs = (kVec % 2 == 0)>
struct Convert {
  NESTAD_HD static void ToCompute(const S (&in)[kVec], C (&out)[kVec]) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) out[k] = static_cast<C>(in[k]);
  }
  NESTAD_HD static void FromCompute(const C (&in)[kVec], S (&out)[kVec]) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) out[k] = static_cast<S>(in[k]);
  }
};

template <int kVec>
struct Convert<__half, float, kVec, true> {
  NESTAD_HD static void ToCompute(const __half (&in)[kVec], float (&out)[kVec]) {
#pragma unroll
    for (int k = 0; k + 1 < kVec; k += 2) {
      const float2 pair = __half22float2(__halves2half2(in[k], in[k + 1]));
      out[k] = pair.x;
      out[k + 1] = pair.y;
    }
  }
  NESTAD_HD static void FromCompute(const float (&in)[kVec], __half (&out)[kVec]) {
#pragma unroll
    for (int k = 0; k + 1 < kVec; k += 2) {
      const __half2 pair = __floats2half2_rn(in[k], in[k + 1]);
      out[k] = __low2half(pair);
      out[k + 1] = __high2half(pair);
    }
  }
};

template <int kVec>
struct Convert<__nv_bfloat16, float, kVec, true> {
  NESTAD_HD static void ToCompute(const __nv_bfloat16 (&in)[kVec], float (&out)[kVec]) {
#pragma unroll
    for (int k = 0; k + 1 < kVec; k += 2) {
      const float2 pair = __bfloat1622float2(__halves2bfloat162(in[k], in[k + 1]));
      out[k] = pair.x;
      out[k + 1] = pair.y;
    }
  }
  NESTAD_HD static void FromCompute(const float (&in)[kVec], __nv_bfloat16 (&out)[kVec]) {
#pragma unroll
    for (int k = 0; k + 1 < kVec; k += 2) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(in[k], in[k + 1]);
      out[k] = __low2bfloat16(pair);
      out[k + 1] = __high2bfloat16(pair);
    }
  }
};

template <typename S, typename C, int kVec>
NESTAD_HD void LoadPack(const S* p, C (&out)[kVec]) {
  const Pack<S, kVec> pack = *reinterpret_cast<const Pack<S, kVec>*>(p);
  Convert<S, C, kVec>::ToCompute(pack.v, out);
}

template <typename S, typename C, int kVec>
NESTAD_HD void StorePack(const C (&in)[kVec], S* p) {
  Pack<S, kVec> pack;
  Convert<S, C, kVec>::FromCompute(in, pack.v);
  *reinterpret_cast<Pack<S, kVec>*>(p) = pack;
}

// A derivative storage form: how f'(x) (in the compute type) is written by the
// forward pass and read back by the backward pass. `Code` is the stored type;
// a pack of kVec codes must be loadable at the offset of element i * kVec.
template <typename S>
struct ExactDerivative {
  using Code = S;
  template <typename C, int kVec>
  NESTAD_HD static void Store(const C (&d)[kVec], Code* p) { StorePack<S, C, kVec>(d, p); }
  template <typename C, int kVec>
  NESTAD_HD static void Load(const Code* p, C (&d)[kVec]) { LoadPack<S, C, kVec>(p, d); }
};

// The codec of each DerivativeStorage value.
template <DerivativeStorage kStorage, typename S> struct DerivativeCodec;
template <typename S>
struct DerivativeCodec<DerivativeStorage::kExact, S> { using type = ExactDerivative<S>; };

// Calls body(i, width) over the share of thread `thread` out of `threads` of
// [0, n): first packs of kVec elements (i = p * kVec, width =
// integral_constant<int, kVec>), then the < kVec tail elements one by one
// (width 1). Indices are 64-bit.
template <int kVec, typename Body>
NESTAD_HD void ForEachPack(int64_t n, int64_t thread, int64_t threads, Body&& body) {
  const int64_t num_packs = n / kVec;
  for (int64_t p = thread; p < num_packs; p += threads) {
    body(p * kVec, std::integral_constant<int, kVec>());
  }
  for (int64_t i = num_packs * kVec + thread; i < n; i += threads) {
    body(i, std::integral_constant<int, 1>());
  }
}

// Forward pass of thread `thread` out of `threads`: y, d for its share of [0, n).
template <typename Functor, typename S, int kVec, typename Codec>
NESTAD_HD void ForwardThread(const Functor& f, const S* x, S* y, typename Codec::Code* d,
                             int64_t n, int64_t thread, int64_t threads) {
  using C = typename ComputeType<S>::type;
  ForEachPack<kVec>(n, thread, threads, [&](int64_t i, auto width) {
    constexpr int kWidth = decltype(width)::value;
    C xs[kWidth], ys[kWidth], ds[kWidth];
    LoadPack<S, C, kWidth>(x + i, xs);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) FusedForwardElement(f, xs[k], ys[k], ds[k]);
    StorePack<S, C, kWidth>(ys, y + i);
    Codec::template Store<C, kWidth>(ds, d + i);
  });
}

// Backward pass of thread `thread` out of `threads`: dx = dy * d for its share of [0, n).
template <typename S, int kVec, typename Codec>
NESTAD_HD void BackwardThread(const S* dy, const typename Codec::Code* d, S* dx, int64_t n,
                              int64_t thread, int64_t threads) {
  using C = typename ComputeType<S>::type;
  ForEachPack<kVec>(n, thread, threads, [&](int64_t i, auto width) {
    constexpr int kWidth = decltype(width)::value;
    C dys[kWidth], ds[kWidth], dxs[kWidth];
    LoadPack<S, C, kWidth>(dy + i, dys);
    Codec::template Load<C, kWidth>(d + i, ds);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) dxs[k] = FusedBackwardElement(dys[k], ds[k]);
    StorePack<S, C, kWidth>(dxs, dx + i);
  });
}

// Whether every pointer allows kVec-element packs of its type.
template <int kVec, typename... Pointers>
inline bool PacksAligned(const Pointers*... pointers) {
  return ((reinterpret_cast<uintptr_t>(pointers) % (sizeof(Pointers) * kVec) == 0) && ...);
}

// Kernel launches ----------------------------------------------------------

constexpr int kThreadsPerBlock = 256;

// This thread's index in the grid and the grid's size in threads, 64-bit.
__device__ inline int64_t GridThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ inline int64_t GridThreads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename Functor, typename S, int kVec, typename Codec>
__global__ void __launch_bounds__(kThreadsPerBlock)
    FusedForwardKernel(Functor f, const S* x, S* y, typename Codec::Code* d, int64_t n) {
  ForwardThread<Functor, S, kVec, Codec>(f, x, y, d, n, GridThread(), GridThreads());
}

template <typename S, int kVec, typename Codec>
__global__ void __launch_bounds__(kThreadsPerBlock)
    FusedBackwardKernel(const S* dy, const typename Codec::Code* d, S* dx, int64_t n) {
  BackwardThread<S, kVec, Codec>(dy, d, dx, n, GridThread(), GridThreads());
}

// Blocks for a grid-stride kernel over `work_items` thread work items (packs):
// one block per kThreadsPerBlock items, at most as many blocks as the current
// device holds at once (SM count x resident blocks per SM for this kernel), so
// that large tensors run in a single wave. Device properties are asked once
// per device and kernel (fused_activation_gpu.cu).
cudaError_t GridStrideBlocks(const void* kernel, int64_t work_items, unsigned* blocks);

template <typename... Params, typename... Args>
cudaError_t LaunchGridStride(void (*kernel)(Params...), int64_t work_items, cudaStream_t stream,
                             Args... args) {
  unsigned blocks = 0;
  const cudaError_t error =
      GridStrideBlocks(reinterpret_cast<const void*>(kernel), work_items, &blocks);
  if (error != cudaSuccess) return error;
  // cudaLaunchKernel (not <<<>>>) returns the error of this launch only.
  std::tuple<Params...> typed_args(args...);
  return std::apply(
      [&](auto&... values) {
        void* pointers[] = {static_cast<void*>(&values)...};
        return cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(blocks),
                                dim3(kThreadsPerBlock), pointers, 0, stream);
      },
      typed_args);
}

inline const char* ErrorMessage(cudaError_t error) {
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

template <typename S, typename Codec>
const char* ForwardWithCodec(const ForwardArgs& args, cudaStream_t stream) {
  constexpr int kVec = VectorWidth<S>();
  const S* x = static_cast<const S*>(args.x);
  S* y = static_cast<S*>(args.y);
  auto* d = static_cast<typename Codec::Code*>(args.derivative);
  const bool vectorized = PacksAligned<kVec>(x, y, d);
  return VisitActivation(args.kind, args.params, [&](auto f) {
    using Functor = decltype(f);
    const cudaError_t error =
        vectorized
            ? LaunchGridStride(&FusedForwardKernel<Functor, S, kVec, Codec>, args.n / kVec,
                               stream, f, x, y, d, args.n)
            : LaunchGridStride(&FusedForwardKernel<Functor, S, 1, Codec>, args.n, stream, f, x,
                               y, d, args.n);
    return ErrorMessage(error);
  });
}

template <typename S, typename Codec>
const char* BackwardWithCodec(const BackwardArgs& args, cudaStream_t stream) {
  constexpr int kVec = VectorWidth<S>();
  const S* dy = static_cast<const S*>(args.dy);
  const auto* d = static_cast<const typename Codec::Code*>(args.derivative);
  S* dx = static_cast<S*>(args.dx);
  const cudaError_t error =
      PacksAligned<kVec>(dy, d, dx)
          ? LaunchGridStride(&FusedBackwardKernel<S, kVec, Codec>, args.n / kVec, stream, dy, d,
                             dx, args.n)
          : LaunchGridStride(&FusedBackwardKernel<S, 1, Codec>, args.n, stream, dy, d, dx,
                             args.n);
  return ErrorMessage(error);
}

// Launchers of the kFromOutput and kQuantized forms for storage type S
// (storage_gpu_kernels.cuh, instantiated in fused_activation_gpu_<type>.cu).
template <typename S>
const char* ForwardStorageFor(const ForwardArgs& args, cudaStream_t stream);
template <typename S>
const char* BackwardStorageFor(const BackwardArgs& args, cudaStream_t stream);

// Launchers for storage type S (args.n > 0 and non-null pointers, checked by
// the callers in fused_activation_gpu.cu); the derivative storage form picks
// the codec or the storage-form kernels.
template <typename S>
const char* ForwardFor(const ForwardArgs& args, cudaStream_t stream) {
  switch (args.storage) {
    case DerivativeStorage::kExact:
      return ForwardWithCodec<S, typename DerivativeCodec<DerivativeStorage::kExact, S>::type>(
          args, stream);
    case DerivativeStorage::kFromOutput:
    case DerivativeStorage::kQuantized:
      return ForwardStorageFor<S>(args, stream);
  }
  return "nestad gpu: unsupported derivative storage form";
}

template <typename S>
const char* BackwardFor(const BackwardArgs& args, cudaStream_t stream) {
  switch (args.storage) {
    case DerivativeStorage::kExact:
      return BackwardWithCodec<S, typename DerivativeCodec<DerivativeStorage::kExact, S>::type>(
          args, stream);
    case DerivativeStorage::kFromOutput:
    case DerivativeStorage::kQuantized:
      return BackwardStorageFor<S>(args, stream);
  }
  return "nestad gpu: unsupported derivative storage form";
}

// Instantiated once each, in fused_activation_gpu_<type>.cu.
#define NESTAD_GPU_STORAGE_TYPES(X) X(__half) X(__nv_bfloat16) X(float) X(double)
#define NESTAD_GPU_DECLARE_LAUNCHERS(S)                                                \
  extern template const char* ForwardFor<S>(const ForwardArgs&, cudaStream_t);        \
  extern template const char* BackwardFor<S>(const BackwardArgs&, cudaStream_t);      \
  extern template const char* ForwardStorageFor<S>(const ForwardArgs&, cudaStream_t); \
  extern template const char* BackwardStorageFor<S>(const BackwardArgs&, cudaStream_t);
NESTAD_GPU_STORAGE_TYPES(NESTAD_GPU_DECLARE_LAUNCHERS)
#undef NESTAD_GPU_DECLARE_LAUNCHERS

}  // namespace gpu
}  // namespace nestad

#endif  // NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_KERNELS_CUH_
