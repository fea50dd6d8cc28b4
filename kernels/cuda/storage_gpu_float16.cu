// The storage-form kernels (kFromOutput, kQuantized) for float16 tensors (storage
// type __half), every activation, format and packing width; see storage_gpu_kernels.cuh.
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardStorageFor<__half>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<__half>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
