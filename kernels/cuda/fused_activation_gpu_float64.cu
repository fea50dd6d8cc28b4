// The fused activation kernels for float64 tensors (storage type double), every
// activation and derivative storage form; see fused_activation_gpu_kernels.cuh and
// storage_gpu_kernels.cuh.
#include "fused_activation_gpu_kernels.cuh"
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardFor<double>(const ForwardArgs&, cudaStream_t);
template const char* BackwardFor<double>(const BackwardArgs&, cudaStream_t);
template const char* ForwardStorageFor<double>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<double>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
