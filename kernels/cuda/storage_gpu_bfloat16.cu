// The storage-form kernels (kFromOutput, kQuantized) for bfloat16 tensors (storage
// type __nv_bfloat16), every activation, format and packing width; see storage_gpu_kernels.cuh.
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardStorageFor<__nv_bfloat16>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<__nv_bfloat16>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
