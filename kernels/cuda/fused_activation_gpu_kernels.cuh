// The CUDA kernels of the fused activation pair, for nvcc only.
//
// The work of one thread is a host/device function (ForwardThread,
// BackwardThread): the __global__ kernels call it with their grid position,
// and tools/gpu_check also runs it on the CPU over a fake grid to check the
// indexing without a GPU.
//
// Each thread walks a grid-stride loop over 16-byte packs (8 half/bfloat16,
// 4 float, 2 double elements), converts half types to float in pairs
// (half2/bfloat162 conversions), applies FusedForwardElement /
// FusedBackwardElement from kernels/fused_activation.h (the same code as the
// CPU kernels), and finishes the < kVec tail elements one by one. Indices are
// 64-bit. kVec = 1 is the path for pointers that are not 16-byte aligned.
//
// ForwardFor<S> / BackwardFor<S> launch them for one storage type; each type
// is instantiated in its own fused_activation_gpu_<type>.cu, so the four
// compile in parallel.
#ifndef NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_KERNELS_CUH_
#define NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>

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
constexpr int VectorWidth() { return static_cast<int>(16 / sizeof(S)); }

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

// Forward pass of thread `thread` out of `threads`: y, d for its share of [0, n).
template <typename Functor, typename S, int kVec, typename Codec>
NESTAD_HD void ForwardThread(const Functor& f, const S* x, S* y, typename Codec::Code* d,
                             int64_t n, int64_t thread, int64_t threads) {
  using C = typename ComputeType<S>::type;
  const int64_t num_packs = n / kVec;
  for (int64_t p = thread; p < num_packs; p += threads) {
    const int64_t i = p * kVec;
    C xs[kVec], ys[kVec], ds[kVec];
    LoadPack<S, C, kVec>(x + i, xs);
#pragma unroll
    for (int k = 0; k < kVec; ++k) FusedForwardElement(f, xs[k], ys[k], ds[k]);
    StorePack<S, C, kVec>(ys, y + i);
    Codec::template Store<C, kVec>(ds, d + i);
  }
  for (int64_t i = num_packs * kVec + thread; i < n; i += threads) {
    C xs[1], ys[1], ds[1];
    LoadPack<S, C, 1>(x + i, xs);
    FusedForwardElement(f, xs[0], ys[0], ds[0]);
    StorePack<S, C, 1>(ys, y + i);
    Codec::template Store<C, 1>(ds, d + i);
  }
}

// Backward pass of thread `thread` out of `threads`: dx = dy * d for its share of [0, n).
template <typename S, int kVec, typename Codec>
NESTAD_HD void BackwardThread(const S* dy, const typename Codec::Code* d, S* dx, int64_t n,
                              int64_t thread, int64_t threads) {
  using C = typename ComputeType<S>::type;
  const int64_t num_packs = n / kVec;
  for (int64_t p = thread; p < num_packs; p += threads) {
    const int64_t i = p * kVec;
    C dys[kVec], ds[kVec], dxs[kVec];
    LoadPack<S, C, kVec>(dy + i, dys);
    Codec::template Load<C, kVec>(d + i, ds);
#pragma unroll
    for (int k = 0; k < kVec; ++k) dxs[k] = FusedBackwardElement(dys[k], ds[k]);
    StorePack<S, C, kVec>(dxs, dx + i);
  }
  for (int64_t i = num_packs * kVec + thread; i < n; i += threads) {
    C dys[1], ds[1], dxs[1];
    LoadPack<S, C, 1>(dy + i, dys);
    Codec::template Load<C, 1>(d + i, ds);
    dxs[0] = FusedBackwardElement(dys[0], ds[0]);
    StorePack<S, C, 1>(dxs, dx + i);
  }
}

// Whether every pointer allows kVec-element packs of its type.
template <int kVec, typename... Pointers>
inline bool PacksAligned(const Pointers*... pointers) {
  return ((reinterpret_cast<uintptr_t>(pointers) % (sizeof(Pointers) * kVec) == 0) && ...);
}

// Kernel launches ----------------------------------------------------------

constexpr int kThreadsPerBlock = 256;

template <typename Functor, typename S, int kVec, typename Codec>
__global__ void __launch_bounds__(kThreadsPerBlock)
    FusedForwardKernel(Functor f, const S* x, S* y, typename Codec::Code* d, int64_t n) {
  ForwardThread<Functor, S, kVec, Codec>(
      f, x, y, d, n, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
      static_cast<int64_t>(gridDim.x) * blockDim.x);
}

template <typename S, int kVec, typename Codec>
__global__ void __launch_bounds__(kThreadsPerBlock)
    FusedBackwardKernel(const S* dy, const typename Codec::Code* d, S* dx, int64_t n) {
  BackwardThread<S, kVec, Codec>(dy, d, dx, n,
                                 static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                                 static_cast<int64_t>(gridDim.x) * blockDim.x);
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

// Launchers for storage type S (args.n > 0 and non-null pointers, checked by
// the callers in fused_activation_gpu.cu); the derivative storage form picks
// the codec.
template <typename S>
const char* ForwardFor(const ForwardArgs& args, cudaStream_t stream) {
  switch (args.storage) {
    case DerivativeStorage::kExact:
      return ForwardWithCodec<S, typename DerivativeCodec<DerivativeStorage::kExact, S>::type>(
          args, stream);
  }
  return "nestad gpu: unsupported derivative storage form";
}

template <typename S>
const char* BackwardFor(const BackwardArgs& args, cudaStream_t stream) {
  switch (args.storage) {
    case DerivativeStorage::kExact:
      return BackwardWithCodec<S, typename DerivativeCodec<DerivativeStorage::kExact, S>::type>(
          args, stream);
  }
  return "nestad gpu: unsupported derivative storage form";
}

// Instantiated once each, in fused_activation_gpu_<type>.cu.
#define NESTAD_GPU_STORAGE_TYPES(X) X(__half) X(__nv_bfloat16) X(float) X(double)
#define NESTAD_GPU_DECLARE_LAUNCHERS(S)                                           \
  extern template const char* ForwardFor<S>(const ForwardArgs&, cudaStream_t);   \
  extern template const char* BackwardFor<S>(const BackwardArgs&, cudaStream_t);
NESTAD_GPU_STORAGE_TYPES(NESTAD_GPU_DECLARE_LAUNCHERS)
#undef NESTAD_GPU_DECLARE_LAUNCHERS

}  // namespace gpu
}  // namespace nestad

#endif  // NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_KERNELS_CUH_
