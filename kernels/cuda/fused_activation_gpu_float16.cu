// The fused activation kernels for float16 tensors (storage type __half), every
// activation and derivative storage form; see fused_activation_gpu_kernels.cuh and
// storage_gpu_kernels.cuh.
#include "fused_activation_gpu_kernels.cuh"
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardFor<__half>(const ForwardArgs&, cudaStream_t);
template const char* BackwardFor<__half>(const BackwardArgs&, cudaStream_t);
template const char* ForwardStorageFor<__half>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<__half>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
