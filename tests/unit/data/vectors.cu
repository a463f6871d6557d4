// The unit tests' hand-written CUDA module (tests/unit/test_device_compile.py) and the
// input of the compile-time benchmark in docs/device.md.
//
// vector_add: one thread per element. block_sum: a block of 256 threads reduces 256 elements
// in shared memory (each element read once from global memory, log2(256) passes in shared
// memory) and writes one partial sum per block. Indices are 64-bit throughout.
extern "C" __global__ void vector_add(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ out, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

extern "C" __global__ void __launch_bounds__(256) block_sum(const float* __restrict__ x,
                                                            float* __restrict__ partial,
                                                            long long n) {
    __shared__ float tile[256];
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    tile[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) tile[threadIdx.x] += tile[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = tile[0];
}
