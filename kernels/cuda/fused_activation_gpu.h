// Host API of the CUDA activation kernels (kernels/cuda/*.cu): the fused pair
// and the storage forms of f' (kernels/storage.h).
//
// Free of TensorFlow and of the CUDA headers, so that the TF op glue (g++ with
// -DGOOGLE_CUDA=1), the kernels (nvcc) and the standalone check in
// tools/gpu_check all share it. The element math comes from the same functors
// as the CPU kernels (kernels/activations/*.h via kernels/fused_activation.h)
// and the same quantizer (kernels/storage.h).
#ifndef NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_H_
#define NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_H_

#include <cstdint>

#include "../fused_activation.h"
#include "../storage.h"

// The CUDA runtime's stream handle is `CUstream_st*` (cudaStream_t); declared
// here so that callers need no CUDA header.
struct CUstream_st;

namespace nestad {
namespace gpu {

// Element type of x, y, dy and dx (the ops' attribute T). Half types are
// stored as IEEE binary16 / bfloat16 and computed in float; float64 in double.
enum class ElementType : int { kFloat16, kBFloat16, kFloat32, kFloat64 };

// How the forward pass keeps f'(x) for the backward pass, and so which pair of
// ops the launchers implement:
//   kExact       f' in the element type, like y (FusedActivation /
//                FusedActivationGrad);
//   kFromOutput  nothing: the forward writes y only and the backward recovers f'
//                from y (ActivationForward / ActivationGradFromOutput);
//   kQuantized   packed codes of kernels/storage.h, the same bytes as the CPU
//                kernels write (FusedActivationQuantized / ActivationGradQuantized).
// kExact runs through a DerivativeCodec (fused_activation_gpu_kernels.cuh); the
// other two have their own thread code (storage_gpu_kernels.cuh).
enum class DerivativeStorage : int { kExact, kFromOutput, kQuantized };

// y = f(x) and derivative = f'(x) over n elements, one pass over memory.
struct ForwardArgs {
  Kind kind;                  // from ResolveActivation
  const float* params;        // host memory, Info(kind).num_params values
  ElementType type;
  DerivativeStorage storage;
  int64_t n;
  const void* x;              // device memory; y may equal x (in place)
  void* y;
  void* derivative;           // kExact: n elements; kFromOutput: unused (may be null);
                              // kQuantized: PackedBytes(n, quantizer->bits) bytes
  const Quantizer* quantizer = nullptr;  // kQuantized: host memory, from MakeQuantizer
};

// dx = dy * f'(x) over n elements.
struct BackwardArgs {
  ElementType type;
  DerivativeStorage storage;
  int64_t n;
  const void* dy;             // device memory; dx may equal dy (or derivative for kExact)
  const void* derivative;     // kExact: f'; kFromOutput: y = f(x); kQuantized: the codes
  void* dx;
  Kind kind = Kind::k_linear;            // kFromOutput: the activation (with
  const float* params = nullptr;         // HasDerivativeFromOutput()) and its params
  const Quantizer* quantizer = nullptr;  // kQuantized: host memory, from MakeQuantizer
};

// Enqueue the kernel on `stream` (nullptr: the legacy default stream) and
// return nullptr, or a message saying why it could not be launched. The launch
// is asynchronous: errors while the kernel runs surface at the next sync.
const char* LaunchFusedForward(const ForwardArgs& args, CUstream_st* stream);
const char* LaunchFusedBackward(const BackwardArgs& args, CUstream_st* stream);

// Bytes per element of each type (for allocation and benchmarks).
inline int ElementBytes(ElementType type) {
  return type == ElementType::kFloat64 ? 8 : type == ElementType::kFloat32 ? 4 : 2;
}

}  // namespace gpu
}  // namespace nestad

#endif  // NESTAD_KERNELS_CUDA_FUSED_ACTIVATION_GPU_H_
