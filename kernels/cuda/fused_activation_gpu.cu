// Public launchers of the CUDA activation kernels (API in
// fused_activation_gpu.h) and the launch configuration they share. Compiled by
// nvcc without TensorFlow headers; the kernels themselves are instantiated per
// storage type in fused_activation_gpu_<type>.cu.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "fused_activation_gpu.h"
#include "fused_activation_gpu_kernels.cuh"

namespace nestad {
namespace gpu {
namespace {

constexpr int kMaxCachedDevices = 64;

// Streaming multiprocessors of `device`, asked once per device.
cudaError_t MultiprocessorCount(int device, int* count) {
  static std::atomic<int> cache[kMaxCachedDevices] = {};
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable && (*count = cache[device].load(std::memory_order_relaxed)) > 0) {
    return cudaSuccess;
  }
  const cudaError_t error = cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device);
  if (error == cudaSuccess && cacheable) cache[device].store(*count, std::memory_order_relaxed);
  return error;
}

// Blocks of `kernel` that fit on one SM of `device` at once (registers, shared
// memory, thread limits), asked once per kernel and device.
cudaError_t ResidentBlocksPerMultiprocessor(const void* kernel, int device, int* blocks) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find({kernel, device});
    if (it != cache.end()) {
      *blocks = it->second;
      return cudaSuccess;
    }
  }
  const cudaError_t error =
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, kThreadsPerBlock, 0);
  if (error != cudaSuccess) return error;
  if (*blocks < 1) *blocks = 1;
  std::lock_guard<std::mutex> lock(mutex);
  cache[{kernel, device}] = *blocks;
  return cudaSuccess;
}

}  // namespace

cudaError_t GridStrideBlocks(const void* kernel, int64_t work_items, unsigned* blocks) {
  int device = 0, multiprocessors = 0, blocks_per_multiprocessor = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) error = MultiprocessorCount(device, &multiprocessors);
  if (error == cudaSuccess) {
    error = ResidentBlocksPerMultiprocessor(kernel, device, &blocks_per_multiprocessor);
  }
  if (error != cudaSuccess) return error;
  const int64_t resident = static_cast<int64_t>(multiprocessors) * blocks_per_multiprocessor;
  const int64_t wanted = (work_items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  *blocks = static_cast<unsigned>(wanted < 1 ? 1 : wanted < resident ? wanted : resident);
  return cudaSuccess;
}

namespace {

// Calls launch(S{}) with the CUDA storage type of `type`.
template <typename Launch>
const char* WithStorageType(ElementType type, Launch&& launch) {
  switch (type) {
    case ElementType::kFloat16: return launch(__half{});
    case ElementType::kBFloat16: return launch(__nv_bfloat16{});
    case ElementType::kFloat32: return launch(float{});
    case ElementType::kFloat64: return launch(double{});
  }
  return "nestad gpu: unsupported element type";
}

}  // namespace

const char* LaunchFusedForward(const ForwardArgs& args, CUstream_st* stream) {
  if (args.n < 0) return "nestad gpu: negative element count";
  if (args.n == 0) return nullptr;
  // kFromOutput stores no derivative: its pointer may be null.
  if (args.x == nullptr || args.y == nullptr ||
      (args.derivative == nullptr && args.storage != DerivativeStorage::kFromOutput)) {
    return "nestad gpu: null tensor pointer";
  }
  return WithStorageType(args.type, [&](auto s) {
    return ForwardFor<decltype(s)>(args, stream);
  });
}

const char* LaunchFusedBackward(const BackwardArgs& args, CUstream_st* stream) {
  if (args.n < 0) return "nestad gpu: negative element count";
  if (args.n == 0) return nullptr;
  if (args.dy == nullptr || args.derivative == nullptr || args.dx == nullptr) {
    return "nestad gpu: null tensor pointer";
  }
  return WithStorageType(args.type, [&](auto s) {
    return BackwardFor<decltype(s)>(args, stream);
  });
}

}  // namespace gpu
}  // namespace nestad
