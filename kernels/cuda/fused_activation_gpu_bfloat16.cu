// The fused activation kernels for bfloat16 tensors (storage type __nv_bfloat16), every
// activation and derivative storage form; see fused_activation_gpu_kernels.cuh and
// storage_gpu_kernels.cuh.
#include "fused_activation_gpu_kernels.cuh"
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardFor<__nv_bfloat16>(const ForwardArgs&, cudaStream_t);
template const char* BackwardFor<__nv_bfloat16>(const BackwardArgs&, cudaStream_t);
template const char* ForwardStorageFor<__nv_bfloat16>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<__nv_bfloat16>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
