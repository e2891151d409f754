/* device.cu — can the current CUDA device run mxmoe's kernels?  (Compiled by nvcc so that the binding files, built
 * by the host C compiler, need no CUDA headers.) */
#include <cuda_runtime.h>

#include <cstdio>

#include "mx_cuda.h"

extern "C" int mx_cuda_device_query(char *message, size_t message_bytes) {
    int count = 0, device = 0;
    cudaError_t e = cudaGetDeviceCount(&count);  // an error code, not a crash, without a driver
    if (e != cudaSuccess) {
        snprintf(message, message_bytes, "%s", cudaGetErrorString(e));
        return 0;
    }
    if (count == 0) {
        snprintf(message, message_bytes, "no CUDA device is visible");
        return 0;
    }
    cudaDeviceProp prop;
    e = cudaGetDevice(&device);
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, device);
    if (e != cudaSuccess) {
        snprintf(message, message_bytes, "%s", cudaGetErrorString(e));
        return 0;
    }
    const int ok = prop.major >= 8;
    snprintf(message, message_bytes, "%s (sm_%d%d, %d SMs, %.1f GiB)%s", prop.name, prop.major, prop.minor,
             prop.multiProcessorCount, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0),
             ok ? "" : ": mxmoe's kernels need sm_80 or newer");
    return ok;
}
