// The storage-form kernels (kFromOutput, kQuantized) for float32 tensors (storage
// type float), every activation, format and packing width; see storage_gpu_kernels.cuh.
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardStorageFor<float>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<float>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
