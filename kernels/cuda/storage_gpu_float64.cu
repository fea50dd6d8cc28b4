// The storage-form kernels (kFromOutput, kQuantized) for float64 tensors (storage
// type double), every activation, format and packing width; see storage_gpu_kernels.cuh.
#include "storage_gpu_kernels.cuh"

namespace nestad {
namespace gpu {

template const char* ForwardStorageFor<double>(const ForwardArgs&, cudaStream_t);
template const char* BackwardStorageFor<double>(const BackwardArgs&, cudaStream_t);

}  // namespace gpu
}  // namespace nestad
