// The fused activation kernels for float32 tensors (storage type float), every
// activation and derivative storage form; see fused_activation_gpu_kernels.cuh and
// storage_gpu_kernels.cuh.
#include "fused_activation_gpu_kernels.cuh"
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardFor<float>(const ForwardArgs&, cudaStream_t);
template const char* BackwardFor<float>(const BackwardArgs&, cudaStream_t);
template const char* ForwardStorageFor<float>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<float>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
